"""The run configuration is declared once (fedmol.config) and read the same way by the CLI, the
harness, the pilots and the leaderboard."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmol.cli import app
from fedmol.config import FederationConfig, RunConfig
from fedmol.errors import FedmolError
from fedmol.leaderboard.schema import RunSettings
from fedmol.pilot.config import PilotSettings, run_config_defaults
from fedmol.pilot.demo import settings_for


def test_defaults_and_one_line_errors():
    cfg = RunConfig()
    assert (cfg.algorithm, cfg.partners, cfg.rounds, cfg.select, cfg.heads) == ("fedavg", 8, 20, "best-valid", "shared")
    with pytest.raises(FedmolError, match=r"^run setting rounds must be an integer in \[1, 100000\], got 0$"):
        RunConfig.checked({"rounds": 0})
    with pytest.raises(FedmolError, match=r"^unknown run setting colour; known: algorithm, split, "):
        RunConfig.checked({"colour": "red"})
    with pytest.raises(FedmolError, match=r"^run setting alpha must be a number > 0 or null, got nan$"):
        RunConfig.checked({"alpha": float("nan")})
    assert cfg.replace(rounds=3).rounds == 3 and cfg.rounds == 20
    with pytest.raises(FedmolError, match="dropout must be a number in"):
        cfg.replace(dropout=1.0)


def test_the_cli_takes_defaults_and_help_from_the_config():
    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "250"}).output
    text = " ".join(out.split())
    for name in ("rounds", "patience", "select", "heads"):
        assert " ".join(RunConfig.model_fields[name].description.split()) in text
    res = CliRunner().invoke(app, ["run", "--rounds", "0", "--out", "x"])
    assert res.exit_code == 2 and res.output.strip() == "error: --rounds must be an integer in [1, 100000], got 0"


def test_a_pilot_carries_every_shared_setting_and_no_other(tmp_path):
    cfg = RunConfig(rounds=7, patience=2, select="last", hidden=16, hparams={"lr": 0.01}, alpha=0.1, heads="private")
    s = settings_for(cfg, Path("s.json"), tmp_path, 3, 10.0, 5.0, 1, False)
    assert {k: getattr(s, k) for k in ("rounds", "patience", "select", "hidden", "hparams", "partners", "heads")} == \
        dict(rounds=7, patience=2, select="last", hidden=16, hparams={"lr": 0.01}, partners=3, heads="private")
    keys = run_config_defaults()
    shared = {k.replace("_", "-") for k in FederationConfig.model_fields}
    assert shared <= set(keys) and not {"dataset", "alpha", "quantity-skew", "csv"} & set(keys)
    assert keys["heads"] == "shared"  # private heads run over pilots too (fedmol.pilot.heads)
    assert keys["split"] == "" and keys["clients-per-round"] == 0 and keys["patience"] == 0  # TOML has no null
    back = PilotSettings.from_run_config(s.to_run_config())
    assert back == s and back.clients_per_round is None and back.test_csv is None
    with pytest.raises(FedmolError, match="unknown pilot run-config key.*'alpha'"):
        PilotSettings.from_run_config({**s.to_run_config(), "alpha": 1.0})


def test_the_leaderboard_reads_a_run_strictly():
    run = json.loads(json.dumps(RunConfig(split="data_splits/bbbp/K4-a1-s0.json").model_dump()))
    assert RunSettings.model_validate(run).split == "data_splits/bbbp/K4-a1-s0.json"
    old = {k: v for k, v in run.items() if k not in ("select", "patience", "heads")}  # an archive made before them
    assert RunSettings.model_validate(old).select == "last"
    for bad, where in [({"rounds": "20"}, "rounds"), ({"csv": "mine.csv"}, "csv"), ({"heads": "private"}, "heads"),
                       ({"seed": 2**31}, "seed"), ({"hidden": 10**7}, "hidden")]:
        with pytest.raises(Exception, match=where):
            RunSettings.model_validate({**run, **bad})
    with pytest.raises(Exception, match="missing setting.*rounds"):
        RunSettings.model_validate({k: v for k, v in run.items() if k != "rounds"})
