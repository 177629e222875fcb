"""Issue 19, data integrity: a bad molecule or label is counted and listed, never silently changed or
dropped; a table fedmol cannot read faithfully is refused with one line that says why."""

import gzip
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmol.cli import app
from fedmol.data.dataset import NoValidMolecule, load_dataset
from fedmol.data.featurize import InvalidSmiles, featurize_smiles, smiles_to_graph
from fedmol.errors import DataError

runner = CliRunner()
WS = "whitespace inside the SMILES (after 'CC'): RDKit would read only the part before it and take the rest as a name"


def _csv(tmp_path, text, name="mine.csv", mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def _load(p, targets, task):
    return load_dataset(csv=p, smiles_col="smiles", target_cols=targets, task=task, progress=False)


def _featurize(*args):
    res = runner.invoke(app, ["featurize", *[str(a) for a in args]])
    return res, " ".join(res.output.split())


# 1 -- whitespace inside a SMILES --------------------------------------------------------------
@pytest.mark.parametrize("smiles", ["CC (=O)O", "CC\t(=O)O", "CC\n(=O)O", "CC  C"])
def test_internal_whitespace_is_invalid_with_its_reason(smiles):
    with pytest.raises(InvalidSmiles) as e:
        smiles_to_graph(smiles)
    assert e.value.reason == WS


def test_surrounding_whitespace_and_cxsmiles_stay_valid():
    assert smiles_to_graph("  CC(=O)O\t")["num_nodes"] == 4
    assert smiles_to_graph("C[C@H](F)Cl |&1:1|")["num_nodes"] == 4
    feats = featurize_smiles(["CCO", "CC O", " CCO "], n_jobs=1, progress=False)
    assert feats.valid.tolist() == [True, False, True] and feats.reasons[1] == "whitespace inside the SMILES " \
        "(after 'CC'): RDKit would read only the part before it and take the rest as a name"
    stereo = featurize_smiles(["F/C=C\\F x"], n_jobs=1, progress=False)  # the SMILES as written, not its repr
    assert stereo.reasons[0].startswith("whitespace inside the SMILES (after 'F/C=C\\F'): ")


def test_partner_csv_with_internal_whitespace_lists_the_rows(tmp_path):
    p = _csv(tmp_path, 'smiles,y\nCC (=O)O,1\nCCO,0\n CCN\t,1\n"CC\tO",0\n"CC\nN",1\n')
    ds = _load(p, "y", "classification")
    assert (ds.report.rows, ds.report.valid, ds.report.invalid) == (5, 2, 3)
    assert ds.smiles == ["CCO", "CCN"] and ds.rows.tolist() == [1, 2]
    assert [(r["row"], r["smiles"]) for r in ds.report.invalid_rows] == [(0, "CC (=O)O"), (3, "CC\tO"), (4, "CC\nN")]
    assert {r["reason"] for r in ds.report.invalid_rows[:2]} == {WS}


# 2 -- duplicate column names -------------------------------------------------------------------
def test_duplicate_column_names_are_refused(tmp_path):
    p = _csv(tmp_path, "smiles,y,id,y,smiles\nCCO,1,a,0,CC\n")
    with pytest.raises(DataError) as e:
        _load(p, "y", "classification")
    assert str(e.value) == (f"{p}: duplicate column name(s) ['smiles', 'y'] in the header: rename them so that "
                            "every column has its own name")


def test_unnamed_columns_are_not_duplicates(tmp_path):
    p = _csv(tmp_path, "smiles,y,,\nCCO,1,,\nCC,0,,\n")
    ds = _load(p, "y", "classification")
    assert ds.report.valid == 2


def test_more_fields_than_header_names_is_refused(tmp_path):
    p = _csv(tmp_path, "smiles,y\n0,CCO,1\n1,CC,0\n")
    with pytest.raises(DataError, match=r"the data rows have more fields than the header has names \(2\)"):
        _load(p, "y", "classification")


# 3 -- non-finite labels -----------------------------------------------------------------------
def test_non_finite_regression_labels_are_invalid_rows(tmp_path):
    p = _csv(tmp_path, "smiles,y\nCCO,inf\nCCN,-inf\nCCC,1e400\nCCCC,1.5\nCO,1e39\nC,-2\nCl,nan\nOCC,Infinity\n")
    ds = _load(p, "y", "regression")
    rep = ds.report
    assert (rep.rows, rep.valid, rep.invalid, rep.invalid_labels, rep.unlabeled) == (8, 3, 5, 5, 1)
    assert ds.rows.tolist() == [3, 5, 6]
    assert np.isfinite(ds.labels[:2]).all() and np.isnan(ds.labels[2, 0])
    assert [(r["row"], r["reason"]) for r in rep.invalid_rows] == [
        (0, "label 'y' is not a finite number: 'inf'"), (1, "label 'y' is not a finite number: '-inf'"),
        (2, "label 'y' is not a finite number: '1e400'"),
        (4, "label 'y' is beyond the float32 range (3.4e38): '1e39'"),
        (7, "label 'y' is not a finite number: 'Infinity'")]


def test_bad_molecule_with_a_bad_label_gives_both_reasons(tmp_path):
    p = _csv(tmp_path, "smiles,a,b\nXx,inf,1\nCC,1,-inf\nCCO,1,2\n")
    ds = _load(p, "a,b", "regression")
    reasons = {r["row"]: r["reason"] for r in ds.report.invalid_rows}
    assert reasons[0].startswith("RDKit could not parse: ") and reasons[0].endswith(
        "; label 'a' is not a finite number: 'inf'")
    assert reasons[1] == "label 'b' is not a finite number: '-inf'"
    assert (ds.report.valid, ds.report.invalid, ds.report.invalid_labels) == (1, 2, 2)


# 4 -- no label at all -------------------------------------------------------------------------
def test_an_empty_target_column_is_refused_before_featurizing(tmp_path):
    p = _csv(tmp_path, "smiles,y,z\nCCO,,1\nCCN,,0\n")
    with pytest.raises(DataError) as e:
        _load(p, "y,z", "classification")
    assert str(e.value) == (f"{p}: target column(s) ['y'] hold no label in any row: nothing to train or evaluate "
                            "on (check --target-cols)")


def test_labels_only_on_invalid_rows_are_refused(tmp_path):
    p = _csv(tmp_path, "smiles,y\nXx,1\nCCO,\nCCN,\n")
    with pytest.raises(DataError, match=r"target column\(s\) \['y'\] hold no label on any valid molecule "
                                        r"\(only on the 1 invalid row\(s\)\)"):
        _load(p, "y", "classification")


def test_run_with_an_empty_target_column_exits_2_and_writes_nothing(tmp_path):
    p = _csv(tmp_path, "smiles,y\n" + "".join(f"{'C' * (i + 1)}O,\n" for i in range(30)))
    res = runner.invoke(app, ["run", "--csv", str(p), "--smiles-col", "smiles", "--target-cols", "y", "--task",
                              "regression", "--rounds", "1", "--partners", "2", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "hold no label in any row" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


# 10 -- clear words ----------------------------------------------------------------------------
def test_a_directory_as_csv_is_not_reported_missing(tmp_path):
    res, out = _featurize("--csv", tmp_path, "--smiles-col", "s", "--target-cols", "y", "--task", "regression")
    assert res.exit_code == 2 and out == f"error: --csv {tmp_path} is a directory, not a file: pass the CSV/TSV " \
                                         "file inside it"


@pytest.mark.parametrize("data,what", [
    (gzip.compress(b"smiles,y\nCCO,1\n", mtime=0), "is gzip-compressed, not a plain CSV table: decompress it first (gunzip)"),
    (b"PK\x03\x04rest", "is a ZIP archive (an Excel .xlsx workbook is one), not a plain CSV table: unpack it, or "
                        "export the sheet as CSV"),
    ("smiles,y\nCCO,1\n".encode("utf-16"), "is UTF-16 text, not a plain CSV table: save it as UTF-8"),
    ("smiles,y\nCCO,1\nC\u00e9,0\n".encode("latin-1"), "is not UTF-8 text (line 3: byte b'\\xe9'): save it as "
                                                       "UTF-8 (in Excel: CSV UTF-8)"),
])
def test_a_file_that_is_not_a_text_table_says_what_it_is(tmp_path, data, what):
    p = _csv(tmp_path, data, mode="wb")
    res, out = _featurize("--csv", p, "--smiles-col", "smiles", "--target-cols", "y", "--task", "regression")
    assert res.exit_code == 2 and out == f"error: {p} {what}"


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    p = _csv(tmp_path, "\ufeffsmiles,y\nCCO,1\n".encode("utf-8"), mode="wb")
    ds = _load(p, "y", "regression")
    assert ds.smiles == ["CCO"]


def test_another_delimiter_is_named(tmp_path):
    p = _csv(tmp_path, "smiles;y\nCCO;1\n")
    with pytest.raises(DataError, match=r"columns found: \['smiles;y'\] \(the file seems separated by ';'; "
                                        r"fedmol reads ',' in a .csv file\)"):
        _load(p, "y", "regression")


def test_all_invalid_rows_are_summarized_and_written_to_report(tmp_path):
    p = _csv(tmp_path, "smiles,y\nXx,1\n,0\nCC C,1\nQq,0\n")
    report = tmp_path / "bad.csv"
    res, out = _featurize("--csv", p, "--smiles-col", "smiles", "--target-cols", "y", "--task", "classification",
                          "--report", report)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert out == (f"error: {p}: no valid molecule in 4 rows (2 x RDKit could not parse, 1 x empty SMILES, "
                   f"1 x whitespace inside the SMILES); every row with its reason: {report}")
    lines = report.read_text().splitlines()
    assert lines[0] == "row,smiles,reason" and [ln.split(",")[0] for ln in lines[1:]] == ["0", "1", "2", "3"]
    with pytest.raises(NoValidMolecule) as e:
        _load(p, "y", "classification")
    assert len(e.value.invalid_rows) == 4 and e.value.listed.read_text() == report.read_text()


def test_featurize_json_counts_invalid_labels(tmp_path):
    p = _csv(tmp_path, "smiles,y\nCCO,inf\nCC,1\n")
    res = runner.invoke(app, ["featurize", "--csv", str(p), "--smiles-col", "smiles", "--target-cols", "y",
                              "--task", "regression", "--json"])
    out = json.loads(res.stdout)
    assert (out["rows"], out["valid"], out["invalid"], out["invalid_labels"]) == (2, 1, 1, 1)
