"""Tests for fedmol.data.scaffold: Murcko scaffolds and scaffold fingerprints."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, RDLogger

from fedmol.data.scaffold import murcko_scaffolds, scaffold_fingerprints

RDLogger.DisableLog("rdApp.*")

DATA_DIR = Path(os.environ["FEDMOL_DATA_DIR"])  # its default: tests/conftest.py


@functools.lru_cache(maxsize=None)
def _bbbp_smiles() -> tuple[str, ...]:
    path = DATA_DIR / "BBBP.csv"
    if not path.exists():
        pytest.fail(f"{path} not found: set FEDMOL_DATA_DIR to the shared MoleculeNet folder", pytrace=False)
    import pandas as pd

    smiles = pd.read_csv(path)["smiles"].astype(str)
    return tuple(s for s in smiles if Chem.MolFromSmiles(s) is not None)


@pytest.mark.parametrize(
    ("smiles", "scaffold"),
    [
        ("Cc1ccccc1", "c1ccccc1"),  # toluene -> benzene
        ("CCO", ""),  # ethanol: acyclic
        ("CC(C)(C)O", ""),
        ("[Na+].[Cl-]", ""),
        ("O=C(O)c1ccc2ccccc2c1", "c1ccc2ccccc2c1"),  # side chain stripped, fused rings kept
        ("c1ccccc1Cc1ccncc1", "c1ccc(Cc2ccncc2)cc1"),  # linker between rings kept
        ("C1CC1C(=O)NC1CCCCC1", "O=C(NC1CCCCC1)C1CC1"),  # exocyclic =O on the linker kept
        ("C[C@H](N)c1ccccc1", "c1ccccc1"),
        ("c1ccc(cc1)[C@@H]1CCCN1", "c1ccc(C2CCCN2)cc1"),  # stereo dropped
        ("c1ccc(cc1)[C@H]1CCCN1", "c1ccc(C2CCCN2)cc1"),
    ],
)
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_known_scaffolds(smiles: str, scaffold: str, n_jobs: int) -> None:
    assert murcko_scaffolds([smiles], n_jobs=n_jobs) == [scaffold]


def test_empty_input() -> None:
    assert murcko_scaffolds([]) == []
    assert scaffold_fingerprints([]).shape == (0, 1024)


@functools.lru_cache(maxsize=None)
def _bbbp_serial() -> tuple[str, ...]:
    return tuple(murcko_scaffolds(list(_bbbp_smiles()), n_jobs=1))


def test_bbbp_scaffolds_are_plausible() -> None:
    serial = list(_bbbp_serial())
    assert len(serial) == len(_bbbp_smiles())
    # A real mix: many distinct scaffolds, some acyclic molecules, benzene the commonest.
    assert 500 < len(set(serial)) < len(serial)
    assert "" in serial
    assert max(set(serial), key=serial.count) == "c1ccccc1"


@pytest.mark.parametrize("n_jobs", [2, None])
@pytest.mark.parametrize("chunk_size", [97, 1000])
def test_parallel_equals_serial_on_bbbp(n_jobs: int | None, chunk_size: int) -> None:
    parallel = murcko_scaffolds(list(_bbbp_smiles()), n_jobs=n_jobs, chunk_size=chunk_size)
    assert parallel == list(_bbbp_serial())  # same values, same order


@pytest.mark.parametrize("n_jobs", [-1, 0, 3])
def test_parallel_any_job_count(n_jobs: int) -> None:
    smiles = list(_bbbp_smiles())[:400]
    assert murcko_scaffolds(smiles, n_jobs=n_jobs, chunk_size=50) == list(_bbbp_serial())[:400]


def test_progress_bar_does_not_change_result() -> None:
    smiles = list(_bbbp_smiles())[:300]
    assert murcko_scaffolds(smiles, n_jobs=2, progress=True, chunk_size=100) == murcko_scaffolds(
        smiles, n_jobs=1
    )


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("bad_index", [0, 7, 149])
def test_invalid_smiles_names_index(n_jobs: int, bad_index: int) -> None:
    smiles = ["c1ccccc1O"] * 150
    smiles[bad_index] = "C1CC(not a smiles"
    with pytest.raises(ValueError, match=rf"index {bad_index}\b"):
        murcko_scaffolds(smiles, n_jobs=n_jobs, chunk_size=20)


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        murcko_scaffolds(["CCO"], chunk_size=0)


@pytest.mark.parametrize("n_bits", [64, 1024, 2048])
def test_fingerprints_shape_and_values(n_bits: int) -> None:
    scaffolds = ["c1ccccc1", "", "c1ccncc1", "c1ccccc1", "c1ccc2ccccc2c1"]
    fps = scaffold_fingerprints(scaffolds, n_bits=n_bits)
    assert fps.shape == (5, n_bits)
    assert fps.dtype == np.uint8
    assert set(np.unique(fps)) <= {0, 1}
    assert fps[1].sum() == 0  # acyclic: all zeros
    assert (fps[0] == fps[3]).all()  # same scaffold, same row
    assert fps[0].sum() > 0 and fps[2].sum() > 0
    assert not (fps[0] == fps[2]).all()  # benzene vs pyridine


def test_fingerprint_matches_rdkit_morgan() -> None:
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    expected = gen.GetFingerprintAsNumPy(Chem.MolFromSmiles("c1ccc(Cc2ccncc2)cc1")) != 0
    got = scaffold_fingerprints(["c1ccc(Cc2ccncc2)cc1"])[0]
    assert (got == expected).all()


def test_unsanitizable_scaffold_still_gets_a_fingerprint() -> None:
    # A valid HIV molecule whose Murcko scaffold cannot be sanitized on its own.
    (scaffold,) = murcko_scaffolds(["COc1cc[c-](C)[n+](=O)n1"], n_jobs=1)
    assert scaffold and Chem.MolFromSmiles(scaffold) is None
    fp = scaffold_fingerprints([scaffold])[0]
    assert fp.sum() > 5


def test_fingerprint_size_validated() -> None:
    with pytest.raises(ValueError, match="n_bits"):
        scaffold_fingerprints(["c1ccccc1"], n_bits=0)
