"""fedmol.jsonio: every JSON file fedmol writes is strict JSON (NaN/inf as null); readers map null back."""

import math

import numpy as np
import pytest

from fedmol.jsonio import read_summary, to_json, undefined_as_nan, write_json


def test_non_finite_numbers_become_null_and_numpy_plain_json():
    obj = {"a": float("nan"), "b": (np.float32(np.inf), -math.inf, np.float64(0.5)), "c": np.arange(3),
           "d": np.bool_(True), "e": np.int64(7), np.int64(2): [np.float32(np.nan)], "f": None, "g": "NaN"}
    assert to_json(obj, sort_keys=False) == ('{"a": null, "b": [null, null, 0.5], "c": [0, 1, 2], "d": true, "e": 7, '
                                             '"2": [null], "f": null, "g": "NaN"}')


def test_to_json_refuses_what_a_default_makes_non_finite():
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        to_json({"x": object()}, default=lambda o: float("nan"))


def test_write_json_is_atomic_and_exact(tmp_path):
    path = write_json(tmp_path / "s.json", {"test": {"1.0": float("nan")}, "n": 1})
    assert path.read_text() == '{\n "test": {\n  "1.0": null\n },\n "n": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
    write_json(tmp_path / "one.json", [1, 2], indent=None, atomic=False)
    assert (tmp_path / "one.json").read_text() == "[1, 2]\n"


def test_readers_take_null_metrics_as_nan_and_keep_other_nulls(tmp_path):
    s = {"metric": "rocauc", "test": {"1.0": None, "0.5": 0.7}, "valid": {"1.0": None}, "test_last": {"1.0": None},
         "privacy": None, "per_partner": [{"partner": 0, "width": None, "test": None, "valid": 0.6},
                                          {"partner": 1, "width": None, "served": False, "test": None, "valid": None}]}
    write_json(tmp_path / "summary.json", s)
    (tmp_path / "progress.jsonl").write_text(to_json({"round": 0, "test_rocauc@1.0": float("nan"), "failures": 0}) + "\n")
    back = read_summary(tmp_path / "summary.json", history=tmp_path / "progress.jsonl")
    assert math.isnan(back["test"]["1.0"]) and back["test"]["0.5"] == 0.7 and math.isnan(back["valid"]["1.0"])
    assert math.isnan(back["test_last"]["1.0"]) and back["privacy"] is None
    p0, p1 = back["per_partner"]
    assert p0["width"] is None and math.isnan(p0["test"]) and p0["valid"] == 0.6
    assert p1["test"] is None and p1["valid"] is None  # no model served: no score, not an undefined one
    (row,) = back["history"]
    assert math.isnan(row["test_rocauc@1.0"]) and row["failures"] == 0
    assert read_summary(tmp_path / "summary.json", history=tmp_path / "absent.jsonl")["history"] == []
    row = undefined_as_nan({"valid_rmse@0.5": None, "partners": None})
    assert math.isnan(row["valid_rmse@0.5"]) and row["partners"] is None



def test_benchmark_report_reads_null_metrics_as_undefined(tmp_path):
    from fedmol.fl import report

    summary = {"dataset": "bace", "metric": "rocauc", "test": {"1.0": float("nan")}, "test_last": {"1.0": 0.6},
               "valid": {"1.0": float("nan")}, "selected_round": 1, "bytes_up": 1000000, "bytes_down": 0,
               "seconds": 1.0, "per_partner": [{"partner": 0, "width": 1.0, "test": float("nan"), "valid": None}]}
    write_json(tmp_path / "summary.json", summary)
    entry = dict(kind="federated", method="fedavg", dataset="bace", alpha=1.0, devices="homogeneous", seed=0,
                 model="gnn", path=str(tmp_path))
    (loaded,) = report.load([entry])
    assert math.isnan(loaded["summary"]["test"]["1.0"]) and math.isnan(loaded["summary"]["per_partner"][0]["valid"])
    per_seed, _ = report.seed_tables([loaded])
    row = per_seed.iloc[0]
    assert math.isnan(row["test@1.0"]) and math.isnan(row["test@partner"]) and row["test_last@1.0"] == 0.6


def test_atomic_path_replaces_on_success_and_leaves_nothing_on_failure(tmp_path):
    from fedmol.atomic import atomic_path, write_atomic

    target = write_atomic(tmp_path / "f.bin", b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert tmp.parent == target.parent and target.read_bytes() == b"old"
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
