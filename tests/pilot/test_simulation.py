"""``fedmol run --backend flower-sim``: Flower's simulation engine (Ray) gives the in-process results.

One Ray session (about 20 s to start on a 2-core machine): HeteroFL on three tiered partners
(three widths, the static-BN query round), run through the CLI, against ``run_federated`` with the
same arguments: every round's metrics, bytes and the per-partner scores equal within 1e-4.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from fedmol.cli import app
from fedmol.errors import FedmolError
from fedmol.fl.harness import run_federated
from fedmol.pilot.simulation import run_flower_sim
from pilot_common import assert_parity, tiny

ARGS = dict(algorithm="heterofl", partners=3, devices="tiered")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    cfg = tiny(**ARGS)
    torch.set_num_threads(1)
    harness = run_federated(cfg, tmp / "inprocess", progress=False)
    result = CliRunner().invoke(app, ["run", "-A", "heterofl", "-d", "bace", "-k", "3", "-a", "1", "--devices",
                                      "tiered", "-r", "2", "-s", "0", "--hidden", "16", "--layers", "2",
                                      "--hp", "max_local_steps=2", "--backend", "flower-sim",
                                      "--out", str(tmp / "sim")])
    return tmp, harness, result


def test_flower_sim_equals_in_process(both):
    tmp, harness, result = both
    assert result.exit_code == 0, result.output
    assert "Flower simulation engine" in result.output
    sim = json.loads((tmp / "sim" / "summary.json").read_text())
    sim["history"] = [json.loads(x) for x in (tmp / "sim" / "progress.jsonl").read_text().splitlines()]
    assert sim["test"].keys() == {"1.0", "0.5", "0.25"}
    assert_parity(harness, sim)
    for f in ("config.json", "metrics.csv", "model.safetensors", "test_predictions.csv"):
        assert (tmp / "sim" / f).is_file(), f
    audits = sorted((tmp / "sim" / "pilot" / "audit").glob("*/audit.jsonl"))
    assert len(audits) == 3  # every virtual partner kept its own audit log


def test_flower_sim_refuses_a_partner_csv(tmp_path):
    with pytest.raises(FedmolError, match="pilot"):
        run_flower_sim(tiny(csv=str(tmp_path / "x.csv"), smiles_col="smiles", target_cols=("y",)), tmp_path)
