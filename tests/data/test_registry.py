import csv

import pandas as pd
import pytest

from fedmol.data.registry import DATASETS, DEFAULT_DATASET, csv_info, get_info
from fedmol.data.sources import resolve_file, sha256_file
from fedmol.errors import DataError

MOLECULENET = [n for n, i in DATASETS.items() if i.package is None and not i.file.endswith(".whl")]


def test_registry_covers_every_shared_file(data_dir):
    sums = dict(reversed(line.split()) for line in (data_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    registered = {DATASETS[n].file: DATASETS[n].sha256 for n in MOLECULENET}
    assert registered == sums


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "moleculeace"])  # moleculeace: tests/data/test_moleculeace.py
def test_row_columns_and_checksum(name, data_dir):
    info = DATASETS[name]
    path, sha = resolve_file(info, data_dir)
    assert sha == info.sha256 == sha256_file(path)
    df = pd.read_csv(path, sep=info.sep, dtype=str, keep_default_na=False)
    assert len(df) == info.rows
    assert info.smiles_col in df.columns
    assert set(info.tasks) <= set(df.columns)
    assert info.metric == {"classification": "rocauc", "regression": "rmse"}[info.task_type]
    if info.url:
        assert info.url.startswith("https://") and info.url.rsplit("/", 1)[1].startswith(info.file)


def test_b3db_is_the_offline_default():
    info = get_info(DEFAULT_DATASET)
    assert info.package == "B3DB" and info.url is None


def test_lookup_is_case_insensitive_and_unknown_lists_known():
    assert get_info("BBBP") is DATASETS["bbbp"]
    with pytest.raises(DataError, match="unknown dataset 'nope'.*bbbp.*tox21.*b3db_regression"):
        get_info("nope")


def test_csv_info(tmp_path):
    p = tmp_path / "mine.csv"
    with open(p, "w", newline="") as f:
        csv.writer(f).writerows([["smi", "a", "b"], ["CCO", 1, 0]])
    info = csv_info(p, "smi", "a, b", "classification")
    assert info.name == "csv:mine" and info.tasks == ("a", "b") and info.metric == "rocauc" and info.is_custom
    with pytest.raises(DataError, match="--task must be one of classification, regression"):
        csv_info(p, "smi", "a", "ranking")
    with pytest.raises(DataError, match="--target-cols needs at least one column"):
        csv_info(p, "smi", " , ", "regression")
