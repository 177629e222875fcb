"""Helpers shared by the pilot tests (a module, not conftest, so tests can import it)."""

import json
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


def assert_parity(harness: dict, pilot: dict, private_heads: bool = False) -> None:
    """Same metrics, participants, failures and bytes, round by round; same per-partner scores.
    ``private_heads``: the validation scores too, and not the bytes (over a link the partners'
    own models are scored at their sites: those messages are counted traffic, in-process there are none)."""
    scores = ("test_", "valid_") if private_heads else ("test_",)
    counts = ("participants", "partner_ids", "sat_out", "failures", "truncated")
    counts += () if private_heads else ("bytes_up", "bytes_down")
    assert len(harness["history"]) == len(pilot["history"])
    for h, p in zip(harness["history"], pilot["history"]):
        for k, v in h.items():
            if k.startswith(scores) or (k.startswith("server_") and "seconds" not in k):
                assert _close(v, p[k]), (h["round"], k, v, p[k])
        for k in counts:
            assert h[k] == p[k], (h["round"], k, h[k], p[k])
    for where in ("test", "valid") if private_heads else ("test",):
        assert harness[where].keys() == pilot[where].keys()
        for w in harness[where]:
            assert _close(harness[where][w], pilot[where][w]), (where, w)
    assert [e["partner"] for e in harness["per_partner"]] == [e["partner"] for e in pilot["per_partner"]]
    for h, p in zip(harness["per_partner"], pilot["per_partner"]):
        assert h["width"] == p["width"] and h["n_train"] == p["n_train"] and h["n_valid"] == p["n_valid"]
        assert _close(h["test"], p["test"]) and _close(h["valid"], p["valid"]), (h, p)
        if "test_prauc" in h or "test_prauc" in p:  # classification: PR-AUC beside ROC-AUC on both transports
            assert _close(h["test_prauc"], p["test_prauc"]), (h, p)
    same = ("failures", "rounds", "dataset", "metric", "selected_round")
    for k in same if private_heads else ("bytes_up", "bytes_down", *same):
        assert harness[k] == pilot[k], k


def uploads(audit_file) -> list[dict]:
    """The training replies a site's audit log says it sent."""
    entries = [json.loads(x) for x in audit_file.read_text().splitlines()]
    return [e for e in entries if e["kind"] == "train" and e["direction"] == "sent"]


def assert_no_head_uploaded(audit_files, sent_jsonl) -> None:
    """Private heads: no array named ``head.*`` in any training reply of any site (its audit log,
    each site with some), nor in anything the coordinator received (sent.jsonl)."""
    sent = [json.loads(x) for x in sent_jsonl.read_text().splitlines()]
    names = [a["name"] for f in audit_files for e in uploads(f) for a in e["arrays"]]
    names += [a["name"] for rec in sent for a in rec["arrays"]]
    assert audit_files and all(uploads(f) for f in audit_files)
    assert names and not [n for n in names if n.startswith("head.")]
