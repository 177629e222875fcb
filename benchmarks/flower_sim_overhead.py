"""Flower simulation engine (``fedmol run --backend flower-sim``) vs the in-process harness, side by side.

The same run (same arguments, same seed) on both backends: wall time in total, the one-off start
(Ray + the virtual SuperNodes: the time to the first round's end minus that round's in-process
time), the per-round time, and whether the metrics agree (they must, within 1e-4). On a machine with
few cores the simulation engine can only add overhead (Ray actors, message serialization, the
coordinator's polling); its point is parallel partners on many cores or a Ray cluster, so the
ratio to watch is the steady per-round time, not the start.

    python benchmarks/flower_sim_overhead.py [--dataset bbbp] [--partners 4] [--rounds 5] [--hidden 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedmol.config import RunConfig

from fedmol.fl.harness import run_federated
from fedmol.jsonio import write_json
from fedmol.pilot.simulation import run_flower_sim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="bbbp")
    ap.add_argument("--algorithm", default="fedavg")
    ap.add_argument("--partners", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="local mini-batch steps per partner and round")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig(algorithm=a.algorithm, dataset=a.dataset, partners=a.partners, alpha=1.0, rounds=a.rounds,
                    hidden=a.hidden, layers=3, devices="homogeneous", hparams={"max_local_steps": a.steps})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        inproc = run_federated(cfg, Path(tmp) / "inprocess", progress=False)
        t_in = time.perf_counter() - t0
        t0 = time.perf_counter()
        sim = run_flower_sim(cfg, Path(tmp) / "sim", log=lambda m: None)
        t_sim = time.perf_counter() - t0
    rin = [r["seconds"] for r in inproc["history"]]
    rsim = [r["seconds"] for r in sim["history"]]
    steady_in = statistics.mean(rin[1:] or rin)
    steady_sim = statistics.mean(rsim[1:] or rsim)
    diff = max(abs(inproc["test"][w] - sim["test"][w]) for w in inproc["test"])
    rec = dict(dataset=a.dataset, algorithm=a.algorithm, partners=a.partners, rounds=a.rounds, hidden=a.hidden,
               cpus=os.cpu_count(), total_seconds_inprocess=round(t_in, 2), total_seconds_flower_sim=round(t_sim, 2),
               total_ratio=round(t_sim / t_in, 2), round_seconds_inprocess=round(steady_in, 3),
               round_seconds_flower_sim=round(steady_sim, 3), round_ratio=round(steady_sim / steady_in, 2),
               start_seconds_flower_sim=round(t_sim - sum(rsim), 2), start_seconds_inprocess=round(t_in - sum(rin), 2),
               max_test_difference=diff)
    print(f"{a.algorithm} on {a.dataset}, K={a.partners}, {a.rounds} rounds, GIN {a.hidden}x3, "
          f"{os.cpu_count()} CPUs")
    print(f"{'backend':<12} {'total s':>8} {'start s':>8} {'round s':>8}")
    print(f"{'inprocess':<12} {t_in:>8.1f} {rec['start_seconds_inprocess']:>8.1f} {steady_in:>8.2f}")
    print(f"{'flower-sim':<12} {t_sim:>8.1f} {rec['start_seconds_flower_sim']:>8.1f} {steady_sim:>8.2f}")
    print(f"flower-sim / inprocess: total {rec['total_ratio']:.2f}x, per round {rec['round_ratio']:.2f}x; "
          f"max test-metric difference {diff:.2e} (must be <= 1e-4)")
    out = Path(__file__).resolve().parent / "results" / "flower_sim_overhead.json"
    write_json(out, rec)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
