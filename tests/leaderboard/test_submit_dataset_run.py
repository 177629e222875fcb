"""`fedmol leaderboard submit` of a run made with --dataset: refused in plain words, nothing packed."""

from __future__ import annotations


from typer.testing import CliRunner

from fedmol.config import RunConfig

from fedmol.fl.harness import run_federated
from fedmol.leaderboard.cli import leaderboard_app


def test_submit_refuses_a_run_made_with_dataset(tmp_path):
    run = tmp_path / "run"
    cfg = RunConfig(algorithm="fedavg", dataset="bace", partners=4, alpha=1.0, rounds=1, hidden=8, layers=1,
                    hparams=dict(max_local_steps=1))
    run_federated(cfg, run, progress=False)
    out = tmp_path / "sub.zip"
    res = CliRunner().invoke(leaderboard_app, ["submit", str(run), "--name", "x", "--out", str(out)])
    assert res.exit_code == 2
    assert res.output == (f"error: run {run} was made with --dataset bace (a split made on the fly); leaderboard "
                          "tracks need a frozen split: rerun with --split data_splits/bace/K4-a1-s0.json\n")
    assert "Traceback" not in res.output and not out.exists()
    # no frozen split with these settings: the dataset's folder is named, and why no file fits
    cfg3 = cfg.replace(partners=3)
    run3 = tmp_path / "run3"
    run_federated(cfg3, run3, progress=False)
    res = CliRunner().invoke(leaderboard_app, ["submit", str(run3), "--name", "x", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.output == (f"error: run {run3} was made with --dataset bace (a split made on the fly); leaderboard "
                          "tracks need a frozen split: rerun with --split data_splits/bace/<file>.json (none there "
                          "has 3 partners, alpha 1.0 and quantity skew 0.0)\n")
