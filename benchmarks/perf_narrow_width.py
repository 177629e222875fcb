"""Narrow-width local training: a standalone sub-model vs the slice of the full model (issue 22, item 2), side by side.

A partner capped at width ``r`` trains the standalone width-``r`` model: :meth:`Algorithm.send` slices
the global model (:func:`fedmol.models.slicing.sub_state_dict`), :meth:`Algorithm.client_model` builds
the model of width ``r`` and loads the slice, the server writes the update back into the leading blocks
(:func:`~fedmol.models.slicing.aggregate_nested`). Every algorithm's partner does this at its cap
(``tests/fl/test_narrow_width.py``: the same updates as the sliced path, bit-identical on this CPU).
Timed here per local update (``--steps`` mini-batches of 32 from a fresh Adam), paths interleaved
(sliced, standalone, grads, sliced, ...) so a busy machine slows all alike; the ratios are what count:

* ``sliced``: the full-width model run with ``width=r`` (``model(batch, width=r)``), Adam over all its
  parameters, the update its width-``r`` slice -- what training at ``r`` costs without the standalone model;
* ``standalone``: slice, build at ``r``, load, train, the update its state -- what partners run;
* ``grads``: the option left to algorithms that draw a narrower width per step below the cap (FjORD's
  ordered dropout, FedGen with ``ordered_dropout``): the cap's model keeps its one Adam over all its
  parameters (equal results need it: coordinates a wider step moved keep moving on their Adam moments),
  and each step's forward and backward run on a standalone width-``r`` copy whose gradients and BN
  statistics are written back into the leading blocks.

Backbones: GIN 64 x 3 on BBBP's graphs (the standard suite) and the fingerprint MLP 300 x 2 (8192 bits,
the federation suites' trunk) on BBBP's fingerprints; widths 1/2, 1/4, 1/8, 1/16; dropout 0.5, norm "bn".
``os.getloadavg()`` is printed and recorded with every row.

    python benchmarks/perf_narrow_width.py [--dataset bbbp] [--steps 40] [--repeats 5] [--threads 1]

Writes ``benchmarks/results/perf_narrow_width.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from fedmol.data.dataset import load_dataset
from fedmol.data.fingerprints import attach_fingerprints
from fedmol.jsonio import write_json
from fedmol.models import build, masked_loss, slicing
from fedmol.training import make_loader, seed_everything, train_epoch

OUT = Path(__file__).resolve().parent / "results" / "perf_narrow_width.json"
PATHS = ("sliced", "standalone", "grads")
WIDTHS = (0.5, 0.25, 0.125, 0.0625)
BACKBONES = {
    "gin 64 x 3": dict(name="gin", hidden=64, layers=3),
    "mlp 300 x 2": dict(name="mlp", hidden=300, layers=2),
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def sliced(full, r: float, loader, steps: int) -> int:
    """Train the full model at width ``r``; its width-``r`` slice is the update."""
    opt = torch.optim.Adam(full.parameters(), lr=1e-3)
    n = train_epoch(full, loader, opt, width=r, max_steps=steps)["samples"]
    slicing.sub_state_dict(full, r)
    return n


def standalone(full, r: float, loader, steps: int) -> int:
    """Slice, build at ``r``, train; its state is the update (``Algorithm.client_model``, ``local_train``)."""
    model = build(**{**full.config, "width": r})
    model.load_state_dict(slicing.sub_state_dict(full, r))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = train_epoch(model, loader, opt, max_steps=steps)["samples"]
    model.state_dict()
    return n


def grads(full, r: float, loader, steps: int) -> int:
    """The cap's model (here the full one) and its Adam; each step's forward/backward on a standalone copy."""
    opt = torch.optim.Adam(full.parameters(), lr=1e-3)
    with torch.random.fork_rng():  # its initialization draws would shift the dropout stream
        model = build(**{**full.config, "width": r}).train()
    params, spec, n = dict(full.named_parameters()), slicing.slice_spec(full), 0
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        model.load_state_dict(slicing.sub_state_dict(full, r))
        model.zero_grad(set_to_none=True)
        masked_loss(model(batch), batch.y, model.task_type).backward()
        for k, p in model.named_parameters():  # the gradient of the slice, zero elsewhere (as the sliced path's)
            params[k].grad = torch.zeros_like(params[k])
            spec.get(k, slicing.SliceRule()).narrow(params[k].grad, r).copy_(p.grad)
        slicing.load_sub_state_dict(full, dict(model.named_buffers()), r, strict=False)  # BN statistics
        opt.step()
        n += batch.num_graphs
    return n


RUN = {"sliced": sliced, "standalone": standalone, "grads": grads}


def one_width(global_model, ds, r: float, steps: int, repeats: int) -> dict:
    """Seconds per local update of every path at width ``r`` (medians of ``repeats``, interleaved)."""
    secs = {p: [] for p in PATHS}
    graphs = 0
    for rep in range(repeats + 1):  # the first round is a warm-up
        for path in PATHS:
            full = build(**global_model.config)
            full.load_state_dict(global_model.state_dict())
            loader = make_loader(ds, 32, shuffle=True, seed=rep)
            seed_everything(rep)
            t0 = time.perf_counter()
            graphs = RUN[path](full, r, loader, steps)
            if rep:
                secs[path].append(time.perf_counter() - t0)
    med = {p: statistics.median(secs[p]) for p in PATHS}
    return dict(width=r, graphs=graphs, seconds=med, graphs_per_s={p: graphs / med[p] for p in PATHS},
                ratio_standalone=med["sliced"] / med["standalone"], ratio_grads=med["sliced"] / med["grads"],
                load=load(), runs={p: [round(x, 4) for x in secs[p]] for p in PATHS})


def report(label: str, row: dict) -> None:
    g = row["graphs_per_s"]
    print(f"{label:<12} width {row['width']:<7g} graphs/s sliced {g['sliced']:8.1f}  standalone {g['standalone']:8.1f}"
          f"  grads {g['grads']:8.1f}   standalone/sliced {row['ratio_standalone']:.2f}x"
          f"  grads/sliced {row['ratio_grads']:.2f}x  load {row['load']}", flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="bbbp")
    ap.add_argument("--steps", type=int, default=40, help="mini-batches (of 32) per local update")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every measurement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="")
    return ap.parse_args()


def inputs(dataset: str) -> dict:
    """Each backbone's input: the graphs (GIN), the graphs with their fingerprints attached (MLP)."""
    return {"gin 64 x 3": load_dataset(dataset, progress=False),
            "mlp 300 x 2": attach_fingerprints(load_dataset(dataset, progress=False))}


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    print(f"load at start {load()} on {os.cpu_count()} cores, torch threads {a.threads}")
    data, rows = inputs(a.dataset), {}
    for label, cfg in BACKBONES.items():
        ds = data[label]
        torch.manual_seed(0)
        model = build(num_tasks=ds.num_tasks, task_type=ds.task_type, dropout=0.5, **cfg)
        rows[label] = [one_width(model, ds, r, a.steps, a.repeats) for r in WIDTHS]
        for row in rows[label]:
            report(label, row)
    write_json(OUT, dict(dataset=a.dataset, molecules=len(data["gin 64 x 3"]), batch_size=32, steps=a.steps,
                         repeats=a.repeats, threads=a.threads, cores=os.cpu_count(), torch=torch.__version__,
                         note=a.note, load_at_end=load(), results=rows))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
