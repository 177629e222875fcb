import time

import numpy as np
import pandas as pd
import pytest
import torch

from fedmol.data.dataset import load_dataset
from fedmol.errors import DataError


def test_bbbp_counts_invalid_rows_exactly(data_dir):
    ds = load_dataset("bbbp", progress=False)
    rep = ds.report
    assert (rep.rows, rep.valid, rep.invalid) == (2050, 2039, 11) and len(ds) == 2039
    raw = pd.read_csv(data_dir / "BBBP.csv")
    bad = [r["row"] for r in rep.invalid_rows]
    assert len(bad) == 11 and all(r["reason"] for r in rep.invalid_rows)
    assert [r["smiles"] for r in rep.invalid_rows] == raw["smiles"].iloc[bad].tolist()
    assert not set(bad) & set(ds.rows.tolist())
    # the invalid-row report file is written beside the cache
    listed = pd.read_csv(f"{ds.cache_path}/invalid_rows.csv")
    assert listed["row"].tolist() == bad
    # duplicated SMILES are counted (exact text repeats among valid rows)
    valid_smiles = raw["smiles"].drop(index=bad)
    assert rep.duplicates == int(valid_smiles.duplicated().sum())


def test_items_carry_row_smiles_and_labels(data_dir):
    ds = load_dataset("tox21", progress=False)
    raw = pd.read_csv(data_dir / "tox21.csv")
    d = ds[100]
    r = int(d.row)
    assert d.smiles == raw["smiles"][r]
    expect = raw.loc[r, list(ds.info.tasks)].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(d.y.numpy()[0], expect)  # NaN where missing, equal elsewhere
    assert d.y.shape == (1, 12) and torch.isnan(ds._data.y).any()
    assert d.x.dtype == torch.long and d.x.shape[1] == 9 and d.edge_attr.shape[1] == 3
    assert d.edge_index.max() < d.num_nodes
    sub = ds.select_rows([r, int(ds[0].row)])
    assert [int(s.row) for s in sub] == [r, int(ds[0].row)]
    with pytest.raises(DataError, match="not valid molecules"):
        ds.positions([10**7])


def test_cached_reload_is_fast_and_identical():
    first = load_dataset("tox21", progress=False)
    t = time.perf_counter()
    again = load_dataset("tox21", progress=False)
    assert time.perf_counter() - t < 1.0
    assert again.cache_path == first.cache_path
    for key in ("x", "edge_index", "edge_attr", "row"):
        assert torch.equal(getattr(again._data, key), getattr(first._data, key))
    assert again.smiles == first.smiles


def test_b3db_needs_no_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDMOL_DATA_DIR", str(tmp_path))
    ds = load_dataset("b3db_classification", progress=False)
    assert ds.report.rows == 7807 and len(ds) == ds.report.valid > 7800
    assert set(np.unique(ds.labels)) == {0.0, 1.0}
    reg = load_dataset("b3db_regression", progress=False)
    assert reg.task_type == "regression" and reg.report.rows == 1058


def _csv(tmp_path, text, name="mine.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_partner_csv_counts_invalid_empty_and_duplicates(tmp_path):
    p = _csv(tmp_path, "id,smi,act,pot\n0,CCO,1,5.0\n1,,0,\n2,C1CC,1,3\n3,CCO,0,2\n4,c1ccccc1,,1.5\n5,N(C)(C)(C)(C)C,1,1\n")
    ds = load_dataset(csv=p, smiles_col="smi", target_cols="act,pot", task="regression", progress=False)
    assert (ds.report.rows, ds.report.valid, ds.report.invalid, ds.report.duplicates) == (6, 3, 3, 1)
    assert [(r["row"], r["reason"].split(":")[0]) for r in ds.report.invalid_rows][0] == (1, "empty SMILES")
    assert [r["row"] for r in ds.report.invalid_rows] == [1, 2, 5]
    assert "valence" in ds.report.invalid_rows[2]["reason"].lower()
    np.testing.assert_array_equal(ds.rows, [0, 3, 4])
    assert np.isnan(ds.labels[2, 0]) and ds.labels[2, 1] == 1.5


@pytest.mark.parametrize("text,kwargs,match", [
    ("id,smiles_x\n1,CCO\n", dict(smiles_col="smiles", target_cols="y", task="regression"),
     r"no SMILES column 'smiles'; columns found: \['id', 'smiles_x'\]"),
    ("smiles,y\nCCO,1\n", dict(smiles_col="smiles", target_cols="z", task="regression"),
     r"target column\(s\) \['z'\] not found"),
    ("smiles,y\nCCO,high\nCC,1\n", dict(smiles_col="smiles", target_cols="y", task="regression"),
     r"column 'y' has 1 value\(s\) that are not numbers \(row 0: 'high'\)"),
    ("smiles,y\nCCO,2\nCC,1\n", dict(smiles_col="smiles", target_cols="y", task="classification"),
     r"must hold 0/1 .* \(row 0: '2'\)"),
    ("smiles,y\nXx,1\n,0\n", dict(smiles_col="smiles", target_cols="y", task="classification"),
     r"no valid molecule in 2 rows"),
    ("smiles,y\n", dict(smiles_col="smiles", target_cols="y", task="classification"), r"header but no rows"),
])
def test_bad_partner_csv_is_a_clear_error(tmp_path, text, kwargs, match):
    with pytest.raises(DataError, match=match):
        load_dataset(csv=_csv(tmp_path, text), progress=False, **kwargs)


def test_csv_needs_its_columns_named(tmp_path):
    with pytest.raises(DataError, match="a CSV needs --smiles-col, --task as well"):
        load_dataset(csv=_csv(tmp_path, "smiles,y\nCCO,1\n"), target_cols="y")
    with pytest.raises(DataError, match="CSV file not found"):
        load_dataset(csv=tmp_path / "nope.csv", smiles_col="s", target_cols="y", task="regression")
