"""Does federation pay a partner? The targets of the federation suite, checked on its committed results.

Reads ``benchmarks/results/federation/results_per_seed.csv`` and ``partner_gains.csv`` (made by
``fedmol bench federation``) and writes ``targets.md`` and ``targets.json`` beside them. Per dataset x
alpha x devices:

* the **best federated method**, chosen on the validation score of the partners' models
  (``valid@partner``, mean over seeds) -- never on the test set -- among the methods that serve every
  partner a model it can run;
* its share of partners (over partners x seeds) whose test score beats their best local model, the
  share of the local-to-centralized gap it closes (same family, mean over seeds), and a paired test of
  its per-partner gains over the best local (Wilcoxon signed-rank over partner x seed pairs; a partner
  without a model counts as a loss of 0 in the share, and is left out of the test);
* the simplest federation beside it: the best one-shot ensemble (chosen on validation as well) and a
  paired t-test over seeds of the best federated method against it (``fedmol.stats``);
* the issue's targets (issue 17): at alpha 1 and 100, >= 90% of partners beat their best local and
  >= 70% of the gap is closed; at alpha 0.1, >= 75% of partners gain.

    python benchmarks/federation_targets.py [--results benchmarks/results/federation]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from fedmol.jsonio import write_json
from fedmol.stats import SIGNIFICANCE, paired_pvalue

SHARE_TARGET = {0.1: 0.75, 1.0: 0.90, 100.0: 0.90}
GAP_TARGET = {1.0: 0.70, 100.0: 0.70}


def _best(rows: pd.DataFrame, kind: str, prefix: str = "", names: list[str] | None = None) -> str | None:
    """The method of ``kind`` (and name prefix; or among ``names``) with the best mean validation score
    of the partners' models, among the methods that serve every partner a model (if any does: a method
    that leaves partners without a model, e.g. FedAvg on tiered devices, is scored on the few it serves)."""
    r = rows[(rows["kind"] == kind) & rows["method"].astype(str).str.startswith(prefix)]
    if names is not None:
        r = r[r["method"].isin(names)]
    if r.empty:
        return None
    served = r.groupby("method", sort=False)["served"].mean()
    everyone = served[served >= 1.0].index
    r = r[r["method"].isin(everyone)] if len(everyone) else r
    v = r.groupby("method", sort=False)["valid@partner"].mean()
    return str(v.idxmax() if _higher_is_better(r["metric"].iloc[0]) else v.idxmin())


def _higher_is_better(metric: str) -> bool:
    return metric in ("rocauc", "prauc")


def _share_beating_best_local(gains: pd.DataFrame) -> tuple[float, int]:
    """Share of partner x seed pairs whose test score beats their best local (a pair without a model
    -- an unserved partner -- counts as not beating it), and the number of pairs."""
    g = gains["gain_test_vs_best_local"].to_numpy(dtype=float)
    return (float(np.mean(np.nan_to_num(g, nan=-1.0) > 0)) if len(g) else math.nan), len(g)


def setting_row(per_seed: pd.DataFrame, gains: pd.DataFrame) -> dict:
    """The target check of one dataset x alpha x devices."""
    first = per_seed.iloc[0]
    alpha = float(first["alpha"])
    best = _best(per_seed, "federated")
    row = dict(dataset=first["dataset"], alpha=alpha, devices=first["devices"], metric=first["metric"],
               seeds=int(per_seed["seed"].nunique()), best_federated=best)
    if best is None:
        return row
    mine = per_seed[per_seed["method"] == best].set_index("seed")
    bl = per_seed[per_seed["method"] == "best local"].set_index("seed")
    g = gains[gains["method"] == best]
    share, pairs = _share_beating_best_local(g)
    d = g["gain_test_vs_best_local"].dropna().to_numpy(dtype=float)
    row.update(test=float(mine["test@partner"].mean()), best_local=float(bl["test@partner"].mean()),
               gain_vs_best_local=float(np.mean(d)) if len(d) else math.nan,
               beat_best_local=share, pairs=pairs, wilcoxon_p=float(wilcoxon(d).pvalue) if len(d) >= 6 and
               np.any(d != 0) else math.nan, gap_closed=float(mine["gap_closed"].mean()),
               mb=float(mine["mb"].mean()), seconds=float(mine["seconds"].mean()))
    ens = _best(per_seed, "reference", "ensemble")
    if ens is not None:
        e = per_seed[per_seed["method"] == ens].set_index("seed")
        seeds = sorted(set(e.index) & set(mine.index))
        sign = 1.0 if _higher_is_better(first["metric"]) else -1.0
        diff = mine.loc[seeds, "test@partner"] - e.loc[seeds, "test@partner"]
        row.update(best_ensemble=ens, ensemble_test=float(e["test@partner"].mean()),
                   fed_gain_vs_ensemble=float(sign * diff.mean()),
                   vs_ensemble_p=paired_pvalue(list(mine.loc[seeds, "test@partner"]),
                                               list(e.loc[seeds, "test@partner"])) if len(seeds) >= 2 else math.nan,
                   ensemble_mb=float(e["mb"].mean()))
    share_target, gap_target = SHARE_TARGET.get(alpha), GAP_TARGET.get(alpha)
    row["share_target"], row["gap_target"] = share_target, gap_target
    row["share_met"] = None if share_target is None else bool(share >= share_target)
    row["gap_met"] = None if gap_target is None else bool(row["gap_closed"] >= gap_target)
    return row


def _tables(results: Path, also: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(results_per_seed, partner_gains)`` of a suite's committed results, with the rows of another
    suite's on the same grid (``also``) for the methods the first one did not run, in the settings
    (dataset x alpha x devices) the first one ran."""
    per_seed, gains = (pd.read_csv(results / n) for n in ("results_per_seed.csv", "partner_gains.csv"))
    if also is not None:
        more, more_gains = (pd.read_csv(also / n) for n in ("results_per_seed.csv", "partner_gains.csv"))
        key = ["dataset", "alpha", "devices"]
        ran, mine = pd.MultiIndex.from_frame(per_seed[key].drop_duplicates()), set(per_seed["method"])

        def new(t: pd.DataFrame) -> pd.Series:
            """Rows of a method the first suite did not run, in a setting it ran."""
            return ~t["method"].isin(mine) & pd.MultiIndex.from_frame(t[key]).isin(ran)

        per_seed = pd.concat([per_seed, more[new(more)]], ignore_index=True)
        gains = pd.concat([gains, more_gains[new(more_gains)]], ignore_index=True)
    return per_seed, gains


def by_setting(results: Path, row, also: Path | None = None) -> list[dict]:
    """``row(per_seed, gains)`` of every dataset x alpha x devices of a suite's committed results (and
    ``also``'s, :func:`_tables`)."""
    per_seed, gains = _tables(results, also)
    rows = []
    for (ds, alpha, dev), g in per_seed.groupby(["dataset", "alpha", "devices"], sort=False):
        part = gains[(gains["dataset"] == ds) & (gains["alpha"] == alpha) & (gains["devices"] == dev)]
        rows.append(row(g, part))
    return rows


def check(results: Path) -> list[dict]:
    return by_setting(results, setting_row)


def _f(v, fmt: str = ".3f") -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _met(v) -> str:
    return "" if v is None else ("yes" if v else "**no**")


def markdown(rows: list[dict]) -> str:
    head = ("| dataset | alpha | devices | best federated (on validation) | test@partner | best local | vs best local | "
            "beat best local | target | met | Wilcoxon p | gap closed | target | met | best ensemble | "
            "ensemble | fed vs ensemble | p (seeds) | MB fed / ensemble |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append("| " + " | ".join([
            str(r["dataset"]), f"{r['alpha']:g}", str(r["devices"]), str(r.get("best_federated")), _f(r.get("test")),
            _f(r.get("best_local")), _f(r.get("gain_vs_best_local"), "+.3f"),
            _f(r.get("beat_best_local"), ".0%") + f" of {r.get('pairs', 0)}", _f(r.get("share_target"), ".0%"),
            _met(r.get("share_met")), _f(r.get("wilcoxon_p"), ".2g"), _f(r.get("gap_closed"), ".0%"),
            _f(r.get("gap_target"), ".0%"), _met(r.get("gap_met")), str(r.get("best_ensemble", "")),
            _f(r.get("ensemble_test")), _f(r.get("fed_gain_vs_ensemble"), "+.3f"), _f(r.get("vs_ensemble_p"), ".2g"),
            f"{_f(r.get('mb'), '.3g')} / {_f(r.get('ensemble_mb'), '.3g')}"]) + " |")
    notes = [
        "# Federation suite: the targets of issue 17",
        "",
        "Made by `python benchmarks/federation_targets.py` from `results_per_seed.csv` and `partner_gains.csv`.",
        "Best federated / best ensemble: the method with the best mean validation score of the partners' models "
        "(never test), among those that serve every partner a model.",
        "beat best local: share of partner x seed pairs whose test score beats the partner's best local model "
        "(a partner the method serves no model counts as not beating it); Wilcoxon p: signed-rank test of the "
        "per-partner gains over the best local (served pairs); vs best local, fed vs ensemble: positive = the federated "
        "model is better (for RMSE: lower); gap closed: (fed - local) / (central - local), same "
        f"family, mean over seeds; p (seeds): paired t-test over seeds (tie when >= {SIGNIFICANCE}).",
        "",
    ]
    return "\n".join(notes + lines) + "\n"


def publish(results: Path, stem: str, text: str, payload: dict) -> None:
    """``<stem>.md`` (``text``, also printed) and ``<stem>.json`` (``payload``) in ``results``."""
    (results / f"{stem}.md").write_text(text)
    write_json(results / f"{stem}.json", payload)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/federation"))
    args = ap.parse_args()
    rows = check(args.results)
    publish(args.results, "targets", markdown(rows), dict(benchmark="federation_targets", share_target=SHARE_TARGET,
                                                          gap_target=GAP_TARGET, settings=rows))


if __name__ == "__main__":
    main()
