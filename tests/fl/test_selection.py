"""Which round a federated run reports (fedmol.fl.selection), and that reporting it is exact."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedmol.errors import FedmolError
from fedmol.evaluate import Evaluator
from fedmol.fl import driver, harness
from fedmol.config import RunConfig
from fedmol.fl.harness import run_federated
from fedmol.fl.selection import RoundSelector, check_selection, selection_score
from fedmol.models import build

TINY = dict(dataset="bace", partners=4, alpha=1.0, devices="tiered", rounds=3, hidden=16, layers=2,
            hparams={"max_local_steps": 3})


def test_selection_score_is_the_mean_over_widths_in_the_better_direction():
    assert selection_score({"1.0": 0.8, "0.5": 0.6}, "rocauc") == pytest.approx(0.7)
    assert selection_score({"1.0": 0.8, "0.5": float("nan")}, "rocauc") == pytest.approx(0.8)
    assert selection_score({"1.0": 2.0, "0.5": 1.0}, "rmse") == pytest.approx(-1.5)
    assert selection_score({"1.0": float("nan")}, "rocauc") == -math.inf


def test_unknown_selection_is_refused_with_the_choices():
    with pytest.raises(FedmolError, match="unknown model selection 'best'; known: best-valid, last"):
        check_selection("best")
    with pytest.raises(FedmolError, match="run setting select must be 'best-valid' or 'last', got 'best'"):
        RunConfig.checked({**TINY, "select": "best"})


class _Toy:
    """An algorithm stand-in whose served state is one number."""

    def __init__(self):
        self.value, self.checkpoints = 0, 0

    def checkpoint(self):
        self.checkpoints += 1
        return self.value

    def restore(self, ck):
        self.value = ck


@pytest.mark.parametrize("metric,valid,best", [
    ("rocauc", [0.6, 0.7, 0.7, 0.65], 1),        # a tie keeps the earlier round
    ("rmse", [1.2, 0.9, 1.1, 1.0], 1),           # lower is better
    ("rocauc", [float("nan"), 0.5, 0.4, 0.3], 1),  # an undefined score never wins over a defined one
    ("rocauc", [0.5, 0.6, 0.7, 0.8], 3),         # the last round can be the best
    ("rocauc", [float("nan")] * 4, 3),           # validation cannot rank any round: the last one stands
])
def test_round_selector_restores_the_best_round(metric, valid, best):
    algo, sel = _Toy(), RoundSelector("best-valid", metric)
    for rnd, v in enumerate(valid):
        algo.value = rnd
        sel.observe(rnd, {"1.0": v}, algo)
    assert sel.finish(algo, len(valid) - 1) == best and algo.value == best


def test_last_selection_takes_no_checkpoint():
    algo, sel = _Toy(), RoundSelector("last", "rocauc")
    for rnd in range(3):
        algo.value = rnd
        sel.observe(rnd, {"1.0": 1.0 - rnd / 10}, algo)
    assert sel.finish(algo, 2) == 2 and algo.value == 2 and algo.checkpoints == 0


def _rows(out):
    return list(csv.DictReader(open(out / "metrics.csv")))


def test_best_valid_reports_the_round_with_the_best_pooled_validation_score(tmp_path):
    s = run_federated(RunConfig(**{**TINY, "rounds": 4}), tmp_path, progress=False)
    rows = _rows(tmp_path)
    widths = list(s["test"])
    means = [np.nanmean([float(r[f"valid_rocauc@{w}"]) for w in widths]) for r in rows]
    assert s["selected_round"] == int(np.argmax(means))
    chosen = rows[s["selected_round"]]
    for w in widths:
        assert s["test"][w] == pytest.approx(float(chosen[f"test_rocauc@{w}"]), abs=1e-12)
        assert s["valid"][w] == pytest.approx(float(chosen[f"valid_rocauc@{w}"]), abs=1e-12)
        assert s["test_last"][w] == pytest.approx(float(rows[-1][f"test_rocauc@{w}"]), abs=1e-12)
    assert json.loads((tmp_path / "summary.json").read_text())["selection"].startswith("best-valid")


def test_selection_does_not_change_training(tmp_path):
    best = run_federated(RunConfig(**TINY), None, progress=False)
    last = run_federated(RunConfig(**TINY, select="last"), None, progress=False)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in best["history"]]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in last["history"]]
    assert last["selected_round"] == TINY["rounds"] - 1 and last["test"] == last["test_last"]


class _FirstRoundWins(RoundSelector):
    """Forces the reported round to be round 0, so that restoring a checkpoint is always exercised."""

    def observe(self, rnd, valid, algo):
        return super().observe(rnd, {k: 1.0 - rnd for k in valid}, algo)


@pytest.mark.parametrize("algorithm,hp", [
    ("fedavg", {}),
    ("heterofl", {}),
    ("fjord", {}),
    ("fedrescue", {}),
    ("fedgen", {}),
    ("feddf", {"distill_steps": 4, "eval_every": 2, "pool_size": 40}),
])
def test_restored_round_is_exactly_the_reported_model(algorithm, hp, tmp_path, monkeypatch, data_dir):
    """The reported test scores (recorded in round 0) are those of the saved predictions, and the
    saved weights reproduce them: every algorithm's checkpoint/restore is exact."""
    monkeypatch.setattr(driver, "RoundSelector", _FirstRoundWins)
    cfg = RunConfig(**{**TINY, "algorithm": algorithm, "hparams": {**TINY["hparams"], **hp}, "data_dir": str(data_dir)})
    s = run_federated(cfg, tmp_path, progress=False)
    assert s["selected_round"] == 0 and s["test"] != s["test_last"]
    ev = Evaluator("bace")
    fed = harness.build_federation(cfg, progress=False)
    y = np.asarray(fed.test.labels, dtype=float).reshape(len(fed.test), -1)
    preds = {}
    for r in csv.DictReader(open(tmp_path / "test_predictions.csv")):
        preds.setdefault(r["width"], []).append(float(r["logit:Class"]))
    for w, v in s["test"].items():
        assert ev.eval({"y_true": y, "y_pred": np.array(preds[w])})["rocauc"] == pytest.approx(v, abs=1e-9)
    if algorithm in ("fedavg", "fjord", "fedrescue"):  # one plain state dict serves every width
        conf = json.loads((tmp_path / "config.json").read_text())["model"]
        net = build(**conf)
        net.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
        net.eval()
        from fedmol.training import predict
        for w in s["test"]:
            _, p = predict(net, fed.test, float(w))
            assert np.allclose(p[:, 0], preds[w], atol=1e-5)
    assert torch.isfinite(torch.tensor(list(s["test"].values()))).all()


def test_all_undefined_validation_falls_back_to_the_last_round_and_says_why():
    algo, sel = _Toy(), RoundSelector("best-valid", "rocauc")
    for rnd in range(3):
        algo.value = rnd
        assert sel.observe(rnd, {"1.0": float("nan"), "0.5": float("nan")}, algo) is False
    assert sel.finish(algo, 2) == 2 and algo.value == 2 and algo.checkpoints == 0
    assert sel.describe() == (
        "best-valid: the evaluated round with the highest pooled validation rocauc, averaged over the served widths "
        "(ties: the earlier round); fell back to the last round: no evaluated round has a defined pooled validation "
        "rocauc (undefined in all 3 evaluated rounds)")


def test_nan_rounds_never_win_and_take_no_checkpoint():
    algo, sel = _Toy(), RoundSelector("best-valid", "rmse")
    for rnd, v in enumerate([float("nan"), 1.5, float("nan"), 2.0]):
        algo.value = rnd
        sel.observe(rnd, {"1.0": v}, algo)
    assert sel.finish(algo, 3) == 1 and algo.value == 1 and algo.checkpoints == 1
    assert sel.fallback is None and "fell back" not in sel.describe()
