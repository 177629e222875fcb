"""Presenting a benchmark: the results table (pandas, CSV, Markdown, rich) and the plots (PNG).

Input: the finished runs of a suite as *entries* (dicts with ``kind`` "federated" | "reference",
``dataset``, ``alpha``, ``devices``, ``seed``, ``method``, ``reference``, ``model``, ``path``: the
run folder holding ``summary.json`` and, for federated runs, ``metrics.csv``); see
:func:`fedmol.fl.bench.run_suite`.

Tables (one row per dataset x alpha x devices x method; methods: the references first, then the
algorithms in suite order):

* ``test@<w>`` -- federated: the global model served at width ``w`` on the global test set;
  ``local-only (gnn)``: the mean over the partners whose device cap is ``w`` of their own
  model's test metric; ``centralized``: width 1 (the forest is keyed 1.0 too).
* ``test@partner`` -- the mean over partners of the test metric of the model each partner ends
  up with (federated: the global model at its served width; local-only: its own; centralized:
  the pooled one).
* ``gain_test`` / ``gain_valid`` / ``share_gain_test`` -- :func:`fedmol.fl.references.federated_gain`
  against the local-only reference of the same model family of the same split (GNN for
  federated runs): mean over partners of ``metric - local metric`` on the global test set and on
  each partner's own validation set, signed so that **positive = better than training alone**
  also for RMSE; the share of partners with a positive test gain. ``gain_test_vs_rf``: the test
  gain of a GNN row against each partner's local ECFP4 random forest.
* ``gain_test_vs_best_local`` -- per partner, the test gain over that partner's **best local**
  model (:func:`fedmol.fl.references.best_local`: among the local-only families of the split, the
  one with the best score on the partner's own validation molecules), mean over the partners that
  have a model (the ``served`` rule); on every row but ``best local`` itself. The ``best local``
  row (when >= 2 local-only families ran): per partner the chosen family's scores; which family
  each partner chose is in ``partner_gains.csv`` (``best_local_family``, with every family's
  validation score ``valid_<family>``).
* ``ensemble (<family>)`` rows: the one-shot ensembles of the partners' local models
  (:func:`fedmol.fl.references.ensemble_scores`), scored like a federated run (``test@<w>``: the
  ensemble a device of cap ``w`` runs; ``served``; ``mb``: every model sent once).
* ``mb`` -- megabytes (1e6 bytes) communicated, down + up, over the whole run.

Each measure is the mean and the sample standard deviation (ddof=1) over seeds; with one seed
the standard deviation is empty (NaN in the CSV, blank in Markdown).

Files: ``results.csv`` (``<measure>_mean``, ``<measure>_std``, ``n_seeds``), ``results.md``,
``results_per_seed.csv``, ``partner_gains.csv``, and per dataset x devices x alpha, under
``plots/``: ``rounds_*.png`` (test metric vs round; a star marks the mean reported round and
score), ``mb_*.png`` (test metric vs cumulative MB communicated), ``widths_*.png`` (reported test
metric per served width, narrow -> wide), ``cdf_*.png``. A method has one colour and marker in every
plot and on the leaderboard (:func:`fedmol.plotstyle.method_color`); legends sit right of the axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmol.errors import FedmolError
from fedmol.evaluate import HIGHER_IS_BETTER
from fedmol.fl.references import TREE_MODELS, best_local, federated_gain

#: the reference families, in the order of the table rows
REFERENCE_FAMILIES = ("gnn", "mlp", "rf-ecfp4", "gbt-ecfp4")
from fedmol.fl.scorecard import gap_closed, partner_scorecard, task_scorecard
from fedmol.stats import SIGNIFICANCE, paired_pvalue, tie_labels
from fedmol.jsonio import read_summary
from fedmol.plotstyle import (is_reference, legend_outside, method_color, method_marker, reference_linestyle,
                              round_axis, width_axis)

KEYS = ["dataset", "metric", "alpha", "devices", "kind", "method"]
GAIN_MEASURES = ["gain_test", "gain_valid", "rel_gain_test", "rel_gain_valid", "share_gain_test",
                 "share_gain_valid", "gain_test_vs_rf", "gain_test_vs_best_local"]
#: MELLODDY's scorecard (fedmol.fl.scorecard): improve-to-perfect vs the same family's local-only model and
#: vs the best local, the share of partners improved over their best local, the local-to-centralized gap closed
SCORECARD_MEASURES = ["itp_test", "itp_vs_best_local", "improved_vs_best_local", "improved_tasks_vs_best_local",
                      "gap_closed"]
OTHER_MEASURES = ["test@partner", "valid@partner", "prauc@partner", "prauc_vs_best_local", *GAIN_MEASURES, *SCORECARD_MEASURES, "served", "mb", "seconds", "selected_round",
                  "test_last@1.0"]

#: reference rows first, in this order (the best local row right after the local-only ones)
BEST_LOCAL = "best local"
REF_ORDER = [*(("local-only", m) for m in REFERENCE_FAMILIES), (BEST_LOCAL, None),
             *((r, m) for r in ("centralized", "ensemble") for m in REFERENCE_FAMILIES)]
NOTES = [
    "Values: mean ± sample standard deviation over seeds (ddof=1); with one seed only the mean is shown.",
    "test@w: federated = global model served at width w on the global test set (held-out scaffolds), of the "
    "round the run reports (run setting select: by default the evaluated round with the best pooled validation "
    "score, as the GNN references keep their best validation epoch); "
    "local-only (gnn) = mean over the partners whose device cap is w of their own model; centralized = width 1.",
    "test@partner: mean over partners of the model each partner ends up with (its served width / its own model "
    "/ the pooled model).",
    "gain (MELLODDY-style): per partner, metric minus that partner's local-only metric (same model family; GNN "
    "for federated runs), on the global test set and on the partner's own validation set, signed so that "
    "positive = better than training alone (also for RMSE); mean over partners. gaining: share of partners "
    "with a positive test gain. gain vs local RF: the test gain over each partner's local ECFP4 random forest.",
    "best local: per partner, the local-only model (any family run: GNN, ECFP4 forest, ECFP4 LightGBM, ...) with "
    "the best score on that partner's own validation molecules (never the test set); its row shows the chosen "
    "models' scores, partner_gains.csv which family each partner chose. vs best local: per partner, test metric "
    "minus that partner's best local test metric (positive = better), mean over the partners with a model.",
    "ensemble (family): the partners' local-only models (the same models as local-only) averaged once, weighted "
    "by training-set size (trees: probabilities; GNN: logits, FedDF's AVGLOGITS teacher); a partner is scored on "
    "the members its device can run (GNN: width <= its cap); MB: every model uploaded once and the members each "
    "partner runs downloaded once.",
    "served: share of partners whose device can run a width the federated model is served at. A partner that "
    "cannot (e.g. a narrow device under FedAvg, which trains full width only) gets no federated model: it is "
    "left out of test@partner, the gains and gaining (never credited with a model it cannot run).",
    "rank (with >= 2 seeds): best = the federated method with the best mean test@partner of its setting; tie = "
    f"not different from the best by a paired t-test over seeds (two-sided p >= {SIGNIFICANCE}); worse = "
    "significantly below the best. With one seed no difference is tested.",
    "Scorecard (MELLODDY, fedmol.fl.scorecard): gap closed = (test@partner - local-only) / (centralized - "
    "local-only) of the same family, on the means over the partners with a model (100%: as good as pooling the "
    "data); beat best local = share of partners whose test score beats their best local model (a partner "
    "without a model counts as not improved). results.csv also holds gain valid, gain vs local RF and "
    "improve-to-perfect ((fed - base) / (perfect - base)) against the same family (itp_test) and the best local "
    "(itp_vs_best_local); plots/cdf_*.png: the per-partner gains over the best local, one curve per method.",
    "PR-AUC (classification, beside ROC-AUC as MELLODDY reports both): PR-AUC@partner = mean over partners of "
    "the test PR-AUC (average precision) of the model each partner ends up with; PR-AUC vs best local = per "
    "partner, minus that of its best local model (chosen on validation ROC-AUC), mean over partners.",
    "Several backbones: a federated row is named <algorithm> (<family>) and measured against the local-only "
    "and centralized models of its own family (mlp: the fingerprint MLP; gnn: the graph network); the best "
    "local chooses among every family.",
    "Several tasks (MELLODDY scores per task): tasks beat best local = share of the partner x task pairs whose "
    "test score beats the partner's best local model on that task (the family chosen per partner on its "
    "validation molecules); task_gains.csv: every pair's delta (abs, rel, itp).",
    "MB: megabytes (1e6 bytes) sent down + up over the whole run.",
]


def family(entry: dict) -> str:
    """The model family of an entry's row (``gnn`` | ``mlp`` | a tree family): what its gains are
    measured against (that family's local-only model) and what a reference row is named by."""
    return entry.get("family") or (entry["model"] if entry["kind"] == "reference" else "gnn")


def method_name(entry: dict) -> str:
    if entry["kind"] == "reference":
        return f"{entry['reference']} ({family(entry)})"
    return entry["method"]


def _order(entry: dict, algo_order: dict[str, int]) -> int:
    if entry["kind"] == "reference":
        key = (entry["reference"], family(entry))
        return REF_ORDER.index(key) if key in REF_ORDER else len(REF_ORDER) - 1  # a family not listed: last reference
    return len(REF_ORDER) + algo_order[entry["method"]]


def _nanmean(values) -> float:
    a = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def load(entries: list[dict]) -> list[dict]:
    """Entries with their ``summary`` read from ``<path>/summary.json``."""
    out = []
    for e in entries:
        e = dict(e)
        e["summary"] = read_summary(Path(e["path"]) / "summary.json")  # undefined (null) metrics as NaN
        out.append(e)
    return out


# -------------------------------------------------------------------------------------------- tables
def _group(e: dict) -> tuple:
    return (e["dataset"], e["alpha"], e["devices"], e["seed"])


def _baselines(entries: list[dict]) -> tuple[dict, dict, dict]:
    """``(locals, centrals, bests)``: the local-only and centralized summaries by (split, family) and
    the best local of every split with >= 2 local-only families."""
    locals_ = {(*_group(e), family(e)): e["summary"]
               for e in entries if e["kind"] == "reference" and e["reference"] == "local-only"}
    centrals = {(*_group(e), family(e)): e["summary"]
                for e in entries if e["kind"] == "reference" and e["reference"] == "centralized"}
    families: dict[tuple, dict[str, dict]] = {}
    for (*group, model), s in locals_.items():
        families.setdefault(tuple(group), {})[model] = s
    return locals_, centrals, {g: best_local(fams) for g, fams in families.items() if len(fams) >= 2}


def task_gains(entries: list[dict], tasks: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """MELLODDY's per-task scorecard of a multi-task dataset: one row per run x partner x task with
    the test score of the model the partner ends up with, of its best local model (the family chosen
    on its own validation molecules) and :func:`fedmol.fl.scorecard.task_scorecard`'s deltas;
    ``tasks``: task names per dataset (else task indices)."""
    _, _, bests = _baselines(entries)
    rows = []
    for e in entries:
        best = bests.get(_group(e))
        if best is None or (e["kind"] == "reference" and e["reference"] == "local-only"):
            continue
        card = task_scorecard(e["summary"].get("per_partner", []), best["per_partner"], e["summary"]["metric"])
        names = (tasks or {}).get(e["dataset"])
        rows += [dict(dataset=e["dataset"], alpha=e["alpha"], devices=e["devices"], method=method_name(e),
                      seed=e["seed"], **{**r, "task": names[r["task"]] if names else r["task"]})
                 for r in card["per_task"]]
    return pd.DataFrame(rows)


def seed_tables(entries: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per_seed, partner_gains)``: one row per finished run, one per run x partner with a gain."""
    algo_order: dict[str, int] = {}
    for e in entries:
        if e["kind"] == "federated":
            algo_order.setdefault(e["method"], len(algo_order))
    locals_, centrals, bests = _baselines(entries)
    rows, partner_rows = [], []
    for e in entries:
        row = _score_row(e, algo_order)
        partner_rows += _add_gains(row, e, locals_, centrals, bests)
        rows.append(row)
    for group, best in bests.items():
        rows.append(_best_local_row(group, best, locals_.get((*group, "rf-ecfp4"))))
        partner_rows += [dict(zip(("dataset", "alpha", "devices"), group[:3]), method=BEST_LOCAL, seed=group[3],
                              partner=p["partner"], width=p["width"], best_local_family=p["family"],
                              best_local_test=p["test"], best_local_valid=p["valid"], selected_by=p["selected_by"],
                              **{f"valid_{f}": v for f, v in p["valid_by_family"].items()})
                         for p in best["per_partner"]]
    per_seed = pd.DataFrame(rows)
    if not per_seed.empty:
        for c in OTHER_MEASURES:
            if c not in per_seed:
                per_seed[c] = np.nan
        per_seed = per_seed[_ordered_columns(per_seed.columns)]
    return per_seed, pd.DataFrame(partner_rows)


def _score_row(e: dict, algo_order: dict[str, int]) -> dict[str, Any]:
    """A run's own scores: per width, per partner (mean), what it sent, which round it reports."""
    s = e["summary"]
    row: dict[str, Any] = dict(dataset=e["dataset"], metric=s["metric"], alpha=e["alpha"], devices=e["devices"],
                               kind=e["kind"], method=method_name(e), seed=e["seed"], order=_order(e, algo_order))
    row.update({f"test@{k}": v for k, v in s.get("test", {}).items() if k != "mean"})
    pp = s.get("per_partner", [])
    row["test@partner"] = _nanmean(p.get("test") for p in pp)
    row["valid@partner"] = _nanmean(p.get("valid") for p in pp)
    if any("test_prauc" in p for p in pp):
        row["prauc@partner"] = _nanmean(p.get("test_prauc") for p in pp)
    if e["kind"] == "federated" or e.get("reference") == "ensemble":  # rows that communicate
        row["served"] = _nanmean([0.0 if p.get("served") is False else 1.0 for p in pp])
        row["mb"] = (s.get("bytes_up", 0) + s.get("bytes_down", 0)) / 1e6
    if e["kind"] == "federated":
        # which round the run reports, and what the last round's model scored (how much selection mattered)
        row["selected_round"] = s.get("selected_round")
        row["test_last@1.0"] = s.get("test_last", {}).get("1.0")
    row["seconds"] = s.get("seconds")
    return row


def _add_gains(row: dict, e: dict, locals_: dict, centrals: dict, bests: dict) -> list[dict]:
    """Add a run's gains (vs its family's local-only model, the best local, the local forest) and
    scorecard to ``row``; returns its partner_gains rows."""
    s, fam, group = e["summary"], family(e), _group(e)
    is_local = e["kind"] == "reference" and e["reference"] == "local-only"
    local, best = locals_.get((*group, fam)), bests.get(group)
    head = dict(dataset=e["dataset"], alpha=e["alpha"], devices=e["devices"], method=row["method"], seed=e["seed"])
    vs_best, partner_rows = {}, []  # vs_best: partner -> its gain over its best local model
    if best is not None:
        gb = federated_gain(s, best)
        row["gain_test_vs_best_local"] = gb["gain_test"]
        if "gain_test_prauc" in gb:
            row["prauc_vs_best_local"] = gb["gain_test_prauc"]
        chosen = {p["partner"]: p["family"] for p in best["per_partner"]}
        vs_best = {p["partner"]: dict(best_local_family=chosen[p["partner"]], best_local_test=p["local_test"],
                                      gain_test_vs_best_local=p["gain_test"]) for p in gb["per_partner"]}
    if local is not None and not is_local:
        g = federated_gain(s, local)
        row.update(gain_test=g["gain_test"], gain_valid=g["gain_valid"], rel_gain_test=g["rel_gain_test"],
                   rel_gain_valid=g["rel_gain_valid"], share_gain_test=g["share_test"],
                   share_gain_valid=g["share_valid"])
        partner_rows += [dict(**head, **p, **vs_best.pop(p["partner"], {})) for p in g["per_partner"]]
    if not is_local:  # a row without a same-family local-only reference still gets its gains vs best local
        partner_rows += [dict(**head, partner=pid, **v) for pid, v in vs_best.items()]
        row.update(scorecard_measures(s, local, best, centrals.get((*group, fam))))
    rf = locals_.get((*group, "rf-ecfp4"))
    if fam not in TREE_MODELS and rf is not None:
        row["gain_test_vs_rf"] = federated_gain(s, rf)["gain_test"]
    return partner_rows


def scorecard_measures(summary: dict, local: dict | None, best: dict | None, central: dict | None) -> dict:
    """:data:`SCORECARD_MEASURES` of one run (:mod:`fedmol.fl.scorecard`): improve-to-perfect on the
    global test set against each partner's same-family local-only model and its best local, the
    share of partners improved over their best local, and the share of the local-to-centralized
    gap closed: ``(fed - local) / (central - local)`` on the means over the partners with a model."""
    metric, pp, out = summary["metric"], summary.get("per_partner", []), {}
    if local is not None:
        out["itp_test"] = partner_scorecard(pp, local["per_partner"], metric)["itp"]
    if best is not None:
        card = partner_scorecard(pp, best["per_partner"], metric)
        out.update(itp_vs_best_local=card["itp"], improved_vs_best_local=card["improved"])
        tasks = task_scorecard(pp, best["per_partner"], metric)
        if tasks["n"]:
            out["improved_tasks_vs_best_local"] = tasks["improved"]
    if local is not None and central is not None:
        served = {int(p["partner"]) for p in pp if p.get("served", True) is not False}
        own = {int(p["partner"]): p.get("test") for p in local["per_partner"]}
        out["gap_closed"] = gap_closed(_nanmean(p.get("test") for p in pp if int(p["partner"]) in served),
                                       _nanmean(own.get(k) for k in served), central.get("test", {}).get("1.0"))
    return out


def _best_local_row(group: tuple, best: dict, rf: dict | None) -> dict:
    """The ``best local`` row of one dataset x alpha x devices x seed."""
    dataset, alpha, devices, seed = group
    row: dict[str, Any] = dict(dataset=dataset, metric=best["metric"], alpha=alpha, devices=devices, kind="reference",
                               method=BEST_LOCAL, seed=seed, order=REF_ORDER.index((BEST_LOCAL, None)))
    row["test@partner"] = _nanmean(p["test"] for p in best["per_partner"])
    row["valid@partner"] = _nanmean(p["valid"] for p in best["per_partner"])
    if any("test_prauc" in p for p in best["per_partner"]):
        row["prauc@partner"] = _nanmean(p.get("test_prauc") for p in best["per_partner"])
    if rf is not None:
        row["gain_test_vs_rf"] = federated_gain(best, rf)["gain_test"]
    return row


def ranks(per_seed: pd.DataFrame, measure: str = "test@partner") -> dict[tuple, str]:
    """``{(dataset, alpha, devices, method): "best" | "tie" | "worse"}`` for the federated methods
    of every setting with >= 2 seeds (:func:`fedmol.stats.tie_labels` of ``measure`` over seeds)."""
    out: dict[tuple, str] = {}
    fed = per_seed[per_seed["kind"] == "federated"]
    for (ds, metric, alpha, dev), g in fed.groupby(["dataset", "metric", "alpha", "devices"], sort=False):
        by = g.pivot_table(index="seed", columns="method", values=measure, aggfunc="first", dropna=False)
        if len(by) < 2:
            continue
        labels = tie_labels([by[m].to_dict() for m in by.columns], HIGHER_IS_BETTER.get(metric, True))
        out.update({(ds, alpha, dev, m): lab for m, lab in zip(by.columns, labels)})
    return out


def width_columns(columns) -> list[str]:
    ws = [c for c in columns if c.startswith("test@") and c != "test@partner"]
    return sorted(ws, key=lambda c: -float(c.split("@")[1]))


def _ordered_columns(columns) -> list[str]:
    head = [*KEYS, "seed", "order"]
    return head + width_columns(columns) + OTHER_MEASURES


def results_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1) over seeds of every measure, with ``n_seeds``."""
    if per_seed.empty:
        return pd.DataFrame()
    measures = width_columns(per_seed.columns) + OTHER_MEASURES
    grouped = per_seed.groupby(KEYS, sort=False, dropna=False)
    mean = grouped[measures].mean()
    std = grouped[measures].std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    out["n_seeds"] = grouped.size()
    out["order"] = grouped["order"].first()
    for m in measures:
        out[f"{m}_mean"] = mean[m]
        out[f"{m}_std"] = std[m]
    out = out.reset_index()
    rank = ranks(per_seed)
    out["rank"] = [rank.get((r.dataset, r.alpha, r.devices, r.method), "") for r in out.itertuples()]
    first = {k: {v: i for i, v in enumerate(dict.fromkeys(per_seed[k]))} for k in ("dataset", "devices")}
    out["_d"] = out["dataset"].map(first["dataset"])
    out["_v"] = out["devices"].map(first["devices"])
    out = out.sort_values(["_d", "alpha", "_v", "order"], kind="stable").drop(columns=["_d", "_v", "order"])
    return out.reset_index(drop=True)


def _fmt(mean, std, pct: bool = False, digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return ""
    scale, unit = (100.0, "%") if pct else (1.0, "")
    d = 0 if pct else digits
    s = f"{mean * scale:.{d}f}{unit}"
    if std is not None and np.isfinite(std):
        s += f" ± {std * scale:.{d}f}{unit}"
    return s


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the results table (shared by Markdown and rich)."""
    widths = [c[: -len("_mean")] for c in table.columns if c.startswith("test@") and c.endswith("_mean")
              and c != "test@partner_mean"]
    widths = [w for w in widths if table[f"{w}_mean"].notna().any()]
    def shown(column: str) -> bool:  # a column only some datasets have: several tasks, classification
        return column in table and bool(table[column].notna().any())

    by_task, prauc = shown("improved_tasks_vs_best_local_mean"), shown("prauc@partner_mean")
    header = ["dataset", "metric", "alpha", "devices", "method", "seeds", "rank", *widths, "test@partner",
              "gain test", "gaining", "gap closed", "vs best local", "beat best local",
              *(["tasks beat best local"] if by_task else []),
              *(["PR-AUC@partner", "PR-AUC vs best local"] if prauc else []), "served", "MB"]
    rows = []
    for _, r in table.iterrows():
        metric = r["metric"]
        rows.append([
            str(r["dataset"]), f"{metric} ({'↑' if HIGHER_IS_BETTER.get(metric, True) else '↓'})", f"{r['alpha']:g}",
            str(r["devices"]), str(r["method"]), str(int(r["n_seeds"])), str(r.get("rank", "")),
            *[_fmt(r[f"{w}_mean"], r[f"{w}_std"]) for w in widths],
            _fmt(r["test@partner_mean"], r["test@partner_std"]),
            _fmt(r["gain_test_mean"], r["gain_test_std"]),
            _fmt(r["share_gain_test_mean"], r["share_gain_test_std"], pct=True),
            _fmt(r["gap_closed_mean"], r["gap_closed_std"], pct=True),
            _fmt(r["gain_test_vs_best_local_mean"], r["gain_test_vs_best_local_std"]),
            _fmt(r["improved_vs_best_local_mean"], r["improved_vs_best_local_std"], pct=True),
            *([_fmt(r["improved_tasks_vs_best_local_mean"], r["improved_tasks_vs_best_local_std"], pct=True)]
              if by_task else []),
            *([_fmt(r["prauc@partner_mean"], r["prauc@partner_std"]),
               _fmt(r["prauc_vs_best_local_mean"], r["prauc_vs_best_local_std"])] if prauc else []),
            _fmt(r["served_mean"], None, pct=True),
            "" if not np.isfinite(r["mb_mean"]) else f"{r['mb_mean']:.3g}",
        ])
    if all(r[6] == "" for r in rows):  # no setting has >= 2 seeds: no rank column
        header, rows = header[:6] + header[7:], [r[:6] + r[7:] for r in rows]
    return header, rows


def verdicts(per_seed: pd.DataFrame) -> dict[tuple, str]:
    """One line per dataset x alpha x devices: the federated method with the best mean
    ``test@partner``, its margin over the partners' local-only models of its family and over their
    best local models, the share of the local-to-centralized gap it closes, and whether the margin
    over the best local is more than seed noise (a paired t-test over seeds, :mod:`fedmol.stats`)."""
    out: dict[tuple, str] = {}
    fed = per_seed[per_seed["kind"] == "federated"]
    for (ds, metric, alpha, dev), g in fed.groupby(["dataset", "metric", "alpha", "devices"], sort=False):
        means = g.groupby("method", sort=False)["test@partner"].mean()
        if means.isna().all():
            continue
        best = means.idxmax() if HIGHER_IS_BETTER.get(metric, True) else means.idxmin()
        b = g[g["method"] == best]
        vs_best = b["gain_test_vs_best_local"].dropna()
        parts = [f"best federated: {best} ({metric} {means[best]:.3f} per partner)",
                 f"vs local-only {b['gain_test'].mean():+.3f}"]
        if len(vs_best):
            parts.append(f"vs best local {vs_best.mean():+.3f}")
        if b["gap_closed"].notna().any():
            parts.append(f"closes {b['gap_closed'].mean():.0%} of the local-to-centralized gap")
        if len(vs_best) >= 2:
            p = paired_pvalue(vs_best.to_numpy(), np.zeros(len(vs_best)))
            parts.append("beyond seed noise" if p < SIGNIFICANCE else f"within seed noise (p = {p:.2f})")
        elif len(vs_best):
            parts.append("one seed: noise not measured")
        out[(ds, alpha, dev)] = "; ".join(parts)
    return out


def to_markdown(table: pd.DataFrame, title: str = "Results", notes: list[str] | None = None,
                verdict: dict[tuple, str] | None = None) -> str:
    header, rows = display_rows(table)
    lines = [f"# {title}", "", *[f"- {n}" for n in [*(notes or []), *NOTES]], ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < 5 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    if verdict:
        lines += ["", "## Verdict per setting", ""]
        lines += [f"- {ds}, alpha {alpha:g}, {dev} devices: {v}." for (ds, alpha, dev), v in verdict.items()]
    return "\n".join(lines) + "\n"


#: the columns of the terminal table by default (it reads at 100 columns); ``wide``: every column of results.md
COMPACT = ["method", "rank", "test@1.0", "test@partner", "gain test", "vs best local", "gap closed",
           "beat best local", "served", "MB"]


def _short_mb(cell: str) -> str:
    """MB in the terminal: ``1480`` rather than ``1.48e+03`` (narrower, read at a glance)."""
    try:
        v = float(cell)
    except ValueError:
        return cell
    return f"{v:.0f}" if v >= 1000 else cell


def rich_table(table: pd.DataFrame, title: str = "Results", verdict: dict[tuple, str] | None = None,
               wide: bool = False):
    """The results as rich tables, one per dataset x alpha x devices (a renderable ``Group``), each
    ending with its :func:`verdicts` line; by default only the :data:`COMPACT` columns, without
    vertical rules, so that it reads in a 100-column terminal (``wide``: every column)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    header, rows = display_rows(table)
    if not wide:
        keep = [i for i, h in enumerate(header) if i < 4 or h in COMPACT]
        header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    tables = []
    groups: dict[tuple, list[list[str]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[:4]), []).append(row[4:])
    short = {"test@partner": "partner", "gain vs local RF": "vs local RF", "vs best local": "vs best",
             "gain test": "vs local", "gap closed": "gap", "beat best local": "beat best",
             "PR-AUC@partner": "PR-AUC", "PR-AUC vs best local": "PR vs best"}
    for i, ((ds, metric, alpha, dev), grows) in enumerate(groups.items()):
        t = Table(title=(f"{title}\n" if i == 0 else "") + f"{ds}, test {metric}, alpha {alpha}, {dev} devices",
                  title_justify="left", box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD, pad_edge=wide)
        for j, h in enumerate(header[4:]):
            t.add_column(short.get(h, h.replace("test@", "@")), justify="left" if j == 0 else "right")
        mb = header[4:].index("MB") if "MB" in header[4:] else None
        for r in grows:
            cells = [c.replace(" ± ", "±") for c in r]
            if mb is not None:
                cells[mb] = _short_mb(cells[mb])
            t.add_row(*cells)
        line = (verdict or {}).get((ds, float(alpha), dev))
        if line:
            t.caption, t.caption_justify = f"verdict: {line}", "left"
        tables.append(t)
    legend = ("partner: mean test score of the model each partner ends up with; vs local / vs best: its gain over the "
              "partners' local-only model of the same family / their best local model (chosen on their own "
              "validation molecules), positive = better; gap: share of the local-to-centralized gap closed; beat "
              "best: share of partners beating their best local"
              + ("; PR-AUC / PR vs best: the same for the mean PR-AUC" if wide else "")
              + ("; ±: sample std over seeds (ddof=1)" if (table["n_seeds"] > 1).any() else "")
              + ("" if wide else "; every column: --wide or results.md"))
    return Group(*tables, legend)


# --------------------------------------------------------------------------------------------- plots
def _metrics_frame(path: Path, metric: str) -> pd.DataFrame | None:
    """``round``, cumulative ``mb`` and the widest width's test metric (eval rounds only) of one run."""
    f = Path(path) / "metrics.csv"
    if not f.is_file():
        return None
    df = pd.read_csv(f)
    cols = [c for c in df.columns if c.startswith(f"test_{metric}@")]
    if not cols:
        return None
    col = max(cols, key=lambda c: float(c.split("@")[1]))
    out = pd.DataFrame({"round": df["round"], "mb": (df["bytes_up"] + df["bytes_down"]).cumsum() / 1e6,
                        "value": pd.to_numeric(df[col], errors="coerce")})
    out.attrs["width"] = col.split("@")[1]
    return out.dropna(subset=["value"])


def _ref_lines(ax, refs: dict[str, float]) -> None:
    """The references as horizontal lines, in their fixed styles (:func:`fedmol.plotstyle.reference_hlines`)."""
    from fedmol.plotstyle import reference_hlines

    reference_hlines(ax, refs)


def _reported_point(entries: list[dict], table: pd.DataFrame, method: str, width: str) -> tuple | None:
    """(mean reported round, mean reported test metric) of a method: where model selection stopped."""
    rounds = [e["summary"]["selected_round"] for e in entries
              if e["method"] == method and e["summary"].get("selected_round") is not None]
    row = table[table["method"] == method]
    col = f"test@{width}_mean"
    if not rounds or row.empty or col not in row or not np.isfinite(row[col].iloc[0]):
        return None
    return float(np.mean(rounds)), float(row[col].iloc[0])


#: the x axis of the curve plots: ``{plot kind: (metrics column, label)}``
_CURVE_AXES = {"rounds": ("round", "round"), "mb": ("mb", "MB communicated (down + up, cumulative)")}


def plot_group(entries: list[dict], table: pd.DataFrame, folder: Path, tag: str) -> list[Path]:
    """The three plots of one dataset x alpha x devices group."""
    folder.mkdir(parents=True, exist_ok=True)
    metric = entries[0]["summary"]["metric"]
    title = f"{entries[0]['dataset']}, {entries[0]['devices']} devices, alpha {entries[0]['alpha']:g}"
    refs = _reference_scores(table)
    curves = _method_curves(entries, metric)
    files = [_plot_curves(kind, curves, entries, table, refs, f"test {metric}", title, folder / f"{kind}_{tag}.png")
             for kind in _CURVE_AXES]
    files.append(_plot_widths(table, refs, f"reported test {metric}", title, folder / f"widths_{tag}.png"))
    return files


def _reference_scores(table: pd.DataFrame) -> dict[str, float]:
    """``{reference method: its score}``: centralized at width 1, the others averaged over the partners."""
    refs = {}
    for _, r in table.iterrows():
        if r["kind"] == "reference":
            key = "test@1.0_mean" if r["method"].startswith("centralized") else "test@partner_mean"
            refs[r["method"]] = r.get(key, np.nan)
    return refs


def _method_curves(entries: list[dict], metric: str) -> dict[str, tuple[pd.DataFrame, str]]:
    """``{federated method: (its test metric per round, mean over seeds; the width it is read at)}``."""
    methods = list(dict.fromkeys(e["method"] for e in entries if e["kind"] == "federated"))
    curves = {}
    for m in methods:
        frames = [f for e in entries if e["kind"] == "federated" and e["method"] == m
                  if (f := _metrics_frame(e["path"], metric)) is not None and not f.empty]
        if frames:
            curves[m] = (pd.concat(frames).groupby("round").mean(numeric_only=True).reset_index(),
                         frames[0].attrs.get("width", "1.0"))
    return curves


def _new_axes():
    """A figure of the report's size and its one axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.6, 4.2), layout="constrained")
    return fig, fig.subplots()


def _save_plot(fig, ax, ylabel: str, title: str, path: Path) -> Path:
    """Label, title, grid and legend ``ax``, and save ``fig`` as ``path``."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    fig.savefig(path, dpi=110)
    return path


def _plot_curves(kind: str, curves: dict, entries: list[dict], table: pd.DataFrame, refs: dict[str, float],
                 ylabel: str, title: str, path: Path) -> Path:
    """Each method's test metric against rounds (with its reported round starred) or against MB communicated."""
    x, xlabel = _CURVE_AXES[kind]
    fig, ax = _new_axes()
    stars = False
    for m, (c, w) in curves.items():
        ax.plot(c[x], c["value"], marker=method_marker(m), ms=4, lw=1.4, color=method_color(m), label=f"{m} @{w}",
                zorder=2)
        if kind == "rounds" and (pt := _reported_point(entries, table, m, w)):
            ax.plot(*pt, marker="*", ms=13, color=method_color(m), markeredgecolor="black", ls="none", zorder=3)
            stars = True
    if stars:
        ax.plot([], [], marker="*", ms=11, color="white", markeredgecolor="black", ls="none",
                label="reported round (model selection's\npick, mean over seeds) and its score")
    _ref_lines(ax, refs)
    if kind == "rounds":
        round_axis(ax, xlabel)
    else:
        ax.set_xlabel(xlabel)
    return _save_plot(fig, ax, ylabel, title, path)


def _plot_widths(table: pd.DataFrame, refs: dict[str, float], ylabel: str, title: str, path: Path) -> Path:
    """Each method's reported test metric (mean +- std over seeds) against the width it is served at."""
    fig, ax = _new_axes()
    wcols = [c[: -len("_mean")] for c in table.columns if c.startswith("test@") and c.endswith("_mean")
             and c != "test@partner_mean"]
    for _, r in table.iterrows():
        if r["kind"] == "reference" and r["method"] != "local-only (gnn)":
            continue
        pts = [(float(c.split("@")[1]), r[f"{c}_mean"], r[f"{c}_std"]) for c in wcols
               if np.isfinite(r[f"{c}_mean"])]
        if not pts:
            continue
        pts.sort()
        xs, ys, es = zip(*pts)
        es = [e if np.isfinite(e) else 0.0 for e in es]
        ax.errorbar(xs, ys, yerr=es, marker=method_marker(r["method"]), ms=5, capsize=3, label=r["method"],
                    ls=reference_linestyle(r["method"]), color=method_color(r["method"]), zorder=2)
    _ref_lines(ax, {k: v for k, v in refs.items() if k.startswith("centralized")})
    width_axis(ax, [float(c.split("@")[1]) for c in wcols])
    return _save_plot(fig, ax, ylabel, title, path)


def plot_partner_cdf(gains: pd.DataFrame, path: Path, title: str) -> list[Path]:
    """MELLODDY's CDF of per-partner deltas: for each method (federated runs and ensembles), the
    share of partner x seed pairs whose test gain over their best local model is <= x; a curve
    right of 0 is a method that pays its partners. Nothing is drawn without gains."""
    d = gains.dropna(subset=["gain_test_vs_best_local"])
    d = d[~d["method"].astype(str).str.startswith(("local-only", BEST_LOCAL))]
    if d.empty:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = _new_axes()
    for i, (method, g) in enumerate(d.groupby("method", sort=False)):
        x = np.sort(g["gain_test_vs_best_local"].to_numpy(dtype=float))
        ref = is_reference(method)  # references: dashed (pooled) / dash-dotted (one-shot ensembles)
        ax.step(np.r_[x[0], x], np.r_[0.0, np.arange(1, len(x) + 1) / len(x)], where="post", label=method,
                ls=reference_linestyle(method), color=method_color(method), lw=1.6 if ref else 1.3, zorder=2)
    ax.axvline(0.0, color="black", lw=1, ls=":")
    ax.set_xlabel("test gain over the partner's best local model (per partner and seed)")
    return [_save_plot(fig, ax, "share of partners", title, path)]


# ---------------------------------------------------------------------------------------- everything
def _task_names(entries: list[dict]) -> dict[str, list[str]]:
    """Task names of the registry datasets among ``entries`` (a dataset it does not know: indices)."""
    from fedmol.data.registry import get_info

    names = {}
    for ds in {e["dataset"] for e in entries}:
        try:
            names[ds] = list(get_info(ds).tasks)
        except FedmolError:
            pass
    return names


def write_report(entries: list[dict], out: str | Path, title: str = "Results", notes: list[str] | None = None) -> dict:
    """Tables and plots of the finished runs in ``entries``, written under ``out``.

    ``notes``: extra lines for the top of ``results.md`` (the run settings). Returns
    ``{"table": aggregated DataFrame, "per_seed": DataFrame, "files": {name: path(s)}}``.
    """
    out = Path(out)
    entries = load(entries)
    per_seed, gains = seed_tables(entries)
    table = results_table(per_seed)
    files: dict[str, Any] = {}
    if table.empty:
        return dict(table=table, per_seed=per_seed, files=files)
    files["csv"] = out / "results.csv"
    table.to_csv(files["csv"], index=False)
    files["per_seed"] = out / "results_per_seed.csv"
    per_seed.drop(columns=["order"]).to_csv(files["per_seed"], index=False)
    files["partner_gains"] = out / "partner_gains.csv"
    gains.to_csv(files["partner_gains"], index=False)
    tasks = task_gains(entries, _task_names(entries))
    if not tasks.empty:  # several tasks: MELLODDY's per-task scorecard
        files["task_gains"] = out / "task_gains.csv"
        tasks.to_csv(files["task_gains"], index=False)
    files["markdown"] = out / "results.md"
    verdict = verdicts(per_seed)
    files["markdown"].write_text(to_markdown(table, title, notes, verdict))
    plots = []
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["dataset"], e["devices"], e["alpha"]), []).append(e)
    for (ds, dev, alpha), group in groups.items():
        sub = table[(table["dataset"] == ds) & (table["devices"] == dev) & (table["alpha"] == alpha)]
        tag = f"{ds}_{Path(dev).stem if dev.endswith('.toml') else dev}_a{alpha:g}"
        plots += plot_group(group, sub, out / "plots", tag)
        if "gain_test_vs_best_local" in gains:
            part = gains[(gains["dataset"] == ds) & (gains["devices"] == dev) & (gains["alpha"] == alpha)]
            plots += plot_partner_cdf(part, out / "plots" / f"cdf_{tag}.png", f"{ds}, {dev} devices, alpha {alpha:g}")
    files["plots"] = plots
    return dict(table=table, per_seed=per_seed, files=files, verdicts=verdict)
