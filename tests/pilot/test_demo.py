"""``fedmol pilot demo`` with real Flower processes on loopback (SuperLink, SuperNodes, ``flwr run``).

Two federations (each a minute or two on a loaded 2-core machine: Flower starts a ClientApp process
for every message) run in the background while the rest of the suite runs (tests/pilot/federations.py,
started by tests/conftest.py); the tests here read what they left:

* **TLS + SuperNode authentication**, FedAvg on the tiny bace split, two extra sites that must
  be refused (a CSV without the SMILES column; a fedmol version that does not match), and the
  coordinator recording every record it receives: end to end, parity with ``run_federated``,
  refusal reasons, no SMILES in anything the coordinator received, the sites' audit logs, no
  process left behind.
* **insecure**, two rounds, partner 1's machine killed (SIGKILL, whole process group) once it has
  pulled its training message, then restarted (a new SuperNode, hence a new node id): round 0
  closes at its deadline (or earlier, if the SuperLink declares the node unavailable when its
  heartbeat expires) with partner 0, the failure is in ``metrics.csv``; in round 1 the restarted
  site is greeted, takes partner 1's place and trains; the run completes.

``pytest -m slow`` adds HeteroFL, FedGen and federated boosted trees parity over real processes (their parity is
always checked in-process in test_local.py, through the same wire conversion), and ``fedmol pilot demo --heads
private`` (its sites keep their heads on their disks across ClientApp processes).
"""

import base64
import csv
import json
import math
import os
from pathlib import Path

import pytest

from fedmol.fl.harness import run_federated
from fedmol.jsonio import read_summary
from fedmol.pilot.demo import run_demo
from fedmol.pilot.processes import group_members
from federations import FAKE_VERSION
from pilot_common import assert_no_head_uploaded, assert_parity, tiny


def no_processes_left(out):
    doc = json.loads((out / "pilot" / "processes.json").read_text())
    assert doc["leftovers"] == {}
    assert doc["processes"], "the demo recorded the processes it started"
    for p in doc["processes"]:
        assert p["returncode"] is not None, p
        assert group_members(p["pgid"]) == [], p
        try:
            os.kill(p["pid"], 0)
            alive = open(f"/proc/{p['pid']}/stat").read().split(") ")[1][0] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            alive = False
        assert not alive, p


@pytest.fixture(scope="module")
def tls_run(federation):
    """TLS demo with two sites to refuse, and ``run_federated`` on its config (tests/pilot/federations.py)."""
    r = federation("tls_demo")
    return Path(r["out"]), r["pilot"], r["harness"]


def test_tls_demo_end_to_end(tls_run):
    out, pilot, _ = tls_run
    for name in ("config.json", "metrics.csv", "summary.json", "model.safetensors", "test_predictions.csv",
                 "sent.jsonl", "nodes.json", "inbox.jsonl"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    assert s["backend"] == "flower" and s["partners"] == 2 and s["rounds"] == 2 and s["failures"] == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["participants"] for r in rows] == ["2", "2"]
    log = (out / "pilot" / "logs" / "superlink.log").read_text()
    assert "https://127.0.0.1" in log and "RegisterNode" in log  # TLS, and the sites' keys were registered
    assert (out / "pilot" / "certs" / "ca.pem").is_file()
    no_processes_left(out)


def test_tls_demo_parity_with_run_federated(tls_run):
    _, pilot, harness = tls_run
    assert_parity(harness, pilot)


def test_incompatible_sites_are_refused_with_reasons(tls_run):
    out, pilot, _ = tls_run
    nodes = json.loads((out / "nodes.json").read_text())
    refused = [n for n in nodes if n["status"] == "refused"]
    assert len(refused) == 2 and len(pilot["refused"]) == 2
    reasons = " || ".join(n["reason"] for n in refused)
    assert "partner 2: cannot use its data" in reasons and "no SMILES column 'smiles'" in reasons
    assert "columns found: ['mol', 'Class']" in reasons
    version = [n["reason"] for n in refused if "incompatible" in n["reason"]]
    assert len(version) == 1 and FAKE_VERSION in version[0] and "0.1.0" in version[0]
    assert str(out.parent) not in reasons  # a site's folders do not leave it


def test_no_smiles_reach_the_coordinator(tls_run, bace_smiles):
    out, _, _ = tls_run
    records = [json.loads(x) for x in (out / "inbox.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert {"hello", "train", "validate"} <= kinds and len(records) == 2 + 2 * 2 + 2
    local = ["CC(C)Oc1ccc(cc1)C(=O)N"]  # the refused site's molecule
    strings = [s for r in records for s in r["strings"]]
    strings += [n.get("reason", "") for n in json.loads((out / "nodes.json").read_text())]
    for smi in bace_smiles + local:
        assert not any(smi in s for s in strings), smi
    blobs = []
    for r in records:
        for name, a in r["arrays"].items():
            assert a["dtype"] in {"bool", "int64", "float32", "float64"}, (name, a["dtype"])
            blobs.append(base64.b64decode(a["data"]))
    blob = b"\0".join(blobs)
    assert blob and not any(smi.encode() in blob for smi in bace_smiles)


def test_sites_audit_what_they_sent(tls_run):
    out, _, _ = tls_run
    received = [json.loads(x) for x in (out / "sent.jsonl").read_text().splitlines()]
    for k in (0, 1):
        audit = [json.loads(x) for x in (out / "pilot" / "sites" / str(k) / "audit" / "audit.jsonl")
                 .read_text().splitlines()]
        assert [(a["kind"], a["direction"]) for a in audit] == [
            ("hello", "received"), ("hello", "sent"), ("train", "received"), ("train", "sent"),
            ("train", "received"), ("train", "sent"), ("validate", "received"), ("validate", "sent")]
        mine = [a for a in audit if a["kind"] == "train" and a["direction"] == "sent"]
        theirs = [r for r in received if r["partner"] == k and r["kind"] == "update"]
        assert [a["bytes"] for a in mine] == [r["bytes"] for r in theirs]
        assert [a["arrays"] for a in mine] == [r["arrays"] for r in theirs]
    for name in ("bad-csv", "old-version"):
        audit = [json.loads(x) for x in (out / "pilot" / "sites" / name / "audit" / "audit.jsonl")
                 .read_text().splitlines()]
        assert [a["direction"] for a in audit] == ["received", "failed"]


@pytest.fixture(scope="module")
def killed_run(federation):
    """Partner 1 killed mid-round 0 and restarted (tests/pilot/federations.py)."""
    r = federation("killed_demo")
    return Path(r["out"]), r["summary"]


def test_killed_node_round_closes_at_deadline_and_the_restarted_site_rejoins(killed_run):
    out, s = killed_run
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2
    assert rows[0]["participants"] == "1" and rows[0]["partner_ids"] == "0" and rows[0]["failures"] == "1"
    # the deadline passes, or (if its heartbeat expires first) the SuperLink reports the node unavailable
    reason = rows[0]["failure_reasons"]
    assert reason.startswith("partner 1: ") and ("no reply within the deadline (90 s)" in reason
                                                 or "unreachable, the SuperLink says: " in reason), reason
    # round 1: the restarted site is greeted and takes partner 1's place
    assert rows[1]["participants"] == "2" and rows[1]["partner_ids"] == "0;1" and rows[1]["failures"] == "0"
    (event,) = s["node_events"]
    assert event["status"] == "rejoined" and event["round"] == 1 and event["partition_id"] == 1
    assert s["failures"] == 1 and "valid_error" not in s["per_partner"][1]
    assert float(rows[s["selected_round"]]["test_rocauc@1.0"]) == pytest.approx(s["test"]["1.0"])
    assert "http://127.0.0.1" in (out / "pilot" / "logs" / "superlink.log").read_text()  # --insecure: no TLS
    no_processes_left(out)


@pytest.mark.slow  # in-process parity always runs (test_local.py)
@pytest.mark.parametrize("algorithm", ["heterofl", "fedgen", "gbt-bagging"])
def test_real_process_parity_width_heterogeneous(algorithm, tmp_path, data_dir):
    cfg = tiny(algorithm=algorithm, devices="tiered")
    pilot = run_demo(cfg, tmp_path / "pilot", insecure=True, round_timeout=120, log=lambda m: None)
    harness = run_federated(cfg, tmp_path / "harness", progress=False)
    assert_parity(harness, pilot)
    no_processes_left(tmp_path / "pilot")


@pytest.mark.slow  # always checked in-process (test_private_heads_pilot.py) and on flower-sim (test_simulation.py)
def test_real_process_demo_with_private_heads(tmp_path, data_dir):
    """``fedmol pilot demo --heads private``: each site's ClientApp processes keep its head on its disk; no
    head tensor in any upload; the partners' own models are scored at their sites, as ``fedmol run --heads
    private`` scores them."""
    from typer.testing import CliRunner

    from fedmol.cli import app

    cfg = tiny(heads="private")
    out = tmp_path / "pilot"
    res = CliRunner().invoke(app, ["pilot", "demo", "-d", "bace", "-k", "2", "-a", "1", "-r", "2", "-s", "0", "--hidden",
                                   "16", "--layers", "2", "--hp", "max_local_steps=2", "--heads", "private", "--insecure",
                                   "--round-timeout", "120", "--out", str(out)])
    assert res.exit_code == 0, res.output
    pilot = read_summary(out / "summary.json", history=out / "progress.jsonl")
    assert pilot["heads"] == "private" and pilot["partners"] == 2 and pilot["failures"] == 0
    assert all(math.isfinite(e["test"]) and math.isfinite(e["valid"]) for e in pilot["per_partner"])
    audits = sorted((out / "pilot" / "sites").glob("*/audit/audit.jsonl"))
    assert len(audits) == 2
    assert_no_head_uploaded(audits, out / "sent.jsonl")
    for a in audits:  # the current head and the selected round's (the others were deleted as they fell behind)
        assert {p.name.rsplit("-", 1)[-1] for p in (a.parent / "heads").glob("run-*-r*.safetensors")} == {
            f"r{pilot['selected_round']}.safetensors"}
        assert len(list((a.parent / "heads").glob("run-*.safetensors"))) == 2
    assert_parity(run_federated(cfg, tmp_path / "harness", progress=False), pilot, private_heads=True)
    no_processes_left(out)


class Interrupted(Exception):
    pass


def test_interrupted_demo_leaves_no_process(tmp_path, data_dir):
    """An error (or Ctrl-C) while the federation runs: every process started is ended."""
    def interrupt(pilot):
        raise Interrupted

    with pytest.raises(Interrupted):
        run_demo(tiny(rounds=1), tmp_path / "run", insecure=True, on_poll=interrupt, log=lambda m: None)
    doc = json.loads((tmp_path / "run" / "pilot" / "processes.json").read_text())
    assert {p["name"] for p in doc["processes"]} == {"superlink", "site-0", "site-1"}
    no_processes_left(tmp_path / "run")
