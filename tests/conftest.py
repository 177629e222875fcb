"""Shared test setup: real data from the shared MoleculeNet folder, a private cache per session, and the
real-process federations of the pilot tests started in the background as soon as collection ends."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

# Small molecular graphs gain nothing from intra-op threads, and on a loaded 2-core machine extra
# threads oversubscribe the cores: tests run single-threaded.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDMOL_DATA_DIR", str(REPO.parent / "shared" / "datasets" / "moleculenet"))
if "FEDMOL_CACHE_DIR" not in os.environ:
    os.environ["FEDMOL_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedmol-test-cache-")
DATA_DIR = Path(os.environ["FEDMOL_DATA_DIR"])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts single-threaded, whatever the test before it set (a CLI's --threads)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA_DIR / "BBBP.csv").is_file(), (
        f"the MoleculeNet CSVs are not in {DATA_DIR}: set FEDMOL_DATA_DIR to the shared datasets folder")
    return DATA_DIR


# -- the real-process federations, run in the background (tests/pilot/federations.py) -------------
#: fixture name -> the federation it waits for
FEDERATION_FIXTURES = {"tls_run": "tls_demo", "killed_run": "killed_demo", "tls_pilot": "tls_cli_pilot",
                       "sim_run": "flower_sim", "private_sim_run": "flower_sim_private"}
#: the chains run side by side while the rest of the suite runs; a chain's federations one after the other
FEDERATION_CHAINS = (("killed_demo",), ("tls_demo",), ("tls_cli_pilot",), ("flower_sim", "flower_sim_private"))
FEDERATION_TIMEOUT = 1800.0  # seconds a fixture waits for its federation


class BackgroundFederations:
    """Starts the federations the selected tests need, in their chains, and hands out their results."""

    def __init__(self, names: set[str]):
        self.root = Path(tempfile.mkdtemp(prefix="fedmol-federations-"))
        self.ran: list[str] | None = None  # the timings, once stopped
        self.chains = []
        for chain in FEDERATION_CHAINS:
            todo = [n for n in chain if n in names]
            if todo:
                with open(self.root / f"chain-{todo[0]}.log", "wb") as log:
                    self.chains.append(subprocess.Popen(
                        [sys.executable, str(REPO / "tests" / "pilot" / "federations.py"), str(self.root), *todo],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))

    def result(self, name: str) -> dict:
        where, end = self.root / name, time.monotonic() + FEDERATION_TIMEOUT
        while time.monotonic() < end:
            if (where / "result.json").is_file():
                return json.loads((where / "result.json").read_text())
            if (where / "error.txt").is_file():
                pytest.fail(f"the background federation {name} failed:\n{(where / 'error.txt').read_text()}")
            if all(c.poll() is not None for c in self.chains) and not (where / "result.json").is_file():
                logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in self.root.glob("chain-*.log"))
                pytest.fail(f"the background federation {name} never ran:\n{logs}")
            time.sleep(0.5)
        pytest.fail(f"the background federation {name} did not end within {FEDERATION_TIMEOUT:.0f} s")

    def timings(self) -> list[str]:
        """What each chain printed: ``<federation> took <seconds> s`` per federation it ran."""
        return [line.removeprefix("federation ") for log in sorted(self.root.glob("chain-*.log"))
                for line in log.read_text(errors="replace").splitlines() if line.startswith("federation ")]

    def stop(self) -> None:
        if self.ran is not None:
            return
        for c in self.chains:
            if c.poll() is None:
                os.killpg(c.pid, signal.SIGTERM)
        for c in self.chains:
            try:
                c.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(c.pid, signal.SIGKILL)
        self.ran = self.timings()
        shutil.rmtree(self.root, ignore_errors=True)


_background: BackgroundFederations | None = None


def pytest_collection_modifyitems(items):
    """The tests that read a background federation run last: the in-process tests fill the wait."""
    items.sort(key=lambda item: any(f in FEDERATION_FIXTURES for f in getattr(item, "fixturenames", ())))


def pytest_collection_finish(session):
    global _background
    names = {FEDERATION_FIXTURES[f] for item in session.items for f in getattr(item, "fixturenames", ())
             if f in FEDERATION_FIXTURES}
    if names and not session.config.option.collectonly:
        _background = BackgroundFederations(names)


def pytest_sessionfinish(session):
    if _background is not None:
        _background.stop()


def pytest_terminal_summary(terminalreporter):
    if _background is not None and _background.ran:
        terminalreporter.write_line("background federations: " + ", ".join(_background.ran))


@pytest.fixture(scope="session")
def federation():
    """``federation(name)``: the result of a background federation, waited for."""
    assert _background is not None, "no background federation was started for this test"
    return _background.result
