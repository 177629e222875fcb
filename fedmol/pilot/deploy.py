"""The two sides of a real pilot: ``fedmol pilot coordinator`` and ``fedmol pilot partner``.

* :func:`run_coordinator_pilot` -- the coordinator's machine: a checked pilot TOML
  (:mod:`fedmol.pilot.plan`), a ``flower-superlink`` on ``host:port`` (TLS with the certificates of
  ``fedmol pilot certs`` and SuperNode authentication with the partners' public keys, unless
  ``insecure``), fedmol's Flower app submitted with the TOML as its run config, the rounds printed
  as they end, the harness's result files in the output folder, and the SuperLink stopped (with
  everything it started) at the end, also on error or Ctrl-C.
* :func:`check_partner_data` / :func:`run_partner` -- a partner's machine: the CSV is featurized
  and checked *here* (counts of valid / invalid rows and why; a missing column or no valid
  molecule is an error before anything starts), the node config is written, and
  ``flower-supernode`` runs in the foreground until Ctrl-C / SIGTERM, which it forwards (the
  SuperNode and every ClientApp it started are ended). The CSV never leaves the site: the node
  config names it, the ClientApp reads it (:mod:`fedmol.pilot.site`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import fedmol
from fedmol.errors import FedmolError
from fedmol.jsonio import write_json
from fedmol.pilot.records import PilotError

if TYPE_CHECKING:
    from fedmol.pilot.processes import Processes

DEFAULT_ADDRESS = "0.0.0.0:9092"


def parse_address(address: str, what: str = "--address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FedmolError(f"{what} must be HOST:PORT (e.g. 0.0.0.0:9092), got {address!r}")
    return host.strip("[]"), int(port)


# -- coordinator ----------------------------------------------------------------------------------
def partner_keys(certs: Path | None, keys: Path | None) -> list[Path]:
    """The partners' public keys to register: ``keys/*.pub`` (default ``certs/partner-keys``)."""
    folder = keys if keys is not None else (certs / "partner-keys" if certs is not None else None)
    if folder is None or not folder.is_dir():
        raise FedmolError(f"no folder of partner public keys ({folder or '--keys'}): put each partner's .pub file "
                          "in CERTS/partner-keys/ (fedmol pilot certs --partners K makes them) or give --keys DIR")
    pubs = sorted(folder.glob("*.pub"))
    if not pubs:
        raise FedmolError(f"{folder} holds no .pub file: each partner's public key must be registered")
    return pubs


def run_coordinator_pilot(plan, out: str | Path, *, certs: str | Path | None = None, keys: str | Path | None = None,
                          insecure: bool = False, node_auth: bool = True, address: str = DEFAULT_ADDRESS,
                          run_timeout: float | None = None, log=print) -> dict:
    """Run ``plan`` (a :class:`~fedmol.pilot.plan.PilotPlan`) as the coordinator; return the summary."""
    from fedmol.pilot.demo import read_results
    from fedmol.pilot.loopback import LoopbackPilot

    host, port = parse_address(address)
    certs = coordinator_certs(certs, insecure)
    pubs = partner_keys(certs, Path(keys).expanduser().resolve() if keys else None) if (node_auth and not insecure) \
        else []
    out = Path(out).resolve()
    s = plan.settings(out)
    _log_test_set(plan, s, log)
    work = _prepare_out(out, plan)
    if run_timeout is None:  # a bound on a run that no longer progresses, generous for real deadlines
        run_timeout = s.connect_timeout + s.round_timeout * (2 * s.rounds + 4) * 2 + 600
    with LoopbackPilot(work, insecure=insecure, node_auth=bool(pubs), certs_dir=certs, threads=s.threads,
                       host=host, port=port, require_certs=True) as pilot:
        pilot.start_superlink()
        log(f"SuperLink listening on {host}:{port} ({'INSECURE: no TLS' if insecure else 'TLS'}"
            f"{', SuperNode authentication' if pubs else ', no SuperNode authentication'}); "
            f"partners connect to <this machine>:{port}")
        for pub in pubs:
            node = pilot.register_key(pub)
            log(f"registered {pub.name}" + (f" (node {node})" if node else ""))
        end = _follow_run(pilot, s, out, run_timeout, log)
    return {**read_results(out, where=f"logs in {work / 'logs'}", status=end.status, run_log=end.run_log,
                           leftovers=pilot.procs.leftovers()), "run_id": end.run_id}


def coordinator_certs(certs: str | Path | None, insecure: bool) -> Path | None:
    """The coordinator's certificate folder (None with ``insecure``), checked for its CA, certificate and key."""
    if insecure and certs:
        raise FedmolError("--insecure and --certs exclude each other")
    if not insecure and certs is None:
        raise FedmolError("give --certs DIR (the folder `fedmol pilot certs` made) or, on a test network only, "
                          "--insecure")
    certs = Path(certs).expanduser().resolve() if certs else None
    if certs is not None:
        missing = [n for n in ("ca.pem", "server.pem", "server.key") if not (certs / n).is_file()]
        if missing:
            raise FedmolError(f"{certs}: missing {', '.join(missing)}: make the certificates with `fedmol pilot certs "
                              f"--out {certs} --host <this machine's public name> --partners K`")
    return certs


def _log_test_set(plan, s, log) -> None:
    """Say what the coordinator scores on: its test CSV (featurized here), or the partners' own scores."""
    from fedmol.data.dataset import load_dataset

    d = plan.doc.dataset
    if s.test_csv:
        test = load_dataset(csv=s.test_csv, smiles_col=s.smiles_col, target_cols=s.target_cols, task=s.task,
                            progress=False)
        log(f"test set {plan.test_csv}: {test.report.valid} valid molecules of {test.report.rows} rows, "
            f"{d.task} on {', '.join(d.target_cols)}")
    else:
        log(f"no test set: the partners' own validation scores are the metric ({d.task} on "
            f"{', '.join(d.target_cols)})")


def _prepare_out(out: Path, plan) -> Path:
    """The output folder without a previous run's results, and its ``pilot/`` work folder with the plan."""
    from fedmol.fl.setup import clear_results

    work = clear_results(out) / "pilot"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pilot.toml").write_text(plan.path.read_text())
    return work


@dataclass
class RunEnd:
    """How the submitted run ended: its id, its status, and its log when it did not complete."""

    run_id: str
    status: str
    run_log: str


def _follow_run(pilot, s, out: Path, run_timeout: float, log) -> RunEnd:
    """Submit the run and log the partners and the rounds as they come, until it ends."""
    progress = _progress_reporter(out, s.rounds, log)
    run_id = pilot.submit(s)
    log(f"run {run_id} submitted: {s.algorithm}, {s.rounds} rounds, waiting up to {s.connect_timeout:g} s "
        f"for {s.partners} partner(s)")
    status = pilot.wait(run_id, run_timeout, on_poll=progress,
                        done=lambda: any((out / f).is_file() for f in ("summary.json", "pilot_error.json")))
    progress(pilot)
    log(f"run {run_id} {status}; stopping the SuperLink")
    return RunEnd(run_id, status, pilot.run_log(run_id) if status != "finished:completed" else "")


def _progress_reporter(out: Path, rounds: int, log):
    """A callable that logs what the run has written since its last call: the nodes accepted or
    refused (``nodes.json``, once it is there) and the rounds closed (``progress.jsonl``)."""
    from fedmol.pilot.demo import round_reporter

    nodes, shown = out / "nodes.json", False
    show_rounds = round_reporter(out / "progress.jsonl", log, describe=lambda row: round_line(row, rounds))

    def report(_pilot=None) -> None:
        nonlocal shown
        if not shown and nodes.is_file():
            shown = True
            for e in json.loads(nodes.read_text()):
                log(_node_line(e))
        show_rounds()
    return report


def _node_line(e: dict) -> str:
    """A ``nodes.json`` entry as a line."""
    if e["status"] == "accepted":
        return (f"partner {e['partition_id']} joined (node {e['node_id']}): {e['n_train']} training, "
                f"{e['n_valid']} validation molecules, width cap {e['width_cap']:g}")
    return f"node {e['node_id']} REFUSED: {e.get('reason')}"


def round_line(row: dict, rounds: int) -> str:
    tests = ", ".join(f"test {k.split('_', 1)[1]} {v:.4f}" for k, v in row.items()
                      if k.startswith("test_") and isinstance(v, (int, float)))
    text = f"round {row['round']} ({row['round'] + 1}/{rounds}): {row['participants']} partner(s) replied"
    if str(row.get("aggregated", 1)) == "0":
        text += f"; SKIPPED: {row.get('skipped_reason')}"
    if row.get("failures"):
        text += f"; {row['failures']} failure(s): {row.get('failure_reasons')}"
    return text + (f"; {tests}" if tests else "")


# -- partner ----------------------------------------------------------------------------------------
def partner_certs(certs: Path) -> tuple[Path, Path | None, int | None]:
    """(CA certificate, node private key or None, partition id or None) from a partner's folder."""
    from fedmol.pilot.certs import NODE_KEY

    if not (certs / "ca.pem").is_file():
        raise FedmolError(f"{certs}: no ca.pem (the coordinator's CA certificate, from its `fedmol pilot certs` folder)")
    key = certs / NODE_KEY
    pid = None
    if (certs / "partner.json").is_file():
        try:
            pid = int(json.loads((certs / "partner.json").read_text())["partition_id"])
        except (ValueError, KeyError, TypeError) as e:
            raise FedmolError(f"{certs / 'partner.json'} is damaged: {e}") from None
    return certs / "ca.pem", key if key.is_file() else None, pid


def node_config(csv: Path, smiles_col: str, target_cols: str, task: str, width_cap: float, partition_id: int,
                audit_dir: Path, valid_csv: Path | None = None, threads: int = 0, state_dir: Path | None = None) -> dict:
    """A site's node config (``fedmol.pilot.site``'s keys) from ``fedmol pilot partner``'s options."""
    nc = {"partition-id": int(partition_id), "width-cap": float(width_cap), "csv": str(csv.resolve()),
          "smiles-col": smiles_col, "target-cols": target_cols, "task": task, "audit-dir": str(audit_dir.resolve()),
          "threads": int(threads)}
    if valid_csv is not None:
        nc["valid-csv"] = str(valid_csv.resolve())
    if state_dir is not None:
        nc["state-dir"] = str(state_dir.resolve())
    return nc


def check_partner_data(nc: dict, log=print) -> dict:
    """Featurize the site's CSV(s) here and report; errors (missing column, no valid molecule) raise."""
    from fedmol.data.dataset import load_dataset
    from fedmol.pilot.site import load_site_data, width_cap

    if nc["task"] not in ("classification", "regression"):
        raise FedmolError(f"--task must be classification or regression, got {nc['task']!r}")
    width_cap(nc)
    files = [("csv", Path(nc["csv"]))] + ([("valid-csv", Path(nc["valid-csv"]))] if nc.get("valid-csv") else [])
    report = {}
    for what, path in files:
        if not path.is_file():
            raise FedmolError(f"--{what} {path} not found")
        ds = load_dataset(csv=path, smiles_col=nc["smiles-col"], target_cols=nc["target-cols"], task=nc["task"],
                          progress=False)
        rep = ds.report
        reasons = Counter(_reason_kind(r["reason"]) for r in rep.invalid_rows)
        log(f"{path}: {rep.rows} rows -> {rep.valid} valid, {rep.invalid} invalid, {rep.duplicates} duplicated "
            f"SMILES, {rep.unlabeled} without any label")
        for reason, n in reasons.most_common(5):
            log(f"  {n} invalid: {reason}")
        labels = ds.labels
        for j, col in enumerate(ds.info.tasks):
            col_y = labels[:, j]
            known = col_y[~(col_y != col_y)]  # not NaN
            if nc["task"] == "classification":
                log(f"  {col}: {known.size} labelled, {int((known == 1).sum())} positive, {int((known == 0).sum())} negative")
            else:
                log(f"  {col}: {known.size} labelled" + (f", mean {known.mean():.3g}, range {known.min():.3g} .. "
                                                         f"{known.max():.3g}" if known.size else ""))
        report[what] = dict(rows=rep.rows, valid=rep.valid, invalid=rep.invalid, duplicates=rep.duplicates,
                            unlabeled=rep.unlabeled, reasons=dict(reasons))
    data = load_site_data(nc)  # exactly what the ClientApp will load
    report.update(n_train=len(data.local.train), n_valid=len(data.local.valid))
    log(f"this site trains on {report['n_train']} molecules and validates on {report['n_valid']}"
        + ("" if nc.get("valid-csv") else " (a seeded 10% of the CSV)") + f"; width cap {nc['width-cap']:g}")
    return report


def _reason_kind(reason: str) -> str:
    """An RDKit reason without the molecule it names (so counts group by kind)."""
    text = str(reason).split(" for input:")[0].split(" while parsing:")[0]
    return text.strip()[:120] or "unknown"


#: what flower-supernode logs when the SuperLink does not (yet) accept it: the coordinator has not
#: registered this site's public key yet, or is not up
NOT_ACTIVATED = "Failed to activate SuperNode"


def run_partner(superlink: str, nc: dict, home: Path, *, ca: Path | None, node_key: Path | None,
                insecure: bool = False, log=print, echo=print, poll: float = 0.3, wait: float = 300.0,
                backoff: tuple[float, float] = (2.0, 30.0)) -> int:
    """Write the node config, run ``flower-supernode`` until it exits or Ctrl-C / SIGTERM; return 0 on a stop.

    A site started before the coordinator registered its key (the SuperNode exits with
    :data:`NOT_ACTIVATED`) is started again after ``backoff[0]`` seconds, doubling up to
    ``backoff[1]``, for at most ``wait`` seconds in all; then a one-line error says what to check."""
    from fedmol.pilot.config import write_toml
    from fedmol.pilot.processes import Processes, log_tail

    parse_address(superlink, "--superlink")
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    argv = _supernode_argv(superlink, write_toml(home / "site.toml", nc), ca, node_key, insecure)
    env = _supernode_env(home, nc)
    (home / "flwr").mkdir(exist_ok=True)
    procs = Processes(home / "logs")
    stop = _StopSignals()
    stop.install()
    try:
        proc, code = _SupernodeRetries(procs, argv, env, stop, superlink=superlink, nc=nc, insecure=insecure,
                                      node_key=node_key, log=log, echo=echo, poll=poll, wait=wait,
                                      backoff=backoff).run(home / "logs" / "supernode.log")
    finally:
        procs.stop_all()
        stop.restore()
        write_json(home / "processes.json", dict(processes=procs.records(), leftovers=procs.leftovers()))
    if stop.signum is not None:
        log(f"stopped ({signal.Signals(stop.signum).name}): the SuperNode and its ClientApps have ended")
        return 0
    if code:
        raise PilotError(f"the SuperNode exited with code {code}; its log {proc.log} ends with:\n{log_tail(proc.log)}")
    return 0


def _supernode_argv(superlink: str, toml: Path, ca: Path | None, node_key: Path | None, insecure: bool) -> list[str]:
    """``flower-supernode``'s command line: the node config ``toml``, TLS (or not) and the node key."""
    from fedmol.pilot.processes import flower_bin, free_port

    argv = [flower_bin("flower-supernode"), "--superlink", superlink, "--node-config", str(toml),
            "--host", "127.0.0.1", "--port", str(free_port("127.0.0.1"))]
    if insecure:
        return argv + ["--insecure"]
    argv += ["--root-certificates", str(ca)]
    if node_key is not None:
        argv += ["--auth-supernode-private-key", str(node_key)]
    return argv


def _supernode_env(home: Path, nc: dict) -> dict[str, str]:
    """The SuperNode's environment: its Flower home, this fedmol first on the path, the site's threads."""
    here = str(Path(fedmol.__file__).resolve().parents[1])
    paths = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    env = {"FLWR_HOME": str(home / "flwr"), "PYTHONPATH": os.pathsep.join(paths),
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25"}
    if int(nc.get("threads", 0)) > 0:
        env.update(OMP_NUM_THREADS=str(nc["threads"]), MKL_NUM_THREADS=str(nc["threads"]))
    return env


class _StopSignals:
    """SIGINT and SIGTERM recorded in ``signum`` (the latest one) between :meth:`install` and :meth:`restore`."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def install(self) -> None:
        self.previous = {sig: signal.signal(sig, self.record) for sig in (signal.SIGINT, signal.SIGTERM)}

    def record(self, signum, _frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class _SupernodeRetries:
    """Runs the SuperNode, echoing its log, until it exits or a stop signal comes; while the coordinator
    has not accepted it (:data:`NOT_ACTIVATED`), starts it again with backoff for at most ``wait`` seconds."""

    procs: Processes
    argv: list[str]
    env: dict[str, str]
    stop: _StopSignals
    superlink: str
    nc: dict
    insecure: bool
    node_key: Path | None
    log: Callable[[str], None]
    echo: Callable[[str], None]
    poll: float
    wait: float
    backoff: tuple[float, float]

    def run(self, log_path: Path):
        """``(the last SuperNode process, its exit code)``: None when a stop signal came before it exited."""
        t0, delay, attempt = time.monotonic(), float(self.backoff[0]), 0
        while True:
            attempt += 1
            start = _size(log_path)
            proc = self.follow(attempt, start)
            code = proc.popen.poll()
            if self.stop.signum is not None or not code or NOT_ACTIVATED not in _read_from(proc.log, start):
                return proc, code
            waited = time.monotonic() - t0
            if waited + delay > self.wait:
                raise PilotError(self.not_accepted(waited, attempt, proc.log))
            self.log(f"the coordinator has not accepted this site yet ('{NOT_ACTIVATED}': its key is not registered "
                     f"yet, or it is not up): trying again in {delay:.0f} s (giving up after {self.wait:.0f} s)")
            if not self.pause(delay):
                return proc, code
            delay = min(delay * 2, float(self.backoff[1]))

    def follow(self, attempt: int, offset: int):
        """Start the SuperNode; echo its log from ``offset`` until it exits or a stop signal comes."""
        proc = self.procs.start("supernode", self.argv, env=self.env)
        self.log(self.started_line(proc, attempt))
        while proc.alive() and self.stop.signum is None:
            offset = _echo_new(proc.log, offset, self.echo)
            time.sleep(self.poll)
        _echo_new(proc.log, offset, self.echo)
        return proc

    def started_line(self, proc, attempt: int) -> str:
        if attempt > 1:
            return f"SuperNode started again (pid {proc.pid}, attempt {attempt})"
        key_note = f", node key {self.node_key}" if self.node_key else ""
        return (f"SuperNode started (pid {proc.pid}) for partner {self.nc['partition-id']}, connecting to "
                f"{self.superlink} ({'INSECURE: no TLS' if self.insecure else 'TLS'}{key_note}); "
                f"log {proc.log}, audit log {Path(self.nc['audit-dir']) / 'audit.jsonl'}; Ctrl-C stops it")

    def not_accepted(self, waited: float, attempts: int, supernode_log: Path) -> str:
        """The one-line error of a site the coordinator never accepted: what to check."""
        key = str(self.node_key) + ".pub" if self.node_key else "none: it must run --no-node-auth"
        return (f"the coordinator at {self.superlink} did not accept this site's SuperNode in {waited:.0f} s "
                f"({attempts} attempts, '{NOT_ACTIVATED}'): check that the coordinator is running (fedmol pilot "
                f"coordinator) and registered this site's public key ({key}), that --superlink is its address and "
                f"port and the firewall lets it through, and that --certs is this pilot's folder (its ca.pem); "
                f"the SuperNode's log: {supernode_log}")

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a stop signal comes first (then False)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.stop.signum is None:
            time.sleep(min(self.poll, max(0.0, end - time.monotonic())))
        return self.stop.signum is None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _echo_new(path: Path, offset: int, echo) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return offset
    end = chunk.rfind(b"\n") + 1
    if end:
        for line in chunk[:end].decode(errors="replace").splitlines():
            echo(line)
    return offset + end
