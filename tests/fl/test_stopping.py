"""Budgets that converge: a federated run stops after ``patience`` rounds without a better pooled
validation score (``rounds`` is the cap), the references stop by the same rule, and every run
records the rounds it ran, the local steps and the molecules its partners trained on."""

import json

import pytest

from fedmol.errors import FedmolError
from fedmol.config import RunConfig
from fedmol.fl.harness import run_federated
from fedmol.fl.references import reference_patience

TINY = dict(dataset="bace", partners=3, alpha=1.0, hidden=16, layers=2, hparams={"max_local_steps": 3})


def test_a_run_stops_when_validation_stops_improving(tmp_path):
    s = run_federated(RunConfig(**TINY, rounds=30, patience=2), tmp_path, progress=False)
    rows = s["history"]
    best = s["selected_round"]
    assert s["rounds_run"] == len(rows) < 30
    assert rows[-1]["round"] - best == 2  # stopped at the first round `patience` rounds after the best
    valid = [r["valid_rocauc@1.0"] for r in rows]
    assert max(valid) == valid[best] and all(v <= valid[best] for v in valid[best + 1:])
    assert s["stopped"] == (f"early stop after round {rows[-1]['round']}: no better pooled validation rocauc "
                            f"for 2 rounds (patience 2)")
    sent = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
    updates = [m for m in sent if m["kind"] == "update"]
    assert s["local_steps"] == sum(int(m["metrics"]["steps"]) for m in updates) == 3 * 3 * len(rows)
    assert s["molecules_seen"] == sum(int(m["metrics"]["samples"]) for m in updates)
    assert 3 * 3 * 2 * len(rows) <= s["molecules_seen"] <= 3 * 3 * 32 * len(rows)


def test_without_patience_every_round_runs():
    s = run_federated(RunConfig(**TINY, rounds=3), None, progress=False)
    assert s["rounds_run"] == 3 and s["stopped"] is None and s["local_steps"] == 3 * 3 * 3


def test_bad_patience_is_one_line():
    with pytest.raises(FedmolError, match=r"run setting patience must be an integer >= 1 or null, got 0"):
        RunConfig.checked({**TINY, "rounds": 3, "patience": 0})
    with pytest.raises(FedmolError, match="patience stops on the pooled validation score: it needs --select best-valid"):
        run_federated(RunConfig(**TINY, rounds=3, patience=2, select="last"), None, progress=False)


def test_references_stop_by_the_runs_rule_in_epochs():
    cfg = RunConfig(**{**TINY, "hparams": {"local_epochs": 2}}, rounds=10, patience=3)
    assert reference_patience(cfg) == 6  # 3 rounds of 2 epochs
    assert reference_patience(cfg, 4) == 4  # a suite's explicit reference patience wins
    assert reference_patience(RunConfig(**TINY)) is None
