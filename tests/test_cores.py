"""Free cores: what ``fedmol bench --workers auto`` and featurization's default pool size read."""

import os

import pytest

from fedmol import cores
from fedmol.data import featurize


def test_free_cores_are_this_process_cores_minus_the_load(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 1.0, 1.0))
    assert cores.free_cores() == (4, 1, 2.6)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 1.0, 1.0))
    assert cores.free_cores() == (4, 4, 0.4)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 1.0, 1.0))
    assert cores.free_cores() == (4, 1, 9.0)  # never fewer than one


@pytest.mark.parametrize("free,pooled", [(1, False), (2, True)])
def test_featurization_pools_only_over_free_cores(monkeypatch, free, pooled):
    """``n_jobs=None``: a pool of the free cores, none when only one is free (same arrays either way)."""
    started = []
    real = featurize._pool_context

    def spy():
        started.append(True)
        return real()

    monkeypatch.setattr(cores, "free_cores", lambda: (2, free, 2.0 - free))
    monkeypatch.setattr(featurize, "_pool_context", spy)
    smiles = ["CCO", "c1ccccc1O", "CC(=O)N", "not a molecule"] * 400  # above the pool's minimum size
    got = featurize.featurize_smiles(smiles, progress=False)
    assert bool(started) == pooled
    ref = featurize.featurize_smiles(smiles, n_jobs=1, progress=False)
    assert (got.x == ref.x).all() and (got.valid == ref.valid).all()
