"""``fedmol run --backend flower-sim``: Flower's simulation engine (Ray) gives the in-process results.

One Ray session (about 20 s to start on a 2-core machine; run in the background while the rest of
the suite runs: tests/pilot/federations.py): HeteroFL on three tiered partners
(three widths, the static-BN query round), run through the CLI, against ``run_federated`` with the
same arguments: every round's metrics, bytes and the per-partner scores equal within 1e-4.
"""

import json
from pathlib import Path

import pytest

from fedmol.errors import FedmolError
from fedmol.pilot.simulation import run_flower_sim
from pilot_common import assert_parity, tiny


@pytest.fixture(scope="module")
def sim_run(federation):
    """HeteroFL through the CLI on Flower's simulation engine, and in-process (tests/pilot/federations.py)."""
    r = federation("flower_sim")
    return Path(r["root"]), r["harness"], r


def test_flower_sim_equals_in_process(sim_run):
    tmp, harness, result = sim_run
    assert result["exit_code"] == 0, result["output"]
    assert "Flower simulation engine" in result["output"]
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
        run_flower_sim(tiny(csv=str(tmp_path / "x.csv"), smiles_col="smiles", target_cols="y"), tmp_path)
