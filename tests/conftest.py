"""Shared test setup: real data from the shared MoleculeNet folder, a private cache per session."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Small molecular graphs gain nothing from intra-op threads, and on a loaded 2-core machine extra
# threads oversubscribe the cores: tests run single-threaded.
torch.set_num_threads(1)

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
