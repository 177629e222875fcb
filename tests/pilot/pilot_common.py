"""Helpers shared by the pilot tests (a module, not conftest, so tests can import it)."""

import math

from fedmol.config import RunConfig
TINY = dict(dataset="bace", partners=2, alpha=1.0, rounds=2, seed=0, hidden=16, layers=2,
            hparams={"max_local_steps": 2})
TOL = 1e-4


def tiny(**kw) -> RunConfig:
    return RunConfig(**{**TINY, **kw})


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(float(a) - float(b)) <= TOL


def assert_parity(harness: dict, pilot: dict) -> None:
    """Same metrics, participants, failures and bytes, round by round; same per-partner scores."""
    assert len(harness["history"]) == len(pilot["history"])
    for h, p in zip(harness["history"], pilot["history"]):
        for k, v in h.items():
            if k.startswith("test_") or (k.startswith("server_") and "seconds" not in k):
                assert _close(v, p[k]), (h["round"], k, v, p[k])
        for k in ("participants", "partner_ids", "sat_out", "failures", "truncated", "bytes_up", "bytes_down"):
            assert h[k] == p[k], (h["round"], k, h[k], p[k])
    assert harness["test"].keys() == pilot["test"].keys()
    for w in harness["test"]:
        assert _close(harness["test"][w], pilot["test"][w])
    assert [e["partner"] for e in harness["per_partner"]] == [e["partner"] for e in pilot["per_partner"]]
    for h, p in zip(harness["per_partner"], pilot["per_partner"]):
        assert h["width"] == p["width"] and h["n_train"] == p["n_train"] and h["n_valid"] == p["n_valid"]
        assert _close(h["test"], p["test"]) and _close(h["valid"], p["valid"]), (h, p)
        if "test_prauc" in h or "test_prauc" in p:  # classification: PR-AUC beside ROC-AUC on both transports
            assert _close(h["test_prauc"], p["test_prauc"]), (h, p)
    for k in ("bytes_up", "bytes_down", "failures", "rounds", "dataset", "metric", "selected_round"):
        assert harness[k] == pilot[k], k
