"""The one Evaluator every part of fedmol (and every leaderboard submission) is scored with.

Input format, as OGB's ``Evaluator``: ``{"y_true": A, "y_pred": B}`` with A and B numpy arrays or
torch tensors of shape ``(n, num_tasks)`` (a 1-D array is read as one task). ``y_true`` may hold
NaN for missing labels; those entries are ignored. For classification ``y_true`` is 0/1 and
``y_pred`` is a score (logit or probability: ROC-AUC and PR-AUC only need the order).

Classification: ``rocauc`` (and ``prauc``, average precision) computed per task on the labelled
entries and averaged over the tasks that have both classes, as OGB does; if no task has both
classes the metric is NaN with a reason in ``skipped_tasks``. Regression: ``rmse`` per task then
averaged over tasks (OGB's convention), and ``mae`` likewise. With several tasks, ``by_task`` holds
each metric per task (NaN where undefined), for per-task scorecards.

An undefined metric is never silent: :meth:`Evaluator.undefined_reason` says why a set's labels
leave it undefined (e.g. "only one class (all 0) for task 0", "no labelled molecules") and
:meth:`Evaluator.undefined_warnings` turns a result's NaN scores into one line per set, e.g.
"rocauc undefined on test: only one class (all 0) for task 0".
"""

from __future__ import annotations

import numpy as np

from fedmol.data.registry import METRIC_FOR_TASK, TASK_TYPES, get_info
from fedmol.errors import FedmolError

#: whether larger is better, per metric
HIGHER_IS_BETTER = {"rocauc": True, "prauc": True, "rmse": False, "mae": False}


def _as_2d(a, what: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise FedmolError(f"{what} must have shape (n, num_tasks), got {a.shape}")
    return a


def label_classes(labels) -> list[int]:
    """The distinct values among the labelled (non-NaN) entries of one task's labels, sorted: for
    0/1 classification labels ``[]`` (nothing labelled), ``[0]``, ``[1]`` or ``[0, 1]``."""
    v = np.asarray(labels, dtype=np.float64).ravel()
    return sorted(int(c) for c in np.unique(v[~np.isnan(v)]))


class Evaluator:
    """``Evaluator(name_or_task_type, num_tasks=None).eval({"y_true": ..., "y_pred": ...})``.

    ``name`` is a registry dataset name (its task type and task count are used) or a task type
    ("classification"/"regression") for custom data.
    """

    def __init__(self, name: str, num_tasks: int | None = None):
        if name in TASK_TYPES:
            self.task_type, self.num_tasks = name, num_tasks
        else:
            info = get_info(name)
            self.task_type, self.num_tasks = info.task_type, info.num_tasks
        self.eval_metric = METRIC_FOR_TASK[self.task_type]
        self.metrics = ("rocauc", "prauc") if self.task_type == "classification" else ("rmse", "mae")

    @property
    def expected_input_format(self) -> str:
        t = self.num_tasks if self.num_tasks is not None else "num_tasks"
        kind = "0/1 labels (NaN = missing)" if self.task_type == "classification" else "targets (NaN = missing)"
        pred = "scores or logits" if self.task_type == "classification" else "predictions"
        return (f"input_dict = {{'y_true': y_true, 'y_pred': y_pred}}: numpy arrays or torch tensors of shape "
                f"(n, {t}); y_true holds {kind}, y_pred holds {pred}, finite")

    @property
    def expected_output_format(self) -> str:
        return f"{{{', '.join(repr(m) + ': float' for m in self.metrics)}}}; main metric {self.eval_metric!r}"

    def eval(self, input_dict: dict) -> dict:
        if not isinstance(input_dict, dict) or not {"y_true", "y_pred"} <= set(input_dict):
            raise FedmolError("Evaluator.eval takes " + self.expected_input_format)
        y_true = _as_2d(input_dict["y_true"], "y_true")
        y_pred = _as_2d(input_dict["y_pred"], "y_pred")
        if y_true.shape != y_pred.shape:
            raise FedmolError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same shape")
        if self.num_tasks is not None and y_true.shape[1] != self.num_tasks:
            raise FedmolError(f"expected {self.num_tasks} task columns, got {y_true.shape[1]}")
        labelled = ~np.isnan(y_true)
        if not np.isfinite(y_pred[labelled]).all():
            raise FedmolError("y_pred holds NaN or inf where labels exist")
        if self.task_type == "classification":
            return self._classification(y_true, y_pred, labelled)
        return self._regression(y_true, y_pred, labelled)

    def _classification(self, y_true, y_pred, labelled) -> dict:
        # imported here: a pilot site's process for a training message never pays this import
        from sklearn.metrics import average_precision_score, roc_auc_score

        roc, pr, skipped = [], [], []
        by_task = {"rocauc": [], "prauc": []}
        for t in range(y_true.shape[1]):
            m = labelled[:, t]
            yt = y_true[m, t]
            if not np.isin(yt, (0.0, 1.0)).all():
                raise FedmolError(f"task {t}: classification labels must be 0/1 or NaN")
            if yt.size == 0 or yt.min() == yt.max():
                skipped.append(t)
                by_task["rocauc"].append(float("nan"))
                by_task["prauc"].append(float("nan"))
                continue
            roc.append(roc_auc_score(yt, y_pred[m, t]))
            pr.append(average_precision_score(yt, y_pred[m, t]))
            by_task["rocauc"].append(float(roc[-1]))
            by_task["prauc"].append(float(pr[-1]))
        out = {"rocauc": float(np.mean(roc)) if roc else float("nan"),
               "prauc": float(np.mean(pr)) if pr else float("nan")}
        if skipped:
            out["skipped_tasks"] = skipped
        if y_true.shape[1] > 1:
            out["by_task"] = by_task
        return out

    def _regression(self, y_true, y_pred, labelled) -> dict:
        rmse, mae = [], []
        by_task = {"rmse": [], "mae": []}
        for t in range(y_true.shape[1]):
            m = labelled[:, t]
            if not m.any():
                by_task["rmse"].append(float("nan"))
                by_task["mae"].append(float("nan"))
                continue
            err = y_pred[m, t] - y_true[m, t]
            rmse.append(np.sqrt(np.mean(err**2)))
            mae.append(np.mean(np.abs(err)))
            by_task["rmse"].append(float(rmse[-1]))
            by_task["mae"].append(float(mae[-1]))
        out = {"rmse": float(np.mean(rmse)) if rmse else float("nan"),
               "mae": float(np.mean(mae)) if mae else float("nan")}
        if y_true.shape[1] > 1:
            out["by_task"] = by_task
        return out

    def undefined_reason(self, y_true) -> str | None:
        """Why the metrics are undefined (NaN) on a set with labels ``y_true`` (an array or tensor
        ``(n, num_tasks)``, NaN = missing), or None when they are defined. Undefinedness depends on
        the labels only (finite predictions are required wherever a label exists)."""
        y = _as_2d(y_true, "y_true")
        if y.shape[0] == 0:
            return "no molecules"
        per_task = []
        for t in range(y.shape[1]):
            classes = label_classes(y[:, t])
            if not classes:
                per_task.append(f"no labelled molecules for task {t}")
            elif len(classes) == 1 and self.task_type == "classification":
                per_task.append(f"only one class (all {classes[0]}) for task {t}")
            else:
                return None  # one task with a defined metric defines the average
        if all(r.startswith("no labelled") for r in per_task):
            return "no labelled molecules"
        if len(per_task) == 1:
            return per_task[0]
        more = f"; ... ({len(per_task) - 3} more tasks)" if len(per_task) > 3 else ""
        return "no task has both classes: " + "; ".join(per_task[:3]) + more

    def undefined_warnings(self, scores: dict, labels: dict) -> list[str]:
        """One line per set whose score is undefined at some width: ``scores`` maps a set's name
        ("test", "valid") to its score by width (NaN or None = undefined) or to one score,
        ``labels`` the set's name to its labels. E.g. "rocauc undefined on test: only one class
        (all 0) for task 0"."""
        out = []
        for where, by_width in scores.items():
            values = by_width.values() if isinstance(by_width, dict) else [by_width]
            if any(v is None or not np.isfinite(float(v)) for v in values) and where in labels:
                reason = self.undefined_reason(labels[where]) or "no defined score"
                out.append(f"{self.eval_metric} undefined on {where}: {reason}")
        return out

    @staticmethod
    def better(metric: str, a: float, b: float) -> bool:
        """True if ``a`` is strictly better than ``b`` for ``metric`` (NaN is never better)."""
        if np.isnan(a):
            return False
        if np.isnan(b):
            return True
        return a > b if HIGHER_IS_BETTER[metric] else a < b
