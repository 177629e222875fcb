"""Undefined metrics are never silent: strict JSON with null, the selection's fallback, and one
warning line per undefined metric (fedmol run, fedmol train) or single-class set (fedmol split)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmol.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def strict(text: str):
    """json.loads that refuses NaN / Infinity tokens."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def one_class_csv(tmp_path_factory, data_dir):
    """150 BACE molecules whose labels are 0 everywhere but in the global test set (alternating 0/1):
    every partner's validation set, and the pooled one, holds one class."""
    import pandas as pd

    from fedmol.data.dataset import load_dataset
    from fedmol.data.partition import test_groups_mask
    from fedmol.data.splits import dataset_scaffolds

    df = pd.read_csv(data_dir / "bace.csv").iloc[::8].head(150)[["smiles"]].reset_index(drop=True)
    path = tmp_path_factory.mktemp("oneclass") / "oneclass.csv"
    df.assign(act=0).to_csv(path, index=False)
    ds = load_dataset(csv=path, smiles_col="smiles", target_cols="act", task="classification", progress=False)
    test_rows = ds.rows[test_groups_mask(dataset_scaffolds(ds, progress=False), 0.1)]
    assert len(test_rows) >= 4 and len(ds) == len(df)
    df["act"] = 0
    df.loc[sorted(test_rows)[::2], "act"] = 1
    df.to_csv(path, index=False)
    return path


CSV_ARGS = ("--smiles-col", "smiles", "--target-cols", "act", "--task", "classification")


def test_run_warns_falls_back_and_writes_strict_json(one_class_csv, tmp_path):
    out = tmp_path / "run"
    res = run("run", "--csv", one_class_csv, *CSV_ARGS, "--partners", 2, "--rounds", 2, "--hidden", 8, "--layers", 2,
              "--hp", "max_local_steps=2", "--out", out)
    assert res.exit_code == 0, res.output
    line = "rocauc undefined on valid: only one class (all 0) for task 0"
    assert [x for x in lines(res.output) if x.startswith("warning:")] == [f"warning: {line}"]
    assert "reported: the global model of round 1 (best-valid; fell back to the last round: no evaluated round has " \
           "a defined pooled validation rocauc (undefined in all 2 evaluated rounds))" in " ".join(res.output.split())
    s = strict((out / "summary.json").read_text())
    assert s["valid"] == {"1.0": None} and isinstance(s["test"]["1.0"], float)
    assert s["warnings"] == [line]
    assert [p["valid"] for p in s["per_partner"]] == [None, None]
    assert s["selected_round"] == 1 and s["selection"] == (
        "best-valid: the evaluated round with the highest pooled validation rocauc, averaged over the served widths "
        "(ties: the earlier round); fell back to the last round: no evaluated round has a defined pooled validation "
        "rocauc (undefined in all 2 evaluated rounds)")
    strict((out / "config.json").read_text())
    sent = [strict(x) for x in (out / "sent.jsonl").read_text().splitlines()]
    assert sent and all(r["kind"] == "update" for r in sent)
    # readers take null as NaN
    from fedmol.jsonio import read_summary
    back = read_summary(out / "summary.json")
    assert np.isnan(back["valid"]["1.0"]) and all(np.isnan(p["valid"]) for p in back["per_partner"])


def test_split_make_and_show_warn_per_partner(one_class_csv, tmp_path):
    out = tmp_path / "split.json"
    expected = [f"warning: partner {k}: validation set has one class (all 0) for task 0: ROC-AUC undefined there"
                for k in range(3)]
    made = run("split", "make", "--csv", one_class_csv, *CSV_ARGS, "--partners", 3, "--alpha", 1, "--out", out)
    assert made.exit_code == 0, made.output
    assert [x for x in lines(made.output) if x.startswith("warning:")] == expected
    before = out.read_bytes()
    shown = run("split", "show", out, "--csv", one_class_csv)
    assert shown.exit_code == 0, shown.output
    assert [x for x in lines(shown.output) if x.startswith("warning:")] == expected
    as_json = run("split", "show", out, "--csv", one_class_csv, "--json")
    assert strict(as_json.stdout)["warnings"] == [w[len("warning: "):] for w in expected]
    # without the data the split is still shown, with a note that the classes were not checked
    bare = run("split", "show", out)
    assert bare.exit_code == 0 and not [x for x in lines(bare.output) if x.startswith("warning:")]
    assert "note: the validation and test sets were not checked for single classes: this split was made from a CSV " \
           "(oneclass.csv): pass it with --csv" in " ".join(bare.output.split())
    assert out.read_bytes() == before and run("split", "verify", out, "--csv", one_class_csv).exit_code == 0


def test_train_warns_on_a_single_class_validation_set(one_class_csv, tmp_path):
    res = run("train", "--csv", one_class_csv, *CSV_ARGS, "--epochs", 1, "--hidden", 8, "--layers", 2,
              "--out", tmp_path)
    assert res.exit_code == 0, res.output
    line = "rocauc undefined on valid: only one class (all 0) for task 0"
    assert [x for x in lines(res.output) if x.startswith("warning:")] == [f"warning: {line}"]
    s = strict((tmp_path / "summary.json").read_text())
    assert s["warnings"] == [line] and s["valid"] == {"1.0": None} and isinstance(s["test"]["1.0"], float)
