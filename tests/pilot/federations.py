"""The real-process federations the pilot tests share, run in the background while the rest of the suite runs.

Each costs one to three minutes, mostly waiting on processes (Flower starts a ClientApp process per
message; a killed site's round closes at its deadline). ``tests/conftest.py`` starts the ones the
selected tests need, as soon as collection ends, in chains run side by side (a chain runs its
federations one after the other) at a low priority (:func:`lower_priority`; the killed-site
federation, whose healthy site must beat a 90 s deadline, at a fair share), and moves the tests that
read them to the end of the run (test_demo.py, test_partner_coordinator.py and test_simulation.py:
their fixtures wait for the results). The federations themselves are unchanged: real SuperLink,
SuperNode, ClientApp and ServerApp processes, or Flower's simulation engine.

``python tests/pilot/federations.py ROOT NAME [NAME ...]`` runs the NAMEd federations in order, each
writing ``ROOT/NAME/result.json`` when it ends well, else ``ROOT/NAME/error.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pandas as pd

from fedmol.pilot.processes import free_port, group_members
from pilot_common import tiny

CLI = [sys.executable, "-m", "fedmol.cli", "pilot"]
COLS = ["--smiles-col", "smiles", "--target-cols", "p_np", "--task", "classification"]
FAKE_VERSION = "0.0.9"
#: seconds of the round and connection deadlines of the federations that expect no timeout: they run
#: at a low priority (see :func:`lower_priority`), and a busy machine may hold a healthy site back
PATIENT_S = 300


# -- the CLI pilot (fedmol pilot coordinator + fedmol pilot partner) --------------------------------
def make_csvs(root: Path, data_dir: Path) -> dict:
    """Two sites' CSVs (50 BBBP rows each) and the coordinator's test CSV (20 positive, 20 negative)."""
    root.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(data_dir / "BBBP.csv")[["smiles", "p_np"]].sample(frac=1.0, random_state=0)
    sites = [df.iloc[0:50], df.iloc[50:100]]
    rest = df.iloc[100:]
    test = pd.concat([rest[rest.p_np == 1].iloc[:20], rest[rest.p_np == 0].iloc[:20]])
    paths = {}
    for k, part in enumerate(sites):
        paths[k] = root / f"site{k}.csv"
        part.to_csv(paths[k], index=False)
    paths["test"] = root / "test.csv"
    test.to_csv(paths["test"], index=False)
    held = set(test.smiles)  # BBBP repeats some SMILES: keep only those the coordinator does not hold itself
    paths["smiles"] = [s for part in sites for s in part.smiles if len(s) >= 8 and s not in held]
    return paths


def pilot_toml(path: Path, test_csv: str | Path | None, **pilot) -> Path:
    settings = dict(name="bbbp-test", algorithm="fedavg", rounds=2, partners=2, min_partners=2, round_deadline=120,
                    connect_timeout=120, threads=1)
    settings.update(pilot)
    lines = ["[pilot]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += ["[model]", "hidden = 16", "layers = 2", "[hparams]", "max_local_steps = 2",
              "[dataset]", 'task = "classification"', 'target_cols = ["p_np"]', 'smiles_col = "smiles"']
    if test_csv is not None:
        lines.append(f"test_csv = {json.dumps(str(test_csv))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def start(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    fh = open(log, "wb")
    return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                            process_group=0)  # its own group, in this (low-priority) session


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before printing {text!r}:\n{log.read_text()}")
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not printed within {timeout} s:\n{log.read_text()}")


def end_all(procs: list[subprocess.Popen]) -> None:
    """Safety net: end whatever a failed run left (each process leads its own group). A process still
    running gets SIGTERM first, so a coordinator stops the SuperLink and SuperExec it started in their
    own sessions (SIGKILL would leave them running); what is left after 30 s is killed."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if p.poll() is None or group_members(p.pid):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(timeout=30)


def _start_partner(root: Path, csvs: dict, k: int, port: int, insecure: bool) -> subprocess.Popen:
    security = ["--insecure", "--partition-id", str(k)] if insecure else ["--certs", str(root / "pki" / f"partner-{k}")]
    return start(CLI + ["partner", "--superlink", f"127.0.0.1:{port}", "--csv", str(csvs[k]), *COLS,
                        "--width-cap", "1.0", "--home", str(root / f"site{k}"), "--threads", "1", *security],
                 root / f"partner{k}.out", root)


def run_federation(root: Path, csvs: dict, *, insecure: bool, partners: list[int], **pilot) -> dict:
    """``fedmol pilot coordinator`` + one ``fedmol pilot partner`` per entry of ``partners``; SIGINT ends them.
    Returns the folders and every process's exit code."""
    from typer.testing import CliRunner

    from fedmol.pilot.cli import pilot_app

    if not insecure:
        r = CliRunner().invoke(pilot_app, ["certs", "--out", str(root / "pki"), "--partners", "2"])
        assert r.exit_code == 0, r.output
    toml = pilot_toml(root / "pilot.toml", csvs["test"], **pilot)
    port = free_port()
    security = ["--insecure"] if insecure else ["--certs", str(root / "pki")]
    procs = []
    try:
        coord = start(CLI + ["coordinator", str(toml), "--out", str(root / "run"), "--address", f"127.0.0.1:{port}",
                             *security], root / "coordinator.out", root)
        procs.append(coord)
        wait_for_text(root / "coordinator.out", "SuperLink listening", coord, timeout=180)
        sites = [_start_partner(root, csvs, k, port, insecure) for k in partners]
        procs += sites
        coord.wait(timeout=900)
        for p in sites:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # Ctrl-C
        for p in sites:
            p.wait(timeout=60)
    finally:
        end_all(procs)
    return dict(root=str(root), out=str(root / "run"), coordinator=coord.returncode,
                partners={str(k): p.returncode for k, p in zip(partners, sites)})


def tls_cli_pilot(root: Path) -> dict:
    """TLS and SuperNode authentication, two partners with their own BBBP CSVs."""
    csvs = make_csvs(root / "csvs", Path(os.environ["FEDMOL_DATA_DIR"]))
    return dict(run_federation(root, csvs, insecure=False, partners=[0, 1], round_deadline=PATIENT_S,
                                connect_timeout=PATIENT_S), csvs=csvs)


# -- fedmol pilot demo ------------------------------------------------------------------------------
def older_fedmol(where: Path, version: str) -> str:
    """A copy of this fedmol released as ``version``, and the PYTHONPATH that makes a site run it."""
    import fedmol

    here = Path(fedmol.__file__).resolve().parent
    shutil.copytree(here, where / "fedmol", ignore=shutil.ignore_patterns("__pycache__"))
    init = where / "fedmol" / "__init__.py"
    text = init.read_text()
    assert f'__version__ = "{fedmol.__version__}"' in text
    init.write_text(text.replace(f'__version__ = "{fedmol.__version__}"', f'__version__ = "{version}"'))
    return os.pathsep.join([str(where), str(here.parent)])


def tls_demo(root: Path) -> dict:
    """TLS + SuperNode authentication, FedAvg on the tiny bace split, two sites that must be refused, the
    coordinator recording every record it receives; and ``run_federated`` on the same config."""
    from fedmol.fl.harness import run_federated
    from fedmol.pilot.demo import run_demo

    bad_csv = root / "site-b" / "compounds.csv"
    bad_csv.parent.mkdir(parents=True)
    bad_csv.write_text("mol,Class\nCC(C)Oc1ccc(cc1)C(=O)N,1\nCCN,0\n")
    extra = [dict(name="bad-csv", node_config={"partition-id": 2, "csv": str(bad_csv), "smiles-col": "smiles",
                                                 "target-cols": "Class", "task": "classification"}),
             dict(name="old-version", node_config={"partition-id": 3, "csv": str(bad_csv), "smiles-col": "mol",
                                                     "target-cols": "Class", "task": "classification"},
                  env={"PYTHONPATH": older_fedmol(root / "older", FAKE_VERSION)})]
    cfg = tiny(algorithm="fedavg")
    pilot = run_demo(cfg, root / "pilot-run", round_timeout=PATIENT_S, connect_timeout=PATIENT_S, record_inbox=True,
                     extra_sites=extra, log=lambda m: None)
    harness = run_federated(cfg, root / "harness-run", progress=False)
    return dict(out=str(root / "pilot-run"), pilot=pilot, harness=harness)


def _kill_partner_1_mid_round_then_restart_it(pilot) -> None:
    if "1" not in pilot.killed and "Receiving: train message" in pilot.sites["1"]["proc"].log.read_text(
            errors="replace"):
        pilot.kill_site("1")
        # the machine comes back: a new SuperNode process (a new node id) with the same node config
        pilot.add_site("1-restarted", pilot.sites["1"]["node_config"])


def killed_demo(root: Path) -> dict:
    """Insecure, two rounds, partner 1's machine killed once it has pulled its training message, then restarted."""
    from fedmol.pilot.demo import run_demo

    s = run_demo(tiny(rounds=2), root / "run", insecure=True, round_timeout=90, connect_timeout=120,
                 on_poll=_kill_partner_1_mid_round_then_restart_it, log=lambda m: None)
    return dict(out=str(root / "run"), summary=s)


# -- fedmol run --backend flower-sim ----------------------------------------------------------------
SIM_ARGS = dict(algorithm="heterofl", partners=3, devices="tiered")


def sim_and_harness(root: Path, cfg) -> dict:
    """``cfg`` through Flower's simulation engine (the CLI, into ``root/sim``) and in-process."""
    from typer.testing import CliRunner

    from fedmol.cli import app
    from fedmol.fl.harness import run_federated

    harness = run_federated(cfg, root / "inprocess", progress=False)
    hp = [a for k, v in cfg.hparams.items() for a in ("--hp", f"{k}={v}")]
    result = CliRunner().invoke(app, ["run", "-A", cfg.algorithm, "-d", cfg.dataset, "-k", str(cfg.partners), "-a",
                                      str(cfg.alpha), "--devices", cfg.devices, "-r", str(cfg.rounds), "-s",
                                      str(cfg.seed), "--hidden", str(cfg.hidden), "--layers", str(cfg.layers), *hp,
                                      "--heads", cfg.heads, "--backend", "flower-sim", "--out", str(root / "sim")])
    return dict(root=str(root), harness=harness, exit_code=result.exit_code, output=result.output)


def flower_sim(root: Path) -> dict:
    """HeteroFL on three tiered partners through Flower's simulation engine (the CLI), and in-process."""
    return sim_and_harness(root, tiny(**SIM_ARGS))


def flower_sim_private(root: Path) -> dict:
    """FedAvg with private heads on the tiny bace federation through Flower's simulation engine, and in-process."""
    return sim_and_harness(root, tiny(heads="private"))


#: a healthy site of these must answer within a round deadline that the test asserts: their chain
#: shares the CPU fairly with the in-process tests instead of taking only what those leave idle
FAIR_SHARE = {"killed_demo"}
FEDERATIONS = dict(tls_demo=tls_demo, killed_demo=killed_demo, tls_cli_pilot=tls_cli_pilot, flower_sim=flower_sim,
                   flower_sim_private=flower_sim_private)


def _plain(x):
    return str(x) if isinstance(x, Path) else float(x)


def _stop(*_):
    raise KeyboardInterrupt  # SIGTERM from the test session: end the processes a federation started


def lower_priority() -> None:
    """The in-process tests first: the federations (and every process they start) fill the idle core.
    This chain leads its own session (tests/conftest.py), and Linux's autogroup scheduling shares the
    CPU fairly between sessions whatever the niceness inside them: the session's own priority is
    lowered too, where the kernel offers it (/proc/self/autogroup), to 10 rather than 19: at 19 a machine
    busy with other work (a benchmark beside the tests) starved a short ``flwr`` command past its 120 s."""
    os.nice(10)
    if os.getsid(0) != os.getpid():  # run by hand, inside someone's session: leave that session's priority be
        return
    try:
        Path("/proc/self/autogroup").write_text("10")
    except OSError:  # not Linux, or no autogroup scheduling: niceness alone then decides
        pass


def main(root: Path, names: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    if not FAIR_SHARE.intersection(names):
        lower_priority()
    signal.signal(signal.SIGTERM, _stop)
    for name in names:
        where = root / name
        where.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        try:
            result = FEDERATIONS[name](where)
        except Exception:
            (where / "error.txt").write_text(traceback.format_exc())
            continue
        finally:
            print(f"federation {name} took {time.monotonic() - began:.0f} s", flush=True)
        text = json.dumps(result, default=_plain)  # NaN stays NaN: parity compares NaN with NaN
        (where / "result.part").write_text(text)
        (where / "result.part").rename(where / "result.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
