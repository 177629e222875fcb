"""Shared fixtures: one tiny real submission (3 runs of FjORD on the quick track's frozen split).

The runs are tiny (hidden 16, 2 layers, 1 round, 2 local steps), so against the repository's
``quick`` track they are unranked; a test tracks file adds a ``tiny`` track they qualify for, so
the same runs also give a ranked submission.
"""

from __future__ import annotations


from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
SPLIT = "b3db_classification/K4-a0.1-s0.json"
ALGORITHM = "fjord"  # keeps per-width BN statistics: every width is reproduced from the weights

TINY_TRACK = f"""
[tracks.tiny]
title = "Tiny (tests)"
description = "The test suite's tiny setting on the quick split."
dataset = "b3db_classification"
splits = ["{SPLIT}"]
devices = "tiered"
rounds = 1
seeds = [0, 1, 2]
std_ddof = 1
rank_width = 1.0
[tracks.tiny.run]
model = "gin"
hidden = 16
layers = 2
[tracks.tiny.hparams]
max_local_steps = 2
"""


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> list[Path]:
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed in (0, 1, 2):
        cfg = RunConfig(algorithm=ALGORITHM, split=str(REPO / "data_splits" / SPLIT), devices="tiered", rounds=1,
                        seed=seed, hidden=16, layers=2, hparams=dict(max_local_steps=2))
        d = root / f"seed{seed}"
        run_federated(cfg, d, progress=False)
        dirs.append(d)
    return dirs


@pytest.fixture(scope="session")
def tracks_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("tracks") / "tracks.toml"
    p.write_text((REPO / "leaderboard" / "tracks.toml").read_text() + TINY_TRACK)
    return p


@pytest.fixture(scope="session")
def good_zip(tiny_runs, tracks_file, tmp_path_factory) -> Path:
    from fedmol.leaderboard import submit

    out = tmp_path_factory.mktemp("subs") / "tiny-fjord.zip"
    m = submit(tiny_runs, name="tiny fjord", out=out, tracks_file=tracks_file)
    assert m["status"] == "ranked" and m["track"] == "tiny", m["unranked_reasons"]
    return out


@pytest.fixture(scope="session")
def unranked_zip(tiny_runs, tmp_path_factory) -> Path:
    """The same runs against the repository's tracks only: unranked (they fit no track)."""
    from fedmol.leaderboard import submit

    out = tmp_path_factory.mktemp("subs-unranked") / "tiny-unranked.zip"
    m = submit(tiny_runs[:2], name="tiny two seeds", out=out)
    assert m["status"] == "unranked"
    return out




def ranked_zip(algorithm: str, name: str, tracks_file: Path, tmp_path_factory, **hparams) -> Path:
    """A ranked submission on the tiny track: ``algorithm`` run on every seed of the track."""
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated
    from fedmol.leaderboard import submit

    root = tmp_path_factory.mktemp(f"runs-{algorithm}")
    dirs = []
    for seed in (0, 1, 2):
        cfg = RunConfig(algorithm=algorithm, split=str(REPO / "data_splits" / SPLIT), devices="tiered", rounds=1,
                        seed=seed, hidden=16, layers=2, hparams=dict(max_local_steps=2, **hparams))
        run_federated(cfg, root / f"seed{seed}", progress=False)
        dirs.append(root / f"seed{seed}")
    out = tmp_path_factory.mktemp(f"subs-{algorithm}") / f"tiny-{algorithm}.zip"
    m = submit(dirs, name=name, out=out, tracks_file=tracks_file)
    assert m["status"] == "ranked" and m["track"] == "tiny", m["unranked_reasons"]
    return out


@pytest.fixture(scope="session")
def fedavg_zip(tracks_file, tmp_path_factory) -> Path:
    """A second ranked submission on the tiny track (FedAvg: it serves width 1.0 only)."""
    return ranked_zip("fedavg", "tiny fedavg", tracks_file, tmp_path_factory)


@pytest.fixture(scope="session")
def trees_zip(tracks_file, tmp_path_factory) -> Path:
    """A ranked submission of federated boosted trees (gbt-bagging) on the tiny track."""
    return ranked_zip("gbt-bagging", "tiny trees", tracks_file, tmp_path_factory, trees_per_round=3)
