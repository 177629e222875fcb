import numpy as np
import pytest
import torch

from fedmol.evaluate import Evaluator
from fedmol.errors import FedmolError


def _auc_by_pairs(y, s):
    """Independent ROC-AUC: the probability that a positive outranks a negative (ties count 1/2)."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (len(pos) * len(neg))


def test_rocauc_matches_pairwise_definition_and_ignores_nan():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(200, 3)).astype(float)
    s = y + rng.normal(scale=1.0, size=y.shape)
    s[:5, 0] = s[5, 0]  # ties
    y[rng.random(y.shape) < 0.2] = np.nan
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 1.0)  # task 2 has one class only: skipped
    out = Evaluator("classification").eval({"y_true": y, "y_pred": s})
    expect = np.mean([_auc_by_pairs(y[~np.isnan(y[:, t]), t], s[~np.isnan(y[:, t]), t]) for t in (0, 1)])
    assert out["rocauc"] == pytest.approx(expect, abs=1e-12)
    assert out["skipped_tasks"] == [2]
    assert 0 < out["prauc"] <= 1


def test_regression_rmse_mae_per_task_then_mean():
    y = np.array([[1.0, 0.0], [2.0, np.nan], [3.0, 4.0]])
    p = np.array([[1.5, 1.0], [2.0, 100.0], [2.0, 2.0]])
    out = Evaluator("regression").eval({"y_true": torch.tensor(y), "y_pred": torch.tensor(p)})
    rmse0 = np.sqrt((0.25 + 0 + 1) / 3)
    rmse1 = np.sqrt((1 + 4) / 2)
    assert out["rmse"] == pytest.approx((rmse0 + rmse1) / 2)
    assert out["mae"] == pytest.approx(((0.5 + 0 + 1) / 3 + (1 + 2) / 2) / 2)


def test_registry_name_sets_task_type_and_shape():
    ev = Evaluator("tox21")
    assert ev.eval_metric == "rocauc" and ev.num_tasks == 12
    assert "(n, 12)" in ev.expected_input_format
    assert Evaluator("esol").eval_metric == "rmse"
    with pytest.raises(FedmolError, match="expected 12 task columns, got 1"):
        ev.eval({"y_true": np.zeros(4), "y_pred": np.zeros(4)})


@pytest.mark.parametrize("inp,match", [
    ({"y_true": np.zeros((3, 1))}, "takes input_dict"),
    ({"y_true": np.zeros((3, 1)), "y_pred": np.zeros((4, 1))}, "same shape"),
    ({"y_true": np.array([0.0, 1.0]), "y_pred": np.array([0.5, np.nan])}, "NaN or inf"),
    ({"y_true": np.array([0.0, 2.0]), "y_pred": np.array([0.5, 0.1])}, "must be 0/1"),
])
def test_bad_input(inp, match):
    with pytest.raises(FedmolError, match=match):
        Evaluator("classification").eval(inp)


def test_single_class_everywhere_is_nan_not_a_crash():
    out = Evaluator("classification").eval({"y_true": np.ones((4, 1)), "y_pred": np.arange(4.0)})
    assert np.isnan(out["rocauc"]) and out["skipped_tasks"] == [0]
    assert Evaluator.better("rmse", 0.5, 0.7) and Evaluator.better("rocauc", 0.7, float("nan"))


@pytest.mark.parametrize("task_type,y,reason", [
    ("classification", [[1.0], [1.0], [np.nan]], "only one class (all 1) for task 0"),
    ("classification", [[0.0], [0.0]], "only one class (all 0) for task 0"),
    ("classification", [[np.nan], [np.nan]], "no labelled molecules"),
    ("classification", np.zeros((0, 1)), "no molecules"),
    ("classification", [[0.0, np.nan], [0.0, np.nan]], "no task has both classes: only one class (all 0) for task 0; "
                                                        "no labelled molecules for task 1"),
    ("classification", [[0.0, 1.0], [1.0, 1.0]], None),  # task 0 has both classes: the mean is defined
    ("regression", [[np.nan], [np.nan]], "no labelled molecules"),
    ("regression", [[2.0], [2.0]], None),
])
def test_undefined_reason_says_why_the_metric_is_nan(task_type, y, reason):
    y = np.asarray(y, dtype=float)
    ev = Evaluator(task_type)
    assert ev.undefined_reason(y) == reason
    if len(y):
        assert np.isnan(ev.eval({"y_true": y, "y_pred": np.zeros_like(y)})[ev.eval_metric]) == (reason is not None)


def test_undefined_warnings_one_line_per_undefined_set():
    ev = Evaluator("classification")
    labels = {"test": torch.tensor([[0.0], [1.0]]), "valid": np.zeros((3, 1))}
    scores = {"test": {"1.0": 0.7, "0.5": 0.6}, "valid": {"1.0": float("nan"), "0.5": None}}
    assert ev.undefined_warnings(scores, labels) == ["rocauc undefined on valid: only one class (all 0) for task 0"]
    assert ev.undefined_warnings({"test": 0.5}, labels) == []


def test_several_tasks_are_scored_per_task_as_well():
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.array([[0, 1, np.nan], [1, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=float)
    p = np.array([[0.1, 0.8, 0.3], [0.9, 0.6, 0.2], [0.4, 0.1, 0.7], [0.3, 0.5, 0.9]])
    out = Evaluator("classification", 3).eval({"y_true": y, "y_pred": p})
    assert out["by_task"]["rocauc"][:2] == [roc_auc_score(y[:, t], p[:, t]) for t in range(2)]
    assert out["by_task"]["prauc"][1] == average_precision_score(y[:, 1], p[:, 1])
    assert np.isnan(out["by_task"]["rocauc"][2]) and out["skipped_tasks"] == [2]  # task 2: one class only
    assert out["rocauc"] == np.mean(out["by_task"]["rocauc"][:2])
    reg = Evaluator("regression", 2).eval({"y_true": np.array([[1.0, np.nan], [2.0, 3.0]]),
                                           "y_pred": np.array([[1.5, 0.0], [2.0, 1.0]])})
    assert reg["by_task"]["rmse"] == [np.sqrt(0.125), 2.0] and reg["by_task"]["mae"] == [0.25, 2.0]
    assert "by_task" not in Evaluator("classification", 1).eval({"y_true": y[:, :1], "y_pred": p[:, :1]})
