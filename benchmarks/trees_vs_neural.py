"""Do the neural federated methods beat the simplest federations of fingerprint trees? (issue 23, item 5)

Reads a suite's committed ``results_per_seed.csv`` and ``partner_gains.csv`` (``fedmol bench``) and writes
``trees_vs_neural.md`` and ``trees_vs_neural.json`` beside them. Per dataset x alpha x devices:

* the **best neural federated method** (every federated row but the federated boosted trees ``gbt-*``),
  chosen on the mean validation score of the partners' models (never test) among the methods that serve
  every partner a model; the **best tree federation** (``gbt-bagging`` / ``gbt-cyclic``) and the **best
  one-shot ensemble** (``ensemble (...)``), chosen the same way;
* their test score of the model each partner ends up with (mean over partners and seeds), the difference
  neural minus tree federation per seed (positive = neural better; for RMSE: lower), and a Wilcoxon
  signed-rank test over the partner x seed pairs (partners served by both);
* the verdict: ``neural`` / ``trees`` when p < 0.05 and every seed's mean difference has that sign, else
  ``tie``; the same against the best one-shot ensemble;
* what each costs: MB sent (down + up) and seconds of run time, means over seeds.

    python benchmarks/trees_vs_neural.py [--results benchmarks/results/federation_moleculenet]
    python benchmarks/trees_vs_neural.py --results benchmarks/results/federation_trees --neural benchmarks/results/federation

``--neural``: the neural rows and the ensembles come from another suite's results on the same grid (same
splits, partners and seeds), for methods the ``--results`` suite did not run.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from federation_targets import _best, _f, _higher_is_better, by_setting, publish  # this folder's script

ALPHA = 0.05


def paired(gains: pd.DataFrame, a: str, b: str, sign: float) -> dict:
    """``a`` against ``b`` partner by partner: per-seed mean difference, Wilcoxon p over the pairs, verdict."""
    key = ["seed", "partner"]
    x = gains[gains["method"] == a].set_index(key)["fed_test"]
    y = gains[gains["method"] == b].set_index(key)["fed_test"]
    d = (sign * (x - y)).dropna()
    by_seed = {int(s): float(v) for s, v in d.groupby(level="seed").mean().items()}
    p = float(wilcoxon(d.to_numpy()).pvalue) if len(d) >= 6 and np.any(d.to_numpy() != 0) else math.nan
    signs = {np.sign(v) for v in by_seed.values()}
    verdict = "tie"
    if math.isfinite(p) and p < ALPHA and len(signs) == 1:
        verdict = "first" if signs == {1.0} else "second"
    return dict(diff=float(d.mean()) if len(d) else math.nan, by_seed=by_seed, pairs=int(len(d)), p=p,
                verdict=verdict)


def setting(per_seed: pd.DataFrame, gains: pd.DataFrame) -> dict:
    first = per_seed.iloc[0]
    methods = list(dict.fromkeys(per_seed["method"]))
    fed = [m for m in methods if (per_seed[per_seed["method"] == m]["kind"] == "federated").all()]
    trees = [m for m in fed if m.startswith("gbt-")]
    sign = 1.0 if _higher_is_better(first["metric"]) else -1.0
    picks = dict(neural=_best(per_seed, "federated", names=[m for m in fed if m not in trees]),
                 trees=_best(per_seed, "federated", names=trees), ensemble=_best(per_seed, "reference", "ensemble ("))
    row = dict(dataset=first["dataset"], alpha=float(first["alpha"]), devices=first["devices"],
               metric=first["metric"], seeds=int(per_seed["seed"].nunique()), **picks)
    for role, m in picks.items():
        mine = per_seed[per_seed["method"] == m]
        row[role + "_stats"] = dict(test=float(mine["test@partner"].mean()), mb=float(mine["mb"].mean()),
                                    seconds=float(mine["seconds"].mean())) if m else None
    for m in trees:
        row.setdefault("tree_tests", {})[m] = float(per_seed[per_seed["method"] == m]["test@partner"].mean())
    if picks["neural"] and picks["trees"]:
        row["neural_vs_trees"] = paired(gains, picks["neural"], picks["trees"], sign)
    if picks["neural"] and picks["ensemble"]:
        row["neural_vs_ensemble"] = paired(gains, picks["neural"], picks["ensemble"], sign)
    if picks["trees"] and picks["ensemble"]:
        row["trees_vs_ensemble"] = paired(gains, picks["trees"], picks["ensemble"], sign)
    return row


def _cmp(c: dict | None, first: str, second: str) -> str:
    if not c:
        return ""
    seeds = ", ".join(_f(v, "+.3f") for _, v in sorted(c["by_seed"].items()))
    who = {"first": f"**{first}**", "second": f"**{second}**", "tie": "tie"}[c["verdict"]]
    return f"{_f(c['diff'], '+.3f')} ({seeds}; p {_f(c['p'], '.2g')}, {c['pairs']} pairs): {who}"


def markdown(rows: list[dict], neural: Path | None = None) -> str:
    head = ("| dataset | alpha | best neural (valid) | test | best tree federation | test | neural vs trees | "
            "best ensemble | test | neural vs ensemble | trees vs ensemble | MB neural / trees / ensemble | "
            "s neural / trees |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        st = {k: r.get(k + "_stats") or {} for k in ("neural", "trees", "ensemble")}
        lines.append("| " + " | ".join([
            str(r["dataset"]), f"{r['alpha']:g}", str(r["neural"]), _f(st["neural"].get("test")), str(r["trees"]),
            _f(st["trees"].get("test")), _cmp(r.get("neural_vs_trees"), "neural", "trees"), str(r["ensemble"]),
            _f(st["ensemble"].get("test")), _cmp(r.get("neural_vs_ensemble"), "neural", "ensemble"),
            _cmp(r.get("trees_vs_ensemble"), "trees", "ensemble"),
            " / ".join(_f(st[k].get("mb"), ".3g") for k in ("neural", "trees", "ensemble")),
            " / ".join(_f(st[k].get("seconds"), ".0f") for k in ("neural", "trees"))]) + " |")
    notes = [
        "# Neural federations against the simplest federations of fingerprint trees",
        "",
        "Made by `python benchmarks/trees_vs_neural.py` from `results_per_seed.csv` and `partner_gains.csv`"
        + (f" (the neural rows and ensembles: those of `{neural.as_posix()}`)." if neural else "."),
        "Each 'best' is chosen on the mean validation score of the partners' models (never test), among methods "
        "serving every partner. test: mean over partners and seeds of the model each partner ends up with. "
        "A comparison reads: mean difference (first minus second, positive = first better; for RMSE: lower), "
        "per-seed means in brackets, Wilcoxon signed-rank p over the partner x seed pairs; the winner is named "
        f"only when p < {ALPHA} and every seed agrees, else tie. MB: sent down + up; s: run time (means over seeds).",
        "",
    ]
    return "\n".join(notes + lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/federation_moleculenet"))
    ap.add_argument("--neural", type=Path, default=None, help="another suite's results on the same grid holding the "
                    "neural rows and ensembles (federation_trees: benchmarks/results/federation)")
    args = ap.parse_args()
    rows = by_setting(args.results, setting, args.neural)
    publish(args.results, "trees_vs_neural", markdown(rows, args.neural),
            dict(benchmark="trees_vs_neural", alpha=ALPHA, settings=rows))


if __name__ == "__main__":
    main()
