"""Does the federated-vs-local comparison change when runs train to convergence instead of a fixed budget?

On the quick suite's settings (B3DB, K = 4 scaffold partners, alpha 0.1 and 100, tiered devices, GIN
64 x 3, at most 20 local steps of batch 32 per round, seed 0), each algorithm and the local-only GNN
reference run twice: with the quick suite's fixed budget (5 rounds) and to convergence (``patience``
rounds without a better pooled validation score, ``rounds`` as the cap; the local-only GNN stops by the
same rule in rounds of its own validation score). Printed and written to
``benchmarks/results/converged_budget.json``: per setting and budget, each method's test ROC-AUC per
partner, its gain over the partners' local-only GNN trained under the same budget rule, the rounds it
ran and the local steps and molecules its partners trained on.

    python benchmarks/converged_budget.py [--algorithms fedavg,fjord] [--cap 100] [--patience 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "converged_budget.json"


def main(argv: list[str] | None = None) -> int:
    from fedmol.fl.bench import load_suite
    from fedmol.config import RunConfig
    from fedmol.fl.harness import build_federation, run_federated
    from fedmol.fl.references import federated_gain, local_only
    from fedmol.jsonio import write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithms", default="fedavg,fjord,fedrescue,heterofl")
    ap.add_argument("--cap", type=int, default=100)
    ap.add_argument("--patience", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    suite = load_suite("quick")
    budgets = {"fixed": dict(rounds=int(suite.run["rounds"]), patience=None),
               "converged": dict(rounds=args.cap, patience=args.patience)}
    results = []
    for alpha in suite.alphas:
        base = dict(dataset=suite.datasets[0], alpha=alpha, devices=suite.devices[0], seed=0,
                    **{k: v for k, v in suite.run.items() if k not in ("rounds",)})
        fed = build_federation(RunConfig(**base, hparams=dict(suite.hparams)), progress=False)
        for name, budget in budgets.items():
            cfg = RunConfig(**base, **budget, hparams=dict(suite.hparams))
            t = time.perf_counter()
            local = local_only(cfg, "gnn", fed=fed, progress=False)
            results.append(dict(alpha=alpha, budget=name, method="local-only (gnn)",
                                test_partner=local["test"]["mean"], seconds=round(time.perf_counter() - t, 1)))
            for algo in args.algorithms.split(","):
                hp = {**suite.hparams, **next((a.hparams for a in suite.algorithms if a.label == algo), {})}
                t = time.perf_counter()
                s = run_federated(RunConfig(**{**base, **budget, "algorithm": algo, "hparams": hp}), None,
                                  progress=False)
                served = [p["test"] for p in s["per_partner"] if p.get("served", True)]
                results.append(dict(alpha=alpha, budget=name, method=algo,
                                    test_partner=sum(served) / len(served),
                                    gain_vs_local=federated_gain(s, local)["gain_test"], rounds_run=s["rounds_run"],
                                    selected_round=s["selected_round"], local_steps=s["local_steps"],
                                    molecules_seen=s["molecules_seen"], seconds=round(time.perf_counter() - t, 1)))
                r = results[-1]
                print(f"alpha {alpha:g} {name:9s} {algo:10s} test@partner {r['test_partner']:.3f} gain "
                      f"{r['gain_vs_local']:+.3f} rounds {r['rounds_run']} steps {r['local_steps']} "
                      f"({r['seconds']} s)", flush=True)
    write_json(OUT, dict(settings=dict(suite="quick", cap=args.cap, patience=args.patience), results=results))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
