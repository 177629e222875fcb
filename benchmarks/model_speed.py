"""Training speed of the width-sliceable GNNs at every width (CPU, 2 threads by default).

Measures training graphs/s (forward + masked BCE + backward + Adam step, batch 32, train mode)
of the *standalone* width-r model a HeteroFL client trains (``build(..., width=r)``), for GIN at
hidden 300 / 5 layers at every width of ``WIDTHS`` and the other backbones at widths 1 and 1/4.
Also times GIN run as a slice of the full model (``model(batch, width=r)``, Adam on all
parameters: FjORD-style local training) and, for reference, with DataLoader collation included.

Timing: a fixed cycle of ``--batches`` pre-collated batches; all configurations are run in
``--passes`` interleaved passes and every step is timed; the reported graphs/s uses each batch's
fastest step ("best", robust to other processes sharing the CPU), the median is reported too.
As a reference that a busy, shared CPU distorts least, GIN is also timed with one thread in
process CPU time per step.

Data: the first ~1000 SMILES of BBBP featurized with ``ogb.utils.smiles2graph`` when
``$FEDMOL_DATA_DIR/BBBP.csv`` or ``/work/shared/datasets/moleculenet/BBBP.csv`` is readable,
otherwise synthetic molecules (~25 atoms / ~27 bonds, valid OGB feature ranges).

Usage: ``python benchmarks/model_speed.py [--passes 4] [--threads 2] [--quick]``; writes
``benchmarks/results/model_speed.json`` and prints params / bytes / MACs per width.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmol.jsonio import write_json  # noqa: E402
from fedmol.models import WIDTHS, build, count, masked_loss  # noqa: E402

try:
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader
except ImportError as e:  # pragma: no cover
    raise SystemExit(f"torch_geometric is required: {e}")

BATCH = 32
RESULTS = ROOT / "benchmarks" / "results"


def bbbp_path() -> Path | None:
    for d in (os.environ.get("FEDMOL_DATA_DIR"), "/work/shared/datasets/moleculenet"):
        if d and (Path(d) / "BBBP.csv").is_file():
            return Path(d) / "BBBP.csv"
    return None


def real_graphs(path: Path, limit: int = 1000) -> list[Data]:
    from ogb.utils import smiles2graph
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    graphs: list[Data] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if len(graphs) >= limit:
                break
            try:
                g = smiles2graph(row["smiles"])
            except Exception:  # invalid SMILES
                continue
            if g["num_nodes"] == 0:
                continue
            graphs.append(
                Data(
                    x=torch.from_numpy(g["node_feat"]).long(),
                    edge_index=torch.from_numpy(g["edge_index"]).long(),
                    edge_attr=torch.from_numpy(g["edge_feat"]).long(),
                    y=torch.tensor([[float(row["p_np"])]]),
                )
            )
    return graphs


def synthetic_graphs(n: int = 1000, seed: int = 0) -> list[Data]:
    """Random molecule-like graphs: a random tree plus ~3 ring closures, ~25 atoms."""
    from fedmol.models.encoders import feature_dims

    atom_dims, bond_dims = feature_dims()
    rng = random.Random(seed)
    graphs = []
    for _ in range(n):
        na = max(2, int(rng.gauss(25, 6)))
        bonds = {(rng.randrange(i), i) for i in range(1, na)}
        while len(bonds) < na - 1 + 3:
            a, b = sorted(rng.sample(range(na), 2))
            bonds.add((a, b))
        src = [a for a, b in bonds] + [b for a, b in bonds]
        dst = [b for a, b in bonds] + [a for a, b in bonds]
        x = torch.stack([torch.randint(0, min(v, 8), (na,)) for v in atom_dims], 1)
        ea = torch.stack([torch.randint(0, v, (len(bonds),)) for v in bond_dims], 1)
        graphs.append(
            Data(x=x, edge_index=torch.tensor([src, dst]), edge_attr=torch.cat([ea, ea]),
                 y=torch.tensor([[float(rng.random() < 0.7)]]))
        )
    return graphs


class Timed:
    """One configuration under test: a model, its Adam optimizer and per-batch step times."""

    def __init__(self, name: str, width: float, mode: str, model, n_batches: int) -> None:
        self.name, self.width, self.mode, self.model = name, width, mode, model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.times: list[list[float]] = [[] for _ in range(n_batches)]

    def step(self, b) -> None:
        """One training step: forward at the width, masked BCE, backward, Adam."""
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        fwd_width = self.width if self.mode == "slice_of_full" else None
        loss = masked_loss(self.model(b, width=fwd_width), b.y, "classification")
        loss.backward()
        self.opt.step()

    def cycle(self, batches, loader=None) -> None:
        """Time one pass over the fixed batches (with ``loader``: collate them freshly too)."""
        it = iter(loader) if loader is not None else None
        for i, b in enumerate(batches):
            t = time.perf_counter()
            self.step(next(it) if it is not None else b)
            self.times[i].append(time.perf_counter() - t)

    def throughput(self, graphs: int) -> dict:
        """``best``: graphs / sum of each batch's fastest step (robust to other processes on the
        CPU; the number compared across widths); ``median``: the same with median step times."""
        best = graphs / sum(min(ts) for ts in self.times)
        median = graphs / sum(sorted(ts)[len(ts) // 2] for ts in self.times)
        return {"best": best, "median": median, "steps": sum(len(ts) for ts in self.times)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=300)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batches", type=int, default=10, help="batches in the timed cycle")
    ap.add_argument("--passes", type=int, default=4, help="interleaved passes over all configs")
    ap.add_argument("--quick", action="store_true", help="1 pass (noisy)")
    ap.add_argument("--gin-only", action="store_true", help="only GIN standalone at every width")
    ap.add_argument("--synthetic", action="store_true", help="ignore BBBP even if present")
    ap.add_argument("--out", type=Path, default=RESULTS / "model_speed.json")
    args = ap.parse_args(argv)
    passes = 1 if args.quick else args.passes
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    path = None if args.synthetic else bbbp_path()
    graphs, source = [], "synthetic"
    if path is not None:
        try:
            graphs, source = real_graphs(path), f"BBBP ({path}), first valid SMILES"
        except Exception as e:  # noqa: BLE001 - fall back to synthetic data
            print(f"could not featurize BBBP ({e}); using synthetic molecules")
            graphs = []
    if not graphs:
        graphs = synthetic_graphs()
    avg_nodes = sum(g.num_nodes for g in graphs) / len(graphs)
    avg_bonds = sum(g.edge_index.shape[1] for g in graphs) / 2 / len(graphs)
    loader = DataLoader(graphs, batch_size=BATCH, shuffle=True, drop_last=True)
    batches = list(loader)[: args.batches]
    n_graphs = sum(b.num_graphs for b in batches)
    print(
        f"data: {source}: {len(graphs)} graphs, {avg_nodes:.1f} atoms / {avg_bonds:.1f} bonds "
        f"avg; batch {BATCH}, hidden {args.hidden}, layers {args.layers}, "
        f"threads {args.threads}, load avg {load_before[0]:.1f}"
    )

    def make(name, r, mode):
        width = 1.0 if mode == "slice_of_full" else r
        m = build(name, 1, hidden=args.hidden, layers=args.layers, width=width)
        return Timed(name, r, mode, m, len(batches))

    plan = [make("gin", r, "standalone") for r in WIDTHS]
    if not args.gin_only:
        plan += [make("gin", r, "slice_of_full") for r in (1.0, 0.25, 0.0625)]
        plan += [make("gin", r, "with_collation") for r in (1.0, 0.25)]
        plan += [make(n, r, "standalone") for n in ("gine", "gcn", "sage", "gat") for r in (1.0, 0.25)]
    for cfg in plan:  # warm-up
        for b in batches[:3]:
            cfg.step(b)
    for p in range(passes):  # interleaved, so bursts of foreign load hit every config alike
        print(f"pass {p + 1}/{passes}", flush=True)
        for cfg in plan:
            cfg.cycle(batches, loader if cfg.mode == "with_collation" else None)

    # Contention-robust reference: process CPU time per step with ONE thread (no thread sync to
    # be delayed by other processes; only cache sharing leaks through).
    torch.set_num_threads(1)
    cpu_rows = []
    for cfg in plan:
        if cfg.mode != "standalone" or cfg.name != "gin":
            continue
        t = time.process_time()
        for b in batches:
            cfg.step(b)
        ms_step = (time.process_time() - t) / len(batches) * 1e3
        cpu_rows.append(dict(model=cfg.name, width=cfg.width, cpu_ms_per_step=round(ms_step, 2),
                             graphs_per_cpu_s=round(BATCH / ms_step * 1e3, 1)))
    torch.set_num_threads(args.threads)

    rows: list[dict] = []
    titles = {
        "standalone": "standalone width-r model (what a client trains)",
        "slice_of_full": "slice of the full model: model(batch, width=r), Adam on all parameters",
        "with_collation": "standalone, DataLoader collation included",
    }
    last = None
    for cfg in plan:
        if (cfg.name == "gin") != (last and last[0] == "gin") or cfg.mode != (last and last[1]):
            print(f"{cfg.name.upper() if cfg.name == 'gin' else 'other backbones'}, "
                  f"{titles[cfg.mode]}:")
        last = (cfg.name, cfg.mode)
        t = cfg.throughput(n_graphs)
        c = count(cfg.model, cfg.width, avg_nodes=avg_nodes, avg_edges=avg_bonds)
        rows.append(dict(model=cfg.name, width=cfg.width, mode=cfg.mode,
                         graphs_per_s=round(t["best"], 1),
                         graphs_per_s_median=round(t["median"], 1), timed_steps=t["steps"], **c))
        print(f"  {cfg.name:5s} width {cfg.width:<7g} {t['best']:8.1f} graphs/s (median "
              f"{t['median']:7.1f})  params {c['params']:>9,d}  bytes {c['bytes']:>10,d}"
              f"  MACs/graph {c['macs']:>12,.0f}")

    def gps(name, r, mode):
        return next(
            x["graphs_per_s"] for x in rows if (x["model"], x["width"], x["mode"]) == (name, r, mode)
        )

    pairs = [("gin", "standalone")]
    if not args.gin_only:
        pairs += [("gin", "slice_of_full"), ("gin", "with_collation")]
        pairs += [(n, "standalone") for n in ("gine", "gcn", "sage", "gat")]
    ratios = {f"{n}_{m}": round(gps(n, 0.25, m) / gps(n, 1.0, m), 2) for n, m in pairs}
    print("speed ratio width 1/4 vs width 1 (best):", ratios)
    print("GIN, 1 thread, process CPU time per training step (robust to a busy CPU):")
    for x in cpu_rows:
        print(f"  gin   width {x['width']:<7g} {x['cpu_ms_per_step']:8.2f} ms/step "
              f"= {x['graphs_per_cpu_s']:8.1f} graphs per CPU-second")
    cpu = {x["width"]: x["cpu_ms_per_step"] for x in cpu_rows}
    ratios["gin_1thread_cpu_time"] = round(cpu[1.0] / cpu[0.25], 2)
    print(f"  ratio width 1/4 vs 1 (1 thread, CPU time): {ratios['gin_1thread_cpu_time']}")
    result = dict(
        data=source, num_graphs=len(graphs), avg_nodes=round(avg_nodes, 2),
        avg_bonds=round(avg_bonds, 2), batch_size=BATCH, hidden=args.hidden,
        layers=args.layers, torch_threads=args.threads, passes=passes,
        timed_batches=len(batches), torch=torch.__version__,
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        cpu_count=os.cpu_count(), load_avg_before=round(load_before[0], 2),
        load_avg_after=round(os.getloadavg()[0], 2), ratio_quarter_vs_full=ratios, results=rows,
        gin_one_thread_cpu_time=cpu_rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
