"""Does a partner gain on its own assays from other partners' different assays? The task suite, read.

Reads the committed results of ``fedmol bench federation_tasks`` (``results_per_seed.csv``,
``partner_gains.csv``, ``task_gains.csv``; every partner holds its own tasks, heads private) and writes
``targets.md`` and ``targets.json`` beside them. Per dataset and federated method:

* **vs local (same family)**: the share of partner x seed pairs whose model (federated trunk + its own
  head) beats, on the partner's own tasks of the global test scaffolds, its single-partner baseline of the
  same family (the local-only MLP or GIN, trained and selected the same way), the mean gain and a Wilcoxon
  signed-rank test over those pairs; the share per seed (a finding holds when every seed agrees);
* **vs best local**: the same against the partner's best local model (MLP, ECFP4 forest or ECFP4 LightGBM,
  chosen on its own validation molecules);
* the same for the **centralized model** of that family (every partner's labels pooled, scored per partner
  on its own tasks):
  what the partners' labels can give together, with no federation in the way;
* **the head phase**: an algorithm run with FedRep's head phase (label ``<algorithm>_refit``) against itself
  without it, paired per partner x seed; **other variants** (``<method>_<variant>``) against their method;
* **per task**: the share of (partner, task) pairs -- in a disjoint task split, of tasks -- whose
  federated score beats the best local model's (``task_gains.csv``); on MoleculeACE, the share of
  targets that gain.

The method answering "with which algorithm" is chosen on validation (``valid@partner``), never test. The
issue-18 target: on Tox21, task-disjoint, alpha 1, at least 80% of partners gain on their own tasks against
their single-partner baseline of the same family.

    python benchmarks/task_targets.py [--results benchmarks/results/federation_tasks]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from federation_targets import _best, _f, publish

SHARE_TARGET = {"tox21": 0.80}
#: the label suffix of an algorithm run with FedRep's head phase (``head_steps``, docs/private_heads.md)
REFIT = "_refit"


def _shares(gains: pd.DataFrame, column: str) -> dict:
    """Share of pairs with a positive ``column`` (a pair without a score counts as no gain), its mean,
    the Wilcoxon p over the scored pairs and the share per seed (a suite with one local family has no
    best-local column: every number NaN)."""
    if column not in gains:
        return dict(share=math.nan, pairs=0, mean=math.nan, p=math.nan, per_seed={})
    g = gains[column].to_numpy(dtype=float)
    d = g[np.isfinite(g)]
    per_seed = {int(s): float(np.mean(np.nan_to_num(x[column].to_numpy(dtype=float), nan=-1.0) > 0))
                for s, x in gains.groupby("seed")}
    return dict(share=float(np.mean(np.nan_to_num(g, nan=-1.0) > 0)) if len(g) else math.nan, pairs=len(g),
                mean=float(np.mean(d)) if len(d) else math.nan,
                p=float(wilcoxon(d).pvalue) if len(d) >= 6 and np.any(d != 0) else math.nan, per_seed=per_seed)


def _task_share(tasks: pd.DataFrame) -> dict:
    """Share of served (partner, task, seed) triples whose federated score beats the best local's."""
    t = tasks[tasks["served"].astype(bool)]
    d = t["abs"].to_numpy(dtype=float)
    d = d[np.isfinite(d)]
    return dict(task_share=float(np.mean(d > 0)) if len(d) else math.nan, task_pairs=len(d),
                task_mean=float(np.mean(d)) if len(d) else math.nan)


def family(per_seed: pd.DataFrame) -> str:
    """The neural family of a task suite's backbone: ``mlp`` (the fingerprint MLP) or ``gnn`` (GIN)."""
    return "mlp" if (per_seed["method"] == "local-only (mlp)").any() else "gnn"


def method_rows(per_seed: pd.DataFrame, gains: pd.DataFrame, tasks: pd.DataFrame) -> list[dict]:
    """One row per federated method of one dataset, then the centralized model's (the same labels pooled:
    what the partners' labels could give together)."""
    rows = []
    shown = (per_seed["kind"] == "federated") | (per_seed["method"] == f"centralized ({family(per_seed)})")
    for method, m in per_seed[shown].groupby("method", sort=False):
        g = gains[gains["method"] == method]
        local, best = _shares(g, "gain_test"), _shares(g, "gain_test_vs_best_local")
        rows.append(dict(method=method, seeds=int(m["seed"].nunique()), test=float(m["test@partner"].mean()),
                         valid=float(m["valid@partner"].mean()),
                         **{f"{k}_vs_local": v for k, v in local.items()},
                         **{f"{k}_vs_best_local": v for k, v in best.items()},
                         **_task_share(tasks[tasks["method"] == method]) if len(tasks) else {}))
    return rows


def paired_rows(gains: pd.DataFrame) -> list[dict]:
    """Each variant against the method it varies, paired per partner x seed: the mean difference of the
    test gains (positive: the variant is better), the share of pairs it improves and the Wilcoxon p. A
    variant's label is its method's plus ``_<something>`` (the longest such method present):
    ``fedavg_refit`` (FedRep's head phase) against ``fedavg``, ``fedavg_refit_fedavgm`` against
    ``fedavg_refit``."""
    methods, rows = [str(m) for m in gains["method"].unique()], []
    pick = lambda m: gains[gains["method"] == m].set_index(["seed", "partner"])["gain_test"]  # noqa: E731
    for method in methods:
        base = max((b for b in methods if method.startswith(b + "_")), key=len, default=None)
        if base is None:
            continue
        d = (pick(method) - pick(base)).dropna().to_numpy(dtype=float)
        rows.append(dict(method=method, without=base, pairs=len(d), diff=float(np.mean(d)) if len(d) else math.nan,
                         share_better=float(np.mean(d > 0)) if len(d) else math.nan,
                         p=float(wilcoxon(d).pvalue) if len(d) >= 6 and np.any(d != 0) else math.nan))
    return rows


def dataset_row(name: str, per_seed: pd.DataFrame, gains: pd.DataFrame, tasks: pd.DataFrame) -> dict:
    """Every method's row, the method chosen on validation, the references' scores and the target."""
    ref = lambda label: float(per_seed.loc[per_seed["method"] == label, "test@partner"].mean())  # noqa: E731
    row = dict(dataset=name, metric=str(per_seed["metric"].iloc[0]), methods=method_rows(per_seed, gains, tasks),
               best_federated=_best(per_seed, "federated"), family=family(per_seed),
               local=ref(f"local-only ({family(per_seed)})"), best_local=ref("best local"),
               centralized=ref(f"centralized ({family(per_seed)})"))
    target = SHARE_TARGET.get(name)
    chosen = next((m for m in row["methods"] if m["method"] == row["best_federated"]), None)
    pairs = paired_rows(gains)
    row["head_phase"] = [p for p in pairs if p["method"] == p["without"] + REFIT]
    row["variants"] = [p for p in pairs if p["method"] != p["without"] + REFIT]
    row["share_target"] = target
    row["target_met"] = None if target is None or chosen is None else bool(chosen["share_vs_local"] >= target)
    return row


def check(results: Path) -> list[dict]:
    per_seed, gains = (pd.read_csv(results / n) for n in ("results_per_seed.csv", "partner_gains.csv"))
    path = results / "task_gains.csv"
    tasks = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    return [dataset_row(str(ds), g, gains[gains["dataset"] == ds],
                        tasks[tasks["dataset"] == ds] if len(tasks) else tasks)
            for ds, g in per_seed.groupby("dataset", sort=False)]


def _seeds(per_seed: dict) -> str:
    return " / ".join(_f(v, ".0%") for _, v in sorted(per_seed.items()))


def _paired_table(rows: list[dict], key: str, intro: str, head: str) -> list[str]:
    """The markdown lines of every dataset's ``key`` pairs (:func:`paired_rows`), or none."""
    pairs = [(r["dataset"], h) for r in rows for h in r.get(key, [])]
    if not pairs:
        return []
    return ["", intro, "", head + " paired difference | better in | Wilcoxon p |", "|---|---|---|---:|---:|---:|"] + [
        f"| {ds} | {h['method']} | {h['without']} | {_f(h['diff'], '+.3f')} | "
        f"{_f(h['share_better'], '.0%')} of {h['pairs']} | {_f(h['p'], '.2g')} |" for ds, h in pairs]


def markdown(rows: list[dict]) -> str:
    head = ("| dataset | method | test@partner | vs local (same family) | beat local | per seed | Wilcoxon p | "
            "vs best local | beat best local | Wilcoxon p | tasks beating best local |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        for m in r["methods"]:
            chosen = " (chosen)" if m["method"] == r["best_federated"] else ""
            lines.append("| " + " | ".join([
                r["dataset"], m["method"] + chosen, _f(m["test"]), _f(m["mean_vs_local"], "+.3f"),
                _f(m["share_vs_local"], ".0%") + f" of {m['pairs_vs_local']}", _seeds(m["per_seed_vs_local"]),
                _f(m["p_vs_local"], ".2g"), _f(m["mean_vs_best_local"], "+.3f"),
                _f(m["share_vs_best_local"], ".0%") + f" of {m['pairs_vs_best_local']}",
                _f(m["p_vs_best_local"], ".2g"),
                _f(m.get("task_share"), ".0%") + f" of {m.get('task_pairs', 0)}"]) + " |")
    refs = ["", "| dataset | metric | family | local-only | best local | centralized | chosen on validation | "
            "target (share beating local, chosen method) | met |", "|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        refs.append(f"| {r['dataset']} | {r['metric']} | {r['family']} | {_f(r['local'])} | {_f(r['best_local'])} | "
                    f"{_f(r['centralized'])} | {r['best_federated']} | {_f(r['share_target'], '.0%')} | "
                    f"{'' if r['target_met'] is None else ('yes' if r['target_met'] else '**no**')} |")
    refs += _paired_table(rows, "head_phase", "FedRep's head phase (`<algorithm>_refit`, `head_steps`) against the "
                          "same algorithm without it, paired per partner x seed: mean difference of the test gains "
                          "(positive: the head phase is better), share of pairs it improves, Wilcoxon p.",
                          "| dataset | with head phase | without |")
    refs += _paired_table(rows, "variants", "Other variants (`<method>_<variant>`: the same method with one setting "
                          "changed, e.g. `_fedavgm`: FedAvgM's server momentum, `_rep`: FedRep's representation phase, "
                          "head frozen in the update) against the method they vary, paired the same way.",
                          "| dataset | variant | method |")
    notes = [
        "# Task suite: the targets of issue 18",
        "",
        "Made by `python benchmarks/task_targets.py` from `results_per_seed.csv`, `partner_gains.csv` and "
        "`task_gains.csv`. Every score is a partner's own model (federated trunk + its private head) on its own "
        "tasks of the global test scaffolds; gains are positive when the federated model is better (for RMSE: "
        "lower). beat local / beat best local: share of partner x seed pairs; per seed: that share for each seed; "
        "Wilcoxon p: signed-rank test of the paired gains; tasks beating best local: share of (partner, task, seed) "
        "triples (disjoint split: each task has one holder). A method is chosen on the partners' validation "
        "scores, never test.",
        "",
    ]
    return "\n".join(notes + lines + refs) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/federation_tasks"))
    args = ap.parse_args()
    rows = check(args.results)
    publish(args.results, "targets", markdown(rows), dict(benchmark="task_targets", share_target=SHARE_TARGET,
                                                          datasets=rows))


if __name__ == "__main__":
    main()
