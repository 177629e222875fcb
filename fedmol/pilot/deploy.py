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
from pathlib import Path

import fedmol
from fedmol.errors import FedmolError
from fedmol.jsonio import write_json
from fedmol.pilot.records import PilotError

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
    from fedmol.data.dataset import load_dataset
    from fedmol.pilot.demo import read_results
    from fedmol.pilot.loopback import LoopbackPilot

    host, port = parse_address(address)
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
    pubs = partner_keys(certs, Path(keys).expanduser().resolve() if keys else None) if (node_auth and not insecure) \
        else []
    out = Path(out).resolve()
    s = plan.settings(out)
    d = plan.doc.dataset
    if s.test_csv:
        test = load_dataset(csv=s.test_csv, smiles_col=s.smiles_col, target_cols=s.target_cols, task=s.task,
                            progress=False)
        log(f"test set {plan.test_csv}: {test.report.valid} valid molecules of {test.report.rows} rows, "
            f"{d.task} on {', '.join(d.target_cols)}")
    else:
        log(f"no test set: the partners' own validation scores are the metric ({d.task} on "
            f"{', '.join(d.target_cols)})")
    work = out / "pilot"
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "pilot_error.json", "progress.jsonl", "inbox.jsonl", "nodes.json"):
        (out / stale).unlink(missing_ok=True)
    (work / "pilot.toml").write_text(plan.path.read_text())
    if run_timeout is None:  # a bound on a run that no longer progresses, generous for real deadlines
        run_timeout = s.connect_timeout + s.round_timeout * (2 * s.rounds + 4) * 2 + 600
    shown = {"rounds": 0, "nodes": False}

    def progress(_pilot) -> None:
        nodes = out / "nodes.json"
        if not shown["nodes"] and nodes.is_file():
            shown["nodes"] = True
            for e in json.loads(nodes.read_text()):
                if e["status"] == "accepted":
                    log(f"partner {e['partition_id']} joined (node {e['node_id']}): {e['n_train']} training, "
                        f"{e['n_valid']} validation molecules, width cap {e['width_cap']:g}")
                else:
                    log(f"node {e['node_id']} REFUSED: {e.get('reason')}")
        prog = out / "progress.jsonl"
        if prog.is_file():
            lines = prog.read_text().splitlines()
            for line in lines[shown["rounds"]:]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line being written: read it next time
                    break
                shown["rounds"] += 1
                log(round_line(row, s.rounds))

    with LoopbackPilot(work, insecure=insecure, node_auth=bool(pubs), certs_dir=certs, threads=s.threads,
                       host=host, port=port, require_certs=True) as pilot:
        pilot.start_superlink()
        log(f"SuperLink listening on {host}:{port} ({'INSECURE: no TLS' if insecure else 'TLS'}"
            f"{', SuperNode authentication' if pubs else ', no SuperNode authentication'}); "
            f"partners connect to <this machine>:{port}")
        for pub in pubs:
            node = pilot.register_key(pub)
            log(f"registered {pub.name}" + (f" (node {node})" if node else ""))
        run_id = pilot.submit(s)
        log(f"run {run_id} submitted: {s.algorithm}, {s.rounds} rounds, waiting up to {s.connect_timeout:g} s "
            f"for {s.partners} partner(s)")
        status = pilot.wait(run_id, run_timeout, on_poll=progress,
                            done=lambda: any((out / f).is_file() for f in ("summary.json", "pilot_error.json")))
        progress(pilot)
        log(f"run {run_id} {status}; stopping the SuperLink")
        run_log = pilot.run_log(run_id) if status != "finished:completed" else ""
    return read_results(out, work, status, run_id, run_log, pilot.procs.leftovers())


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
                audit_dir: Path, valid_csv: Path | None = None, threads: int = 0) -> dict:
    nc = {"partition-id": int(partition_id), "width-cap": float(width_cap), "csv": str(csv.resolve()),
          "smiles-col": smiles_col, "target-cols": target_cols, "task": task, "audit-dir": str(audit_dir.resolve()),
          "threads": int(threads)}
    if valid_csv is not None:
        nc["valid-csv"] = str(valid_csv.resolve())
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
    from fedmol.pilot.processes import Processes, flower_bin, free_port, log_tail

    parse_address(superlink, "--superlink")
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    toml = write_toml(home / "site.toml", nc)
    argv = [flower_bin("flower-supernode"), "--superlink", superlink, "--node-config", str(toml),
            "--host", "127.0.0.1", "--port", str(free_port("127.0.0.1"))]
    if insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(ca)]
        if node_key is not None:
            argv += ["--auth-supernode-private-key", str(node_key)]
    here = str(Path(fedmol.__file__).resolve().parents[1])
    paths = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    env = {"FLWR_HOME": str(home / "flwr"), "PYTHONPATH": os.pathsep.join(paths),
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25"}
    if int(nc.get("threads", 0)) > 0:
        env.update(OMP_NUM_THREADS=str(nc["threads"]), MKL_NUM_THREADS=str(nc["threads"]))
    (home / "flwr").mkdir(exist_ok=True)
    procs = Processes(home / "logs")
    stop: dict = {"sig": None}

    def on_signal(signum, _frame):
        stop["sig"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0, delay, attempt = time.monotonic(), float(backoff[0]), 0
    try:
        while True:
            attempt += 1
            start = _size(home / "logs" / "supernode.log")
            proc = procs.start("supernode", argv, env=env)
            if attempt == 1:
                key_note = f", node key {node_key}" if node_key else ""
                log(f"SuperNode started (pid {proc.pid}) for partner {nc['partition-id']}, connecting to {superlink} "
                    f"({'INSECURE: no TLS' if insecure else 'TLS'}{key_note}); "
                    f"log {proc.log}, audit log {Path(nc['audit-dir']) / 'audit.jsonl'}; Ctrl-C stops it")
            else:
                log(f"SuperNode started again (pid {proc.pid}, attempt {attempt})")
            offset = start
            while proc.alive() and stop["sig"] is None:
                offset = _echo_new(proc.log, offset, echo)
                time.sleep(poll)
            _echo_new(proc.log, offset, echo)
            code = proc.popen.poll()
            if stop["sig"] is not None or not code or NOT_ACTIVATED not in _read_from(proc.log, start):
                break
            waited = time.monotonic() - t0
            if waited + delay > wait:
                raise PilotError(
                    f"the coordinator at {superlink} did not accept this site's SuperNode in {waited:.0f} s "
                    f"({attempt} attempts, '{NOT_ACTIVATED}'): check that the coordinator is running (fedmol pilot "
                    f"coordinator) and registered this site's public key "
                    f"({str(node_key) + '.pub' if node_key else 'none: it must run --no-node-auth'}), that "
                    f"--superlink is its address and port and the firewall lets it through, and that --certs is "
                    f"this pilot's folder (its ca.pem); the SuperNode's log: {proc.log}")
            log(f"the coordinator has not accepted this site yet ('{NOT_ACTIVATED}': its key is not registered "
                f"yet, or it is not up): trying again in {delay:.0f} s (giving up after {wait:.0f} s)")
            end = time.monotonic() + delay
            while time.monotonic() < end and stop["sig"] is None:
                time.sleep(min(poll, max(0.0, end - time.monotonic())))
            if stop["sig"] is not None:
                break
            delay = min(delay * 2, float(backoff[1]))
    finally:
        procs.stop_all()
        for sig, h in previous.items():
            signal.signal(sig, h)
        write_json(home / "processes.json", dict(processes=procs.records(), leftovers=procs.leftovers()))
    if stop["sig"] is not None:
        log(f"stopped ({signal.Signals(stop['sig']).name}): the SuperNode and its ClientApps have ended")
        return 0
    if code:
        raise PilotError(f"the SuperNode exited with code {code}; its log {proc.log} ends with:\n{log_tail(proc.log)}")
    return 0


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
