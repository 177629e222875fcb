"""``fedmol run --backend flower-sim``: Flower's simulation engine (Ray) gives the in-process results.

One Ray session (about 20 s to start on a 2-core machine; run in the background while the rest of
the suite runs: tests/pilot/federations.py): HeteroFL on three tiered partners
(three widths, the static-BN query round), run through the CLI, against ``run_federated`` with the
same arguments: every round's metrics, bytes and the per-partner scores equal within 1e-4. A second
session runs FedAvg with private heads (each virtual partner keeps its head on its disk and scores
its own model): the same scores as in-process, and no head tensor in any upload.
"""

import re
from pathlib import Path

import pytest

from fedmol.errors import FedmolError
from fedmol.jsonio import read_summary
from fedmol.pilot.simulation import run_flower_sim
from pilot_common import assert_no_head_uploaded, assert_parity, tiny


def simulated(federation, name: str) -> tuple[Path, dict, dict, list[Path]]:
    """A background federation's folder, its in-process summary, the flower-sim run's summary (with its
    history) and the virtual partners' audit logs, once the CLI has succeeded."""
    r = federation(name)
    assert r["exit_code"] == 0, r["output"]
    assert "Flower simulation engine" in r["output"]
    root = Path(r["root"])
    sim = read_summary(root / "sim" / "summary.json", history=root / "sim" / "progress.jsonl")
    return root, r["harness"], sim, sorted((root / "sim" / "pilot" / "audit").glob("*/audit.jsonl"))


@pytest.fixture(scope="module")
def sim_run(federation):
    """HeteroFL through the CLI on Flower's simulation engine, and in-process (tests/pilot/federations.py)."""
    return simulated(federation, "flower_sim")


def test_flower_sim_equals_in_process(sim_run):
    tmp, harness, sim, audits = sim_run
    assert sim["test"].keys() == {"1.0", "0.5", "0.25"}
    assert_parity(harness, sim)
    for f in ("config.json", "metrics.csv", "model.safetensors", "test_predictions.csv"):
        assert (tmp / "sim" / f).is_file(), f
    assert len(audits) == 3  # every virtual partner kept its own audit log


def test_flower_sim_refuses_a_partner_csv(tmp_path):
    with pytest.raises(FedmolError, match="pilot"):
        run_flower_sim(tiny(csv=str(tmp_path / "x.csv"), smiles_col="smiles", target_cols="y"), tmp_path)


@pytest.fixture(scope="module")
def private_sim_run(federation):
    """FedAvg with private heads on Flower's simulation engine, and in-process (tests/pilot/federations.py)."""
    return simulated(federation, "flower_sim_private")


def test_flower_sim_private_heads_equal_in_process(private_sim_run):
    tmp, harness, sim, audits = private_sim_run
    assert sim["heads"] == "private" and sim["test_source"].startswith("split test rows, scored at the sites")
    assert_parity(harness, sim, private_heads=True)
    assert len(audits) == 2
    assert_no_head_uploaded(audits, tmp / "sim" / "sent.jsonl")
    for audit in audits:  # the head, and the selected round's head (the partner's final model), stayed on its disk
        names = {p.name for p in (audit.parent / "heads").iterdir()}
        (current,) = [n for n in names if re.fullmatch(r"run-\d+\.safetensors", n)]
        run = current[len("run-"):-len(".safetensors")]
        assert names == {current, f"run-{run}-r{sim['selected_round']}.safetensors"}
