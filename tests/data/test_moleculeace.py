"""MoleculeACE's targets as one multi-assay table, read from the wheel (fedmol.data.moleculeace).

A small wheel-shaped fixture always runs; the real 3.0.0 wheel is checked when it is found offline
(``--data-dir``/``FEDMOL_DATA_DIR``/the cache: tests never download it)."""

import dataclasses
import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from fedmol.data.dataset import read_table
from fedmol.data.moleculeace import table_text
from fedmol.data.registry import get_info
from fedmol.data.sources import availability, resolve_file
from fedmol.errors import DataError

DIR = "MoleculeACE/Data/benchmark_data/"


def wheel(path, files: dict[str, str], extra: dict[str, str] | None = None):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(DIR + name, text)
        for name, text in (extra or {}).items():
            z.writestr(name, text)
    return path


A = "smiles,exp_mean [nM],y,cliff_mol,split\nCCO,1000.0,-3.0,0,train\nc1ccccc1O,10.0,-1.0,1,test\n"
B = "smiles,exp_mean [nM],y,cliff_mol,split\nc1ccccc1O,100.0,-2.0,0,train\nCCN,1.0,0.0,0,train\n"


def test_the_wide_table_merges_molecules_and_converts_to_molar_pk(tmp_path):
    path = wheel(tmp_path / "m.whl", {"CHEMBL1_Ki.csv": A, "CHEMBL2_EC50.csv": B},
                 extra={"MoleculeACE/__init__.py": "", "MoleculeACE/Data/other/CHEMBL9_Ki.csv": A})
    df = pd.read_csv(io.StringIO(table_text(path)))
    assert list(df.columns) == ["smiles", "CHEMBL1_Ki", "CHEMBL2_EC50"]  # only benchmark_data members are read
    assert df["smiles"].tolist() == ["CCO", "c1ccccc1O", "CCN"]  # first appearance, one row per molecule
    # pK = 9 + y = -log10(molar): 1000 nM -> 6, 10 nM -> 8, 100 nM -> 7, 1 nM -> 9
    assert np.allclose(df["CHEMBL1_Ki"].to_numpy(), [6.0, 8.0, np.nan], equal_nan=True)
    assert np.allclose(df["CHEMBL2_EC50"].to_numpy(), [np.nan, 7.0, 9.0], equal_nan=True)


def test_through_the_dataset_reader_with_a_registry_like_row(tmp_path):
    path = wheel(tmp_path / "MoleculeACE-test.whl", {"CHEMBL1_Ki.csv": A, "CHEMBL2_EC50.csv": B})
    info = dataclasses.replace(get_info("moleculeace"), file=path.name, sha256=None, rows=3,
                               tasks=("CHEMBL1_Ki", "CHEMBL2_EC50"))
    smiles, y = read_table(info, path)
    assert smiles == ["CCO", "c1ccccc1O", "CCN"]
    assert y.dtype == np.float32 and np.isnan(y).sum() == 2 and y[1].tolist() == [8.0, 7.0]


@pytest.mark.parametrize("files, message", [
    ({}, "holds no MoleculeACE target file"),
    ({"CHEMBL1_Ki.csv": "smiles,value\nCCO,1\n"}, r"CHEMBL1_Ki.csv has no column\(s\) \['y'\]"),
    ({"CHEMBL1_Ki.csv": A + "CCO,5.0,-0.7,0,train\n"}, "target CHEMBL1_Ki lists 'CCO' twice"),
    ({"CHEMBL1_Ki.csv": A + "CCC,5.0,abc,0,train\n"}, "target CHEMBL1_Ki has a label that is not a number"),
])
def test_a_wrong_archive_says_what_is_wrong(tmp_path, files, message):
    with pytest.raises(DataError, match=message):
        table_text(wheel(tmp_path / "m.whl", files))


def test_a_missing_target_and_a_file_that_is_not_a_zip(tmp_path):
    path = wheel(tmp_path / "m.whl", {"CHEMBL1_Ki.csv": A})
    with pytest.raises(DataError, match=r"target file\(s\) \['CHEMBL2_EC50'\] not in the archive"):
        table_text(path, ("CHEMBL1_Ki", "CHEMBL2_EC50"))
    bad = tmp_path / "x.whl"
    bad.write_text("not a zip")
    with pytest.raises(DataError, match="is not a readable wheel"):
        table_text(bad)


def test_registry_row_pins_the_pypi_wheel():
    info = get_info("moleculeace")
    assert info.file == "MoleculeACE-3.0.0-py3-none-any.whl" and info.url.endswith("/" + info.file)
    assert info.url.startswith("https://files.pythonhosted.org/") and len(info.sha256) == 64
    assert len(info.tasks) == 30 and len(set(info.tasks)) == 30 and info.task_type == "regression"
    assert info.metric == "rmse"


def test_the_real_wheel_when_it_is_here(data_dir):
    info = get_info("moleculeace")
    if availability(info, data_dir) is None:
        pytest.skip("the MoleculeACE 3.0.0 wheel is not in the data folder or the cache (tests never download)")
    path, _ = resolve_file(info, data_dir, allow_download=False)
    smiles, y = read_table(info, path)
    assert len(smiles) == info.rows == 35633 and int((~np.isnan(y)).sum()) == 48714
    assert 2.0 < float(np.nanmin(y)) and float(np.nanmax(y)) < 12.0  # pK in molar units
