"""Issue 19 (11): a partner site started before the coordinator registered its key is not turned
away for good: its SuperNode is started again with backoff for a bounded time, then one line says what
to check. A stand-in ``flower-supernode`` (a script) plays the SuperLink's refusals: no Flower here."""

import sys
from pathlib import Path

import pytest

from fedmol.pilot import deploy, processes
from fedmol.pilot.records import PilotError

FAKE = """import os, sys
from pathlib import Path
counter = Path(os.environ["FAKE_SUPERNODE_COUNTER"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
if n <= int(os.environ["FAKE_SUPERNODE_REFUSALS"]):
    print("ERROR :   Failed to activate SuperNode.", flush=True)
    sys.exit(1)
print("SuperNode connected; run finished", flush=True)
"""


@pytest.fixture
def fake_supernode(tmp_path, monkeypatch):
    script = tmp_path / "flower-supernode"
    script.write_text(f"#!{sys.executable}\n" + FAKE)
    script.chmod(0o755)
    monkeypatch.setattr(processes, "flower_bin", lambda name: str(script))
    monkeypatch.setenv("FAKE_SUPERNODE_COUNTER", str(tmp_path / "count"))

    def run(refusals, wait):
        monkeypatch.setenv("FAKE_SUPERNODE_REFUSALS", str(refusals))
        logs = []
        nc = {"partition-id": 0, "audit-dir": str(tmp_path / "audit")}
        try:
            return deploy.run_partner("127.0.0.1:9092", nc, tmp_path / "home", ca=None, node_key=None, insecure=True,
                                      log=logs.append, echo=lambda line: None, poll=0.02, wait=wait,
                                      backoff=(0.05, 0.1)), logs, int((tmp_path / "count").read_text())
        except PilotError as e:
            return e, logs, int((tmp_path / "count").read_text())
    return run


def test_a_site_early_for_its_coordinator_tries_again_and_joins(fake_supernode):
    code, logs, starts = fake_supernode(refusals=2, wait=30)
    assert code == 0 and starts == 3
    retries = [m for m in logs if m.startswith("the coordinator has not accepted this site yet")]
    assert len(retries) == 2 and "trying again in 0 s (giving up after 30 s)" in retries[0]
    assert sum(m.startswith("SuperNode started again") for m in logs) == 2


def test_a_site_that_is_never_accepted_gives_up_with_what_to_check(fake_supernode, tmp_path):
    err, logs, starts = fake_supernode(refusals=1000, wait=0.4)
    assert isinstance(err, PilotError) and 2 <= starts < 1000
    msg = str(err)
    assert msg.startswith("the coordinator at 127.0.0.1:9092 did not accept this site's SuperNode in ")
    assert "'Failed to activate SuperNode'): check that the coordinator is running (fedmol pilot coordinator) and " \
           "registered this site's public key (none: it must run --no-node-auth), that --superlink is its address" in msg
    assert msg.endswith(f"the SuperNode's log: {tmp_path / 'home' / 'logs' / 'supernode.log'}") and "\n" not in msg


def test_another_failure_is_not_retried(fake_supernode, tmp_path, monkeypatch):
    script = Path(processes.flower_bin("flower-supernode"))
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('bad certificate')\nsys.exit(3)\n")
    (tmp_path / "count").write_text("0")  # the stand-in above counts nothing
    err, logs, _ = fake_supernode(refusals=0, wait=30)
    assert isinstance(err, PilotError) and str(err).startswith("the SuperNode exited with code 3")
    assert not any(m.startswith("the coordinator has not accepted") for m in logs)
