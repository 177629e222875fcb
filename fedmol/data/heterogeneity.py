"""How different the partners of a partition are: the heterogeneity report of every split file.

:func:`heterogeneity_report` measures a :class:`fedmol.data.partition.Partition`'s partners (sizes,
scaffolds, label rates, Jensen-Shannon divergences of their labels and of their chemistry
clusters); :func:`report_table` shows it as a table (``fedmol split show``);
:func:`single_class_warnings` lists where the split leaves ROC-AUC undefined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedmol.data.partition import (Partition, PartitionError, TaskType, chemistry_clusters, default_n_clusters,
                                   scaffold_groups)
from fedmol.jsonio import jsonable

__all__ = ["REPORT_REGRESSION_BINS", "heterogeneity_report", "report_table", "single_class_warnings"]

#: Quantile bins per task for the regression label histograms of :func:`heterogeneity_report`.
REPORT_REGRESSION_BINS = 10

#: A K x K matrix of divergences between partners (``None`` where undefined).
Matrix = list[list[float | None]]


def _js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms (normalized by scipy): the
    square of scipy's Jensen-Shannon distance."""
    from scipy.spatial.distance import jensenshannon

    distance = jensenshannon(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64), base=2)
    return max(0.0, min(1.0, float(distance) ** 2))


def _rounded(x: float | None) -> float | None:
    """``x`` rounded to 6 digits; None for None and non-finite numbers."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 6)


def _rounded_mean(values: list) -> float | None:
    """The mean of ``values`` rounded to 6 digits; None for no value."""
    return _rounded(float(np.mean(values))) if values else None


def _label_summary(y: np.ndarray, idx: np.ndarray) -> list[float | None]:
    """Per task: the mean label of the molecules ``idx`` (None where none is labelled)."""
    out: list[float | None] = []
    for t in range(y.shape[1]):
        v = y[idx, t]
        v = v[~np.isnan(v)]
        out.append(_rounded(float(v.mean())) if len(v) else None)
    return out


def _mean_offdiag(mat: Matrix) -> float | None:
    """Mean of the defined entries above the diagonal (None if there is none)."""
    return _rounded_mean(
        [mat[i][j] for i in range(len(mat)) for j in range(i + 1, len(mat)) if mat[i][j] is not None]
    )


def _symmetric_matrix(K: int, between: Callable[[int, int], float | None]) -> Matrix:
    """K x K matrix with 0 on the diagonal and ``between(i, j)`` at ``[i][j]`` and ``[j][i]``."""
    mat: Matrix = [[0.0] * K for _ in range(K)]
    for i in range(K):
        for j in range(i + 1, K):
            mat[i][j] = mat[j][i] = between(i, j)
    return mat


def _checked_labels(y: np.ndarray, n: int, task_type: str) -> np.ndarray:
    """``y`` as a float ``(n, T)`` matrix; refuses a row count other than ``n`` or an unknown task type."""
    y_arr = np.asarray(y, dtype=np.float64)
    if y_arr.ndim == 1:
        y_arr = y_arr[:, None]
    if y_arr.shape[0] != n:
        raise PartitionError(f"y has {y_arr.shape[0]} rows but there are {n} scaffolds")
    if task_type not in ("classification", "regression"):
        raise PartitionError(f"task_type must be 'classification' or 'regression', got {task_type!r}")
    return y_arr


def _regression_bin_edges(y: np.ndarray) -> list[np.ndarray]:
    """Per task: the inner edges of its decile bins over all labelled molecules."""
    edges = []
    for t in range(y.shape[1]):
        col = y[:, t]
        col = col[~np.isnan(col)]
        qs = np.linspace(0, 1, REPORT_REGRESSION_BINS + 1)[1:-1]
        edges.append(np.quantile(col, qs) if len(col) else np.zeros(0))
    return edges


def _label_histograms(partition: Partition, y: np.ndarray, task_type: str) -> list[list[np.ndarray | None]]:
    """Per partner, per task: the histogram of its training labels (None where it has none).

    Classification: ``[negatives, positives]``; regression: counts in the task's decile bins.
    """
    edges = _regression_bin_edges(y) if task_type == "regression" else []
    hists: list[list[np.ndarray | None]] = []
    for p in partition.partners:
        row: list[np.ndarray | None] = []
        for t in range(y.shape[1]):
            v = y[p.train, t]
            v = v[~np.isnan(v)]
            if len(v) == 0:
                row.append(None)
            elif task_type == "classification":
                pos = float((v > 0.5).sum())
                row.append(np.array([len(v) - pos, pos]))
            else:
                b = np.searchsorted(edges[t], v, side="right")
                row.append(np.bincount(b, minlength=REPORT_REGRESSION_BINS).astype(np.float64))
        hists.append(row)
    return hists


def _label_divergences(hists: list[list[np.ndarray | None]]) -> Matrix:
    """Partner x partner mean over the tasks both label of the JS divergence of their histograms."""

    def between(i: int, j: int) -> float | None:
        pairs = zip(hists[i], hists[j])
        return _rounded_mean([_js(a, b) for a, b in pairs if a is not None and b is not None])

    return _symmetric_matrix(len(hists), between)


def _molecule_clusters(partition: Partition, scaffolds: Sequence[str]) -> np.ndarray:
    """The partition's per-molecule chemistry clusters, recomputed from ``scaffolds`` and
    ``params["n_clusters"]`` when it does not carry them (``-1`` for test molecules)."""
    n = len(scaffolds)
    clusters = partition.clusters
    if clusters is not None and len(clusters) == n:
        return clusters
    clusters = np.full(n, -1, dtype=np.int64)
    test_set = set(partition.test.tolist())
    names, members = scaffold_groups(scaffolds)
    pool_groups = [(nm, m) for nm, m in zip(names, members) if int(m[0]) not in test_set]
    k_req = int(partition.params.get("n_clusters") or default_n_clusters(partition.n_partners))
    labels, _ = chemistry_clusters([nm for nm, _ in pool_groups], k_req)
    for lab, (_, m) in zip(labels, pool_groups):
        clusters[m] = lab
    return clusters


def _chemistry_divergences(partition: Partition, clusters: np.ndarray) -> Matrix:
    """Partner x partner JS divergence of their training molecules' chemistry-cluster histograms."""
    n_cl = int(max(clusters.max(), 0)) + 1
    chem_h = [np.bincount(clusters[p.train][clusters[p.train] >= 0], minlength=n_cl) for p in partition.partners]

    def between(i: int, j: int) -> float | None:
        return _rounded(_js(chem_h[i], chem_h[j])) if chem_h[i].sum() and chem_h[j].sum() else None

    return _symmetric_matrix(len(chem_h), between)


def _partner_rows(partition: Partition, scaf: np.ndarray, y: np.ndarray, div: Matrix, stat_key: str) -> list[dict]:
    """The report's ``partners`` entries."""
    K = partition.n_partners
    rows = []
    for i, p in enumerate(partition.partners):
        others = [div[i][j] for j in range(K) if j != i and div[i][j] is not None]
        idx = np.concatenate([p.train, p.valid])
        rows.append(
            {
                "partner": i,
                "n_train": int(len(p.train)),
                "n_valid": int(len(p.valid)),
                "n_scaffolds": int(len(set(scaf[idx].tolist()))),
                stat_key: _label_summary(y, p.train),
                "mean_divergence": _rounded_mean(others),
            }
        )
    return rows


def heterogeneity_report(
    partition: Partition, scaffolds: Sequence[str], y: np.ndarray, task_type: TaskType
) -> dict[str, Any]:
    """How different the partners are; a JSON-serializable dict (floats rounded to 6 digits).

    Keys:

    * ``partners``: per partner ``n_train``, ``n_valid``, ``n_scaffolds`` (distinct scaffolds in
      train + valid), ``positive_rate`` (classification) or ``target_mean`` (regression): a list
      over tasks computed on the partner's *training* labels (``None`` where a task has no label),
      and ``mean_divergence``: mean label divergence to the other partners.
    * ``test``: ``n``, ``n_scaffolds`` and the same per-task list for the test set.
    * ``pairwise_divergence``: K x K Jensen-Shannon divergences (base 2, in [0, 1]) between the
      partners' training-label distributions. Classification: per task, the Bernoulli
      distributions of the two partners' labels; regression: per task, histograms over
      ``REPORT_REGRESSION_BINS = 10`` bins whose edges are the task's deciles over all labelled
      molecules of the dataset. Averaged over the tasks where both partners have labels
      (``None`` if there is none; diagonal 0).
    * ``mean_pairwise_divergence``: mean over partner pairs ``i < j`` (``None`` for one partner).
    * ``chemistry_pairwise_divergence`` / ``chemistry_divergence``: the same for the partners'
      histograms of chemistry clusters over their training molecules (the clusters of
      :func:`~fedmol.data.partition.scaffold_partition`, recomputed from ``scaffolds`` and
      ``params["n_clusters"]`` if the partition does not carry them).
    * ``params``: ``partition.params``.
    """
    y_arr = _checked_labels(y, len(scaffolds), task_type)
    scaf = np.asarray([str(s) for s in scaffolds], dtype=object)
    stat_key = "positive_rate" if task_type == "classification" else "target_mean"
    div = _label_divergences(_label_histograms(partition, y_arr, task_type))
    chem = _chemistry_divergences(partition, _molecule_clusters(partition, scaffolds))
    test = partition.test
    return {
        "task_type": task_type,
        "n_partners": partition.n_partners,
        "n_tasks": y_arr.shape[1],
        "partners": _partner_rows(partition, scaf, y_arr, div, stat_key),
        "test": {
            "n": int(len(test)),
            "n_scaffolds": int(len(set(scaf[test].tolist()))),
            stat_key: _label_summary(y_arr, test),
        },
        "pairwise_divergence": div,
        "mean_pairwise_divergence": _mean_offdiag(div),
        "chemistry_pairwise_divergence": chem,
        "chemistry_divergence": _mean_offdiag(chem),
        "params": jsonable(partition.params),
    }


def single_class_warnings(partition: Partition, y: np.ndarray, task_type: TaskType) -> list[str]:
    """Where ROC-AUC is undefined because of the split (classification only; ``[]`` for
    regression): one line per partner and task whose validation set holds one class or no label,
    e.g. "partner 3: validation set has one class (all 1) for task 0: ROC-AUC undefined there",
    one per partner whose validation set is empty, and the same for the global test set. Not part
    of the report (split files, and their hashes, do not change)."""
    from fedmol.evaluate import label_classes

    if task_type != "classification":
        return []
    y_arr = np.asarray(y, dtype=np.float64)
    if y_arr.ndim == 1:
        y_arr = y_arr[:, None]
    sets = [(f"partner {k}: validation set", p.valid) for k, p in enumerate(partition.partners)]
    out = []
    for what, idx in sets + [("test set", partition.test)]:
        if len(idx) == 0:
            out.append(f"{what} is empty: ROC-AUC undefined there")
            continue
        for t in range(y_arr.shape[1]):
            classes = label_classes(y_arr[idx, t])
            if len(classes) < 2:
                has = f"one class (all {classes[0]})" if classes else "no labelled molecules"
                out.append(f"{what} has {has} for task {t}: ROC-AUC undefined there")
    return out


def report_table(report: dict[str, Any]):
    """A rich table of a :func:`heterogeneity_report`: one row per partner plus the test set."""
    from rich.table import Table

    regression = report.get("task_type") == "regression"
    key = "target_mean" if regression else "positive_rate"
    n_tasks = int(report.get("n_tasks", 1))
    label = "target mean" if regression else "positive rate"
    if n_tasks > 1:
        label += f" (mean of {n_tasks} tasks)"

    def summary(vals: list[float | None]) -> str:
        v = [x for x in vals if x is not None]
        return f"{np.mean(v):.3f}" if v else "-"

    title = f"{report.get('n_partners')} partners"
    if report.get("mean_pairwise_divergence") is not None:
        title += f" - mean label JS divergence {report['mean_pairwise_divergence']:.3f}"
    if report.get("chemistry_divergence") is not None:
        title += f", chemistry JS divergence {report['chemistry_divergence']:.3f}"
    table = Table(title=title)
    table.add_column("partner")
    table.add_column("train", justify="right")
    table.add_column("valid", justify="right")
    table.add_column("scaffolds", justify="right")
    table.add_column(label, justify="right")
    table.add_column("mean divergence to others", justify="right")
    for p in report["partners"]:
        md = p.get("mean_divergence")
        table.add_row(
            str(p["partner"]),
            str(p["n_train"]),
            str(p["n_valid"]),
            str(p["n_scaffolds"]),
            summary(p[key]),
            "-" if md is None else f"{md:.3f}",
        )
    t = report["test"]
    table.add_row("test", str(t["n"]), "-", str(t["n_scaffolds"]), summary(t[key]), "-", style="dim")
    return table
