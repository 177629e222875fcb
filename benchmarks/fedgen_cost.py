"""FedGen's server-side cost (issue: KD algorithms), measured side by side in one run.

Per round, the harness records the partners' own compute (``client_seconds``, summed over
partners) and the server's work (``server_seconds``: aggregation plus FedGen's generator training,
50 Adam steps by default). This prints both and their ratio for FedGen, with FedAvg's aggregation
as the baseline, on the same split and model.

    python benchmarks/fedgen_cost.py [--dataset bace] [--partners 4] [--rounds 3] [--hidden 300]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from fedmol.config import RunConfig

from fedmol.fl.harness import run_federated
from fedmol.jsonio import write_json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="bace")
    ap.add_argument("--partners", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=300)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="local mini-batch steps per partner and round")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    print(f"{'algorithm':>10} {'clients s/round':>16} {'server s/round':>15} {'server/clients':>15}")
    for algo in ("fedavg", "fedgen"):
        cfg = RunConfig(algorithm=algo, dataset=a.dataset, partners=a.partners, rounds=a.rounds, hidden=a.hidden,
                        layers=a.layers, devices="tiered", hparams={"max_local_steps": a.steps})
        rows = run_federated(cfg, None, progress=False)["history"][1:]  # round 0: FedGen has no generator input yet
        c = statistics.mean(r["client_seconds"] for r in rows)
        sv = statistics.mean(r["server_seconds"] for r in rows)
        out[algo] = dict(client_seconds=c, server_seconds=sv, ratio=sv / c)
        print(f"{algo:>10} {c:>16.3f} {sv:>15.3f} {sv / c:>14.1%}")
    path = Path(__file__).resolve().parent / "results" / "fedgen_cost.json"
    write_json(path, dict(settings=vars(a), results=out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
