"""Federated boosted trees on the leaderboard (issue 23, item 4): a submission verifies, its shipped
tree ensemble reproduces its predictions, and a tampered ensemble is refused before it is used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save
from typer.testing import CliRunner

from lb_helpers import repack

from fedmol.leaderboard.cli import leaderboard_app


def _verify(path: Path, tracks_file: Path, *extra: str):
    return CliRunner().invoke(leaderboard_app, ["verify", str(path), "--tracks", str(tracks_file), *extra])


def test_a_tree_submission_verifies_and_reproduces_from_its_trees(trees_zip, tracks_file):
    res = _verify(trees_zip, tracks_file, "--rerun", "1")
    assert res.exit_code == 0, res.output
    assert "weights reproduce the predictions (abs tol 1e-05) at widths 1.0" in res.stdout
    assert "rerun of seed(s) [" in res.stdout and "rerun reproduces" in res.stdout


def _edit_trees(edit):
    def change(files: dict[str, bytes]) -> None:
        trees = load(files["runs/00/model.safetensors"])
        edit(trees)
        files["runs/00/model.safetensors"] = save(trees)
    return change


@pytest.mark.parametrize("edit,reason", [
    (lambda t: t["left"].__setitem__((0, 0), 0),
     "does not load into the declared backbone: tree ensemble: left children must be later internal nodes"),
    (lambda t: t["feature"].__setitem__((0, 0), 99999), "tree ensemble: feature must be in [0, 2047]"),
    (lambda t: t.update(extra=torch.zeros(1)), "tensor 'extra' is not part of the declared model"),
    (lambda t: t.update(threshold=t["threshold"].float()), "tensor 'threshold' has dtype torch.float32"),
])
def test_a_tampered_ensemble_is_refused(trees_zip, tracks_file, tmp_path, edit, reason):
    bad = repack(trees_zip, tmp_path / "bad.zip", edit_files=_edit_trees(edit))
    res = _verify(bad, tracks_file)
    assert res.exit_code == 1 and res.stderr.startswith("rejected: ") and reason in res.stderr, res.output
