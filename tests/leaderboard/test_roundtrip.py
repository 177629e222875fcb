"""Submit -> verify round trip, the manifest's contents, tracks, and the verification policy."""

from __future__ import annotations

import csv
import datetime
import io
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from lb_helpers import manifest, members, repack

from fedmol.leaderboard.cli import leaderboard_app


def test_submit_verify_roundtrip_cli(good_zip, tracks_file):
    res = CliRunner().invoke(leaderboard_app, ["verify", str(good_zip), "--tracks", str(tracks_file)])
    assert res.exit_code == 0, res.output
    assert "verified" in res.output and "track tiny, ranked" in res.output
    assert "reproduced from weights at 1.0, 0.5, 0.25, 0.125" in res.output


def test_manifest_has_every_field(good_zip):
    from fedmol.config import RunConfig
    from fedmol.leaderboard.schema import Manifest, RunEntry, RunSettings

    files = members(good_zip)
    m = manifest(files)
    assert set(m) == set(Manifest.model_fields)
    assert m["schema_version"] == "fedmol-submission/1"
    assert m["status"] == "ranked" and m["track"] == "tiny" and m["unranked_reasons"] == []
    assert m["algorithm"] == "fjord" and m["dataset"] == "b3db_classification" and m["metric"] == "rocauc"
    assert m["seeds"] == [0, 1, 2]
    packed = datetime.date.fromisoformat(m["created"])  # the day it was packed, UTC
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", m["created"])
    assert 0 <= (datetime.datetime.now(datetime.timezone.utc).date() - packed).days <= 1
    prov = m["provenance"]
    assert prov["fedmol"] and prov["commit"] and prov["rdkit"] and prov["featurizer"]
    assert m["splits"] == [{"path": "b3db_classification/K4-a0.1-s0.json", "sha256": m["runs"][0]["config"]["split"]["sha256"]}]
    assert m["hparams"]["max_local_steps"] == 2
    for i, r in enumerate(m["runs"]):
        assert set(r) == set(RunEntry.model_fields)
        assert r["id"] == f"{i:02d}" and r["seed"] == i and r["config"]["run"]["seed"] == i
        assert set(r["test"]) == {"1.0", "0.5", "0.25", "0.125"}
        assert len(r["rounds"]) == 1 and r["rounds"][0]["bytes_up"] > 0
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0 and r["failures"] == 0
    # the schema reads the run configuration (declared once) and every run's config.json validates
    assert issubclass(RunSettings, RunConfig) and set(RunSettings.model_fields) == set(RunConfig.model_fields)
    assert all(RunSettings.model_validate(r["config"]["run"]).seed == i for i, r in enumerate(m["runs"]))
    assert sorted(files) == ["manifest.json"] + [f"runs/{i:02d}/{n}" for i in range(3)
                                                 for n in ("model.safetensors", "test_predictions.csv")]


def test_weights_are_safetensors_and_predictions_rescore(good_zip):
    from safetensors.torch import load

    from fedmol import Evaluator, load_dataset
    from fedmol.data.splits import read_split
    from fedmol.leaderboard.submission import default_splits_dir

    files = members(good_zip)
    m = manifest(files)
    split = read_split(default_splits_dir() / m["splits"][0]["path"])
    test = load_dataset("b3db_classification", progress=False).select_rows(split["test"])
    ev = Evaluator("b3db_classification")
    for r in m["runs"]:
        tensors = load(files[r["weights"]["path"]])  # safetensors parses it: not a pickle
        assert "head.weight" in tensors
        rows = list(csv.DictReader(io.StringIO(files[r["predictions"]["path"]].decode())))
        for w, claimed in r["test"].items():
            by_row = {int(x["row"]): float(x["logit:BBB+/BBB-"]) for x in rows if x["width"] == w}
            pred = np.array([[by_row[int(row)]] for row in test.rows])
            assert ev.eval({"y_true": test.labels, "y_pred": pred})["rocauc"] == pytest.approx(claimed, abs=1e-12)


def test_rerun_reproduces(good_zip, tracks_file):
    from fedmol.leaderboard import verify

    rep = verify(good_zip, rerun=1, rerun_seed=0, tracks_file=tracks_file)
    reran = [r for r in rep.runs if r.rerun]
    assert len(reran) == 1 and reran[0].rerun["tolerance"] == 1e-6
    assert any("rerun" in c for c in rep.checks)


def test_cli_submit_dates_the_archive(tiny_runs, tracks_file, tmp_path):
    out = tmp_path / "dated.zip"
    res = CliRunner().invoke(leaderboard_app, ["submit", *map(str, tiny_runs), "--name", "dated", "--out", str(out),
                                               "--tracks", str(tracks_file)])
    assert res.exit_code == 0, res.output
    created = manifest(members(out))["created"]
    assert f"track tiny, ranked, dated {created} (UTC)" in res.stdout


def test_archive_without_a_date_still_verifies(good_zip, tracks_file, tmp_path):
    """``created`` was added to fedmol-submission/1 later: an archive made before it verifies as before."""
    from fedmol.leaderboard import verify

    old = repack(good_zip, tmp_path / "undated.zip", edit_manifest=lambda m: m.pop("created"))
    rep = verify(old, tracks_file=tracks_file)
    assert rep.status == "ranked" and rep.manifest["created"] is None


def test_unranked_submission_verifies(unranked_zip):
    res = CliRunner().invoke(leaderboard_app, ["verify", str(unranked_zip), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["status"] == "unranked"
    assert any("seeds [0, 1] on b3db_classification/K4-a0.1-s0.json are not the track's [0, 1, 2]" in r
               for r in rep["unranked_reasons"])


def test_repository_tracks():
    from fedmol.leaderboard import load_tracks
    from fedmol.leaderboard.submission import default_splits_dir

    tracks = load_tracks()
    quick = tracks["quick"]
    assert quick.splits == ["b3db_classification/K4-a0.1-s0.json"]
    assert quick.devices == "tiered" and quick.seeds == [0, 1, 2] and quick.std_ddof == 1
    for t in tracks.values():
        for s in t.splits:
            assert (default_splits_dir() / s).is_file()


def test_track_seeds_must_start_at_zero(tmp_path):
    from fedmol.errors import FedmolError
    from fedmol.leaderboard import load_tracks

    p = tmp_path / "t.toml"
    p.write_text('schema_version = "fedmol-tracks/1"\n[tracks.x]\ntitle="x"\ndescription="x"\ndataset="bace"\n'
                 'splits=["bace/K4-a1-s0.json"]\ndevices="tiered"\nrounds=1\nseeds=[1, 2, 3]\nstd_ddof=1\n'
                 'rank_width=1.0\nrun={}\nhparams={}\n')
    with pytest.raises(FedmolError, match="seeds must be 0, 1, ..., n-1"):
        load_tracks(p)


def test_weight_width_policy_follows_the_code():
    """Which widths the saved state reproduces: every served width for algorithms that evaluate the
    global model itself; only the model's own width where eval_model is overridden (HeteroFL's
    per-width static BN, FedDF's per-group students)."""
    from fedmol.fl.registry import ALGORITHMS, get_algorithm
    from fedmol.leaderboard.verification import weight_widths

    widths = [1.0, 0.5, 0.25, 0.125]
    got = {name: weight_widths(get_algorithm(name), widths, 1.0) for name in ALGORITHMS}
    assert got["heterofl"] == [1.0] and got["feddf"] == [1.0]
    for name in ("fjord", "fedgen", "fedrescue", "fedavg"):
        assert got[name] == widths
