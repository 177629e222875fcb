"""Shared test setup: real data from the shared MoleculeNet folder, a private cache per session."""

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDMOL_DATA_DIR", str(REPO.parent / "shared" / "datasets" / "moleculenet"))
if "FEDMOL_CACHE_DIR" not in os.environ:
    os.environ["FEDMOL_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedmol-test-cache-")
DATA_DIR = Path(os.environ["FEDMOL_DATA_DIR"])


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA_DIR / "BBBP.csv").is_file(), (
        f"the MoleculeNet CSVs are not in {DATA_DIR}: set FEDMOL_DATA_DIR to the shared datasets folder")
    return DATA_DIR
