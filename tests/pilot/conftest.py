"""Fixtures for the pilot tests: a frozen split of the tiny bace federation, its SMILES."""

import pytest

from pilot_common import TINY


@pytest.fixture(scope="session")
def bace_split(tmp_path_factory, data_dir):
    """The split ``fedmol run`` makes for the tiny config, frozen as a file."""
    from fedmol.data.dataset import load_dataset
    from fedmol.data.splits import make_split, write_split

    ds = load_dataset("bace", progress=False)
    path = tmp_path_factory.mktemp("split") / "split.json"
    write_split(make_split(ds, TINY["partners"], TINY["alpha"], TINY["seed"], 0.0, progress=False), path)
    return path


@pytest.fixture(scope="session")
def bace_smiles(data_dir):
    from fedmol.data.dataset import load_dataset

    return [s for s in load_dataset("bace", progress=False).smiles if len(s) >= 8]
