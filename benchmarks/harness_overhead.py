"""Harness overhead and scaling (issue: harness), measured side by side in one run.

For FedAvg on HIV with K partners (K = 10, 50, 100) and a fixed number of partners per round, each
round's wall time is split into the clients' own compute, the algorithm's server work
(aggregation), evaluation, and the rest: the harness's overhead (sampling, messages, byte
counting, failure checks, bookkeeping). Targets: overhead under 5% of the round time (excluding
evaluation), round time growing with the partners that participate, not with all partners; peak
RSS under 3 GB with 100 partners.

    python benchmarks/harness_overhead.py [--dataset hiv] [--partners 10,50,100] [--per-round 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
from pathlib import Path

import torch

from fedmol.config import RunConfig

from fedmol.fl.harness import run_federated
from fedmol.jsonio import write_json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="hiv")
    ap.add_argument("--partners", default="10,50,100")
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="local mini-batch steps per client")
    a = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    print(f"{'K':>4} {'round s':>8} {'clients s':>9} {'server s':>8} {'overhead s':>10} {'overhead %':>10} {'RSS MB':>7}")
    for k in [int(x) for x in a.partners.split(",")]:
        cfg = RunConfig(algorithm="fedavg", dataset=a.dataset, partners=k, alpha=1.0, rounds=a.rounds, hidden=64,
                        layers=3, clients_per_round=a.per_round, hparams={"max_local_steps": a.steps})
        s = run_federated(cfg, None, progress=False)
        rows = s["history"][1:] or s["history"]  # round 0 warms caches
        train = [r["seconds"] - r["eval_seconds"] for r in rows]
        client = [r["client_seconds"] for r in rows]
        server = [r["server_seconds"] for r in rows]
        over = [t - c - sv for t, c, sv in zip(train, client, server)]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rec = dict(partners=k, round_seconds=statistics.mean(train), client_seconds=statistics.mean(client),
                   server_seconds=statistics.mean(server), overhead_seconds=statistics.mean(over),
                   overhead_pct=100 * statistics.mean(over) / statistics.mean(train), peak_rss_mb=rss)
        results.append(rec)
        print(f"{k:>4} {rec['round_seconds']:>8.3f} {rec['client_seconds']:>9.3f} {rec['server_seconds']:>8.3f} "
              f"{rec['overhead_seconds']:>10.4f} {rec['overhead_pct']:>9.2f}% {rss:>7.0f}")
    first, last = results[0], results[-1]
    print(f"round time ratio K={last['partners']} vs K={first['partners']} at {a.per_round} partners/round: "
          f"{last['round_seconds'] / first['round_seconds']:.2f}x (partners ratio {last['partners'] / first['partners']:.0f}x)")
    out = Path(__file__).resolve().parent / "results" / "harness_overhead.json"
    write_json(out, dict(dataset=a.dataset, per_round=a.per_round, results=results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
