"""The wire format: exact round trips, numeric arrays only, versions checked, redacted errors."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from fedmol.fl.message import Message
from fedmol.pilot import records as R
from fedmol.pilot.site import redact


def over_the_wire(rd):
    """Serialize a RecordDict into Flower's object store format and back, as the SuperLink does."""
    contents = {k: v.deflate() for k, v in get_all_nested_objects(rd).items()}
    return inflate_object_from_contents(rd.object_id, contents)


def test_round_trip_is_exact():
    msg = Message(arrays={"w": torch.randn(4, 3), "n": torch.tensor(7), "mask": torch.tensor([True, False]),
                          "sums": torch.rand(5, dtype=torch.float64)},
                  config={"round": 3, "width": 0.25, "model": {"name": "gin", "hidden": 16}, "hp": {"clip": None},
                          "qualified": [1, 2], "purpose": "train", "flag": True},
                  metrics={"n_train": 474.0, "loss": 0.6931, "steps": 2})
    back, meta = R.from_record_dict(over_the_wire(R.to_record_dict(msg, {"kind": "train", "round": 3})))
    assert back.config == msg.config and back.metrics == msg.metrics
    assert list(back.arrays) == list(msg.arrays)
    for k, t in msg.arrays.items():
        assert back.arrays[k].dtype == t.dtype and torch.equal(back.arrays[k], t)
    assert back.nbytes() == msg.nbytes()  # byte accounting identical to the in-process harness
    assert meta["kind"] == "train" and meta["fedmol-version"] == R.local_versions()["fedmol-version"]


def test_text_arrays_are_refused():
    rd = R.to_record_dict(Message(arrays={"w": torch.ones(2)}), {"kind": "train"})
    rd[R.ARRAYS]["smiles"] = Array.from_numpy_ndarray(np.array(["CCO", "c1ccccc1"]))
    with pytest.raises(R.PilotError, match="only numeric arrays"):
        R.from_record_dict(over_the_wire(rd))


def test_not_a_pilot_message():
    with pytest.raises(R.PilotError, match="not a fedmol pilot message"):
        R.from_record_dict(RecordDict({"x": ConfigRecord({"a": 1}), "m": MetricRecord({"b": 1.0}),
                                       "arr": ArrayRecord()}))


def test_versions_named_on_both_sides():
    mine = R.local_versions()
    theirs = {**mine, "fedmol-version": "9.9.9"}
    with pytest.raises(R.IncompatibleVersion) as e:
        R.check_compatible(theirs, "partner node 7", mine)
    assert "9.9.9" in str(e.value) and mine["fedmol-version"] in str(e.value) and "partner node 7" in str(e.value)
    with pytest.raises(R.IncompatibleVersion, match="featurizer-version"):
        R.check_compatible({**mine, "featurizer-version": "other"}, "x", mine)
    R.check_compatible(dict(mine), "x", mine)
    with pytest.raises(R.IncompatibleVersion, match="the same version with different code"):
        R.check_compatible({**mine, "code": "0" * 16}, "x", mine)
    assert len(R.code_fingerprint()) == 16 and R.code_fingerprint() == mine["code"]


def test_error_reason():
    assert R.error_reason("<class 'fedmol.pilot.records.PilotError'>:<'partner 2: no SMILES column'>") == \
        "partner 2: no SMILES column"
    assert R.error_reason("<class 'ZeroDivisionError'>:<'division by zero'>") == "division by zero (ZeroDivisionError)"
    assert R.error_reason(None) == "unknown error"


def test_redaction():
    text = ("/secret/project/x.csv: row 3 'CC(C)Oc1ccc(cc1)C(=O)N' cannot be parsed: SMILES Parse Error: "
            "syntax error while parsing: C1CC[ ; columns found: ['mol', 'Class', 'pIC50']")
    out = redact(text, smiles=["CC(C)Oc1ccc(cc1)C(=O)N"], folders=["/secret/project"])
    assert "CC(C)O" not in out and "C1CC[" not in out and "/secret/project" not in out
    assert "'Class'" in out and "pIC50" in out and "<site>/x.csv" in out
    assert "CCOc1ccccc1" not in redact("unknown molecule CCOc1ccccc1 here")
