"""From how many SMILES does featurizing in a worker pool beat one core? (issue 22, item 5)

    python benchmarks/featurize_pool_crossover.py [--data-dir DIR] [--sizes 250,500,...] [--repeat K]
                                                  [--jobs J] [--sample spread|head]

``fedmol.data.featurize.featurize_smiles`` runs in-process below ``_MIN_POOL_ROWS`` molecules and in
a forked pool of ``n_jobs`` workers above it. This measures where the pool starts to pay: for each
block size N (default 250, 500, 1000, 2000, 4000, 8000 rows of HIV.csv), the wall time of

* ``one_core`` -- ``featurize_smiles(rows, n_jobs=1, progress=False)`` (in-process, no pool);
* ``pool``     -- ``featurize_smiles(rows, n_jobs=J, progress=False)`` (default J=2) with the pool
                  FORCED (``_MIN_POOL_ROWS`` set to 0 for the call): fork, featurize, tear down;

on the same N rows, side by side and interleaved: for each repeat, for each N, one path then the
other, alternating which goes first, so a load spike hits both alike. A (N, path) time is the best of
``--repeat`` (default 5) runs; the medians are recorded too. torch is imported first, as in every
fedmol process: forking a process that has torch loaded costs more than forking a bare one. Both
paths are run once before timing (imports, RDKit warm-up), and their arrays are checked identical.

The rows: ``--sample spread`` (default) takes N rows evenly spaced over the whole file (HIV is not
shuffled: it ends with its largest molecules, so the first N rows are not typical); ``--sample head``
the first N. The crossover is the smallest N from which the pool is faster at EVERY larger N
measured (none if the pool loses at the largest N). ``os.getloadavg()`` and the core count are
printed and recorded before and after, and so is the pool's CPU time (parent + workers) over its wall
time, the cores it actually got: a 2-worker pool needs 2 free cores to win by much, and on Linux with
autogroup scheduling all processes of one session share one fair slice, so while another session
keeps the cores busy the pool gets about one core and cannot beat the in-process path.

Results go to ``benchmarks/results/featurize_pool_crossover.json``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401 - first, as in fedmol's processes: the fork cost depends on it

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedmol.data import featurize as F  # noqa: E402
from fedmol.jsonio import write_json  # noqa: E402
from featurize_speed import _cpu_pressure, _cpu_seconds, _default_data_dir  # noqa: E402 - this folder's script

PATHS = ("one_core", "pool")
OUT = REPO / "benchmarks" / "results" / "featurize_pool_crossover.json"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def sample(rows: list[str], n: int, how: str) -> list[str]:
    if how == "head":
        return rows[:n]
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def run_path(path: str, rows: list[str], jobs: int) -> tuple[float, float, F.Featurized]:
    """Wall and CPU seconds of one featurize_smiles call on ``rows`` by ``path``, and its result."""
    if path == "one_core":
        c0, t0 = _cpu_seconds(), time.perf_counter()
        out = F.featurize_smiles(rows, n_jobs=1, progress=False)
        return time.perf_counter() - t0, _cpu_seconds() - c0, out
    forks = []
    real_min, real_ctx = F._MIN_POOL_ROWS, F._pool_context
    F._MIN_POOL_ROWS = 0
    F._pool_context = lambda: forks.append(1) or real_ctx()
    try:
        c0, t0 = _cpu_seconds(), time.perf_counter()
        out = F.featurize_smiles(rows, n_jobs=jobs, progress=False)
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    finally:
        F._MIN_POOL_ROWS, F._pool_context = real_min, real_ctx
    assert forks, f"{len(rows)} rows did not go through the pool (a single chunk?)"
    return seconds, cpu, out


def same(a: F.Featurized, b: F.Featurized) -> bool:
    arrays = ("x", "edge_index", "edge_attr", "num_nodes", "num_edges", "valid")
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in arrays) and a.reasons == b.reasons


def crossover(sizes: list[int], secs: dict) -> int | None:
    """Smallest N from which the pool is faster at every larger N measured; None if it loses at the top."""
    found = None
    for n in reversed(sizes):
        if secs[n]["pool"] < secs[n]["one_core"]:
            found = n
        else:
            break
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=_default_data_dir(),
                    help="folder holding HIV.csv "
                         "(default: $FEDMOL_DATA_DIR, else ../shared/datasets/moleculenet from the repo)")
    ap.add_argument("--sizes", default="250,500,1000,2000,4000,8000", help="block sizes N, comma-separated")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved runs per (N, path); the best counts")
    ap.add_argument("--jobs", type=int, default=2, help="pool workers (n_jobs of the pool path)")
    ap.add_argument("--sample", choices=("spread", "head"), default="spread",
                    help="N rows evenly spaced over HIV.csv (default) or its first N")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    path = args.data_dir / "HIV.csv"
    if not path.is_file():
        print(f"error: {path} not found; pass --data-dir or set FEDMOL_DATA_DIR", file=sys.stderr)
        return 2
    with open(path, newline="", encoding="utf-8-sig") as fh:
        all_rows = [r["smiles"] for r in csv.DictReader(fh)]
    sizes = sorted(int(s) for s in args.sizes.split(","))
    blocks = {n: sample(all_rows, n, args.sample) for n in sizes}
    n_cores = os.cpu_count() or 1
    load_before, pressure_before = load(), _cpu_pressure()
    print(f"HIV: {len(all_rows)} SMILES from {path}; blocks {sizes} ({args.sample}); pool of {args.jobs} "
          f"vs 1 core; {n_cores} cores; load average {load_before}", flush=True)

    for p in PATHS:  # warm-up: lazy imports (rich), RDKit's first parses; not timed
        run_path(p, blocks[sizes[0]], args.jobs)

    identical = {}

    runs: dict[int, dict[str, list[float]]] = {n: {p: [] for p in PATHS} for n in sizes}
    cpus: dict[int, dict[str, list[float]]] = {n: {p: [] for p in PATHS} for n in sizes}
    for rep in range(args.repeat):
        for i, n in enumerate(sizes):
            order = PATHS if (rep + i) % 2 == 0 else PATHS[::-1]
            out = {}
            for p in order:
                seconds, cpu, out[p] = run_path(p, blocks[n], args.jobs)
                runs[n][p].append(seconds)
                cpus[n][p].append(cpu)
            if rep == 0:
                identical[n] = same(out["one_core"], out["pool"])
                assert identical[n], f"pool and in-process results differ at N={n}"
        print(f"  repeat {rep + 1}/{args.repeat} done, load {load()}", flush=True)

    best = {n: {p: min(runs[n][p]) for p in PATHS} for n in sizes}
    med = {n: {p: statistics.median(runs[n][p]) for p in PATHS} for n in sizes}
    load_after, pressure_after = load(), _cpu_pressure()
    rows = []
    print(f"\n{'N':>6} {'one-core s':>11} {'pool s':>8} {'ratio':>6}   (median: one-core s, pool s, ratio)"
          f"   pool CPU s / cores busy")
    for n in sizes:
        b, m = best[n], med[n]
        pool_cpu = statistics.median(cpus[n]["pool"])
        busy = statistics.median(c / w for c, w in zip(cpus[n]["pool"], runs[n]["pool"]))
        print(f"{n:>6} {b['one_core']:>11.3f} {b['pool']:>8.3f} {b['one_core'] / b['pool']:>6.2f}"
              f"   ({m['one_core']:.3f}, {m['pool']:.3f}, {m['one_core'] / m['pool']:.2f})"
              f"   {pool_cpu:.3f} / {busy:.2f}")
        rows.append(dict(n=n, one_core_s=round(b["one_core"], 4), pool_s=round(b["pool"], 4),
                         ratio=round(b["one_core"] / b["pool"], 3),
                         median_one_core_s=round(m["one_core"], 4), median_pool_s=round(m["pool"], 4),
                         median_ratio=round(m["one_core"] / m["pool"], 3),
                         us_per_mol_one_core=round(b["one_core"] / n * 1e6, 1),
                         median_cpu_s={p: round(statistics.median(cpus[n][p]), 4) for p in PATHS},
                         pool_cores_busy=round(busy, 2),
                         runs={p: [round(x, 4) for x in runs[n][p]] for p in PATHS},
                         identical=identical[n]))
    cross, cross_med = crossover(sizes, best), crossover(sizes, med)
    agree = cross == cross_med
    print(f"crossover (best of {args.repeat}): {cross}; from the medians: {cross_med}"
          f"{'' if agree else '  -- they DISAGREE: load noise, rerun'}")
    print(f"load average before {load_before}, after {load_after}; CPU pressure avg60 "
          f"{pressure_before} -> {pressure_after} %")

    report = {
        "dataset": "HIV", "sample": args.sample, "sizes": sizes, "repeat": args.repeat,
        "pool_jobs": args.jobs, "current_min_pool_rows": F._MIN_POOL_ROWS,
        "results": rows, "crossover": cross, "crossover_from_medians": cross_med, "crossovers_agree": agree,
        "note": args.note,
        "machine": {"cores": n_cores, "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": load_after,
                    "cpu_pressure_some_avg60_pct_before": pressure_before,
                    "cpu_pressure_some_avg60_pct_after": pressure_after},
        "featurizer": F.FEATURIZER_VERSION,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
