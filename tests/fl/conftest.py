"""Fixtures shared by the reference tests: a tiny BACE federation (3 partners on tiered devices)."""

import pytest

from fedmol.config import RunConfig

from fedmol.fl.harness import build_federation

TINY_BACE = dict(dataset="bace", partners=3, alpha=1.0, devices="tiered", rounds=1, hidden=16, layers=2,
                 hparams={"max_local_steps": 2})


@pytest.fixture(scope="session")
def tiny_cfg():
    return RunConfig(**TINY_BACE)


@pytest.fixture(scope="session")
def tiny_fed(tiny_cfg):
    return build_federation(tiny_cfg, progress=False)
