"""A SuperLink, SuperNodes and ``flwr run`` as real processes, ended safely.

:class:`LoopbackPilot` is what ``fedmol pilot demo`` and the tests use for a whole pilot on one
machine (127.0.0.1, free ports the OS chose), and what ``fedmol pilot coordinator`` uses for the
coordinator's side of a real pilot (a SuperLink on ``host:port``, the partners' public keys
registered, no local sites). Use it as a context manager: every process it started is ended (by
process group) when the block exits, also on error.

TLS is the default (certificates from :func:`fedmol.pilot.certs.make_certs`); ``insecure=True``
turns it off explicitly. With TLS, SuperNode authentication is on by default: each site's public
key is registered at the SuperLink (``flwr supernode register``) before the site starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import fedmol
from fedmol.jsonio import write_json
from fedmol.pilot.certs import make_certs, make_node_key
from fedmol.pilot.config import PilotSettings, write_app, write_toml
from fedmol.pilot.processes import Processes, flower_bin, free_port, is_listening, log_tail, wait_listening
from fedmol.pilot.records import PilotError

CONNECTION = "pilot"
HOST = "127.0.0.1"
FINISHED = "finished"


class LoopbackPilot:
    """``host``/``port``: where the SuperLink listens (default 127.0.0.1 and a free port; ``0.0.0.0``
    listens on every interface, the local ``flwr`` CLI then connects through 127.0.0.1).
    ``require_certs``: a missing certificate in ``certs_dir`` is an error (else one is made)."""

    def __init__(self, work: str | Path, insecure: bool = False, node_auth: bool | None = None,
                 certs_dir: str | Path | None = None, threads: int = 1, poll_interval: float = 0.25,
                 host: str = HOST, port: int | None = None, require_certs: bool = False):
        self.host, self.fixed_port = host, port
        self.connect_host = HOST if host in ("0.0.0.0", "::", "") else host
        self.require_certs = require_certs
        self.work = Path(work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.insecure = insecure
        self.node_auth = (not insecure) if node_auth is None else node_auth
        if self.node_auth and insecure:
            raise PilotError("SuperNode authentication needs TLS: drop --insecure")
        self.threads = threads
        self.procs = Processes(self.work / "logs")
        self.certs = None
        if not insecure:
            self.certs = self._certs(certs_dir)
        self.port: int | None = None
        self.superlink = None
        self.cli_home = self.work / "cli"
        # every process runs the fedmol this one runs (not another copy an install may point to)
        here = str(Path(fedmol.__file__).resolve().parents[1])
        paths = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
        self.env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(poll_interval), "PYTHONPATH": os.pathsep.join(paths)}
        if threads > 0:
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.sites: dict[str, dict] = {}
        self.killed: set[str] = set()

    # -- context manager --------------------------------------------------------------------------
    def __enter__(self) -> "LoopbackPilot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.procs.stop_all()
        write_json(self.work / "processes.json",
                   dict(processes=self.procs.records(), leftovers=self.procs.leftovers()))

    # -- certificates -----------------------------------------------------------------------------
    def _certs(self, certs_dir) -> dict:
        d = Path(certs_dir).resolve() if certs_dir else self.work / "certs"
        if (d / "ca.pem").is_file() and (d / "server.pem").is_file() and (d / "server.key").is_file():
            return dict(ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key", dir=d)
        if self.require_certs:
            missing = [n for n in ("ca.pem", "server.pem", "server.key") if not (d / n).is_file()]
            raise PilotError(f"{d}: missing {', '.join(missing)}: make the certificates with `fedmol pilot certs "
                             f"--out {d} --host <this machine's name>` (or run with --insecure on a test network)")
        c = make_certs(d, 0)
        c["dir"] = d
        return c

    def _tls_args(self, server: bool) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        c = self.certs
        if server:
            return ["--ssl-ca-certfile", str(c["ca"]), "--ssl-certfile", str(c["server_cert"]),
                    "--ssl-keyfile", str(c["server_key"])]
        return ["--root-certificates", str(c["ca"])]

    # -- SuperLink --------------------------------------------------------------------------------
    def start_superlink(self, attempts: int = 3) -> int:
        last = None
        if self.fixed_port is not None:
            attempts = 1
            if is_listening(self.connect_host, self.fixed_port):
                raise PilotError(f"port {self.fixed_port} is busy on this machine (another SuperLink?): "
                                 "stop it or choose another --address")
        for i in range(attempts):
            port = self.fixed_port if self.fixed_port is not None else free_port(HOST)
            argv = [flower_bin("flower-superlink"), "--host", self.host, "--port", str(port),
                    "--disable-runtime-dependency-installation", *self._tls_args(server=True)]
            if self.node_auth:
                argv.append("--enable-supernode-auth")
            home = self.work / "superlink"
            home.mkdir(exist_ok=True)
            proc = self.procs.start(f"superlink{'' if i == 0 else i}", argv, env={**self.env, "FLWR_HOME": str(home)})
            try:
                wait_listening(proc, self.connect_host, port, timeout=90)
            except PilotError as e:
                last = e
                self.procs.stop(proc)
                continue
            self.port, self.superlink = port, proc
            self._write_cli_config()
            return port
        raise PilotError(f"the SuperLink did not start: {last}")

    def _write_cli_config(self) -> None:
        conn = {"address": f"{self.connect_host}:{self.port}"}
        if self.insecure:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.certs["ca"])
        write_toml(self.cli_home / "config.toml", conn, header=f"superlink.{CONNECTION}")

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this pilot's SuperLink."""
        env = {**os.environ, **self.env, "FLWR_HOME": str(self.cli_home)}
        return subprocess.run([flower_bin("flwr"), *args], capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def _flwr_json(self, *args: str, timeout: float = 120) -> dict:
        r = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            start = r.stdout.index("{")
            doc = json.loads(r.stdout[start:])
        except ValueError:
            raise PilotError(f"flwr {' '.join(args)} failed (exit {r.returncode}): {r.stdout[-800:]} {r.stderr[-800:]}")
        if not doc.get("success", False):
            raise PilotError(f"flwr {' '.join(args)} failed: {doc.get('error-message', doc)}")
        return doc

    def register_key(self, pub: str | Path) -> str:
        """Register a SuperNode's public key at the SuperLink (node authentication); returns its node id."""
        doc = self._flwr_json("supernode", "register", str(pub), CONNECTION)
        return str(doc.get("node-id", ""))

    # -- sites ------------------------------------------------------------------------------------
    def add_site(self, name: str, node_config: dict, env: dict | None = None, register: bool = True) -> dict:
        """Start one SuperNode (a partner site) with its own folder, node config and (with auth) key."""
        if self.port is None:
            raise PilotError("start the SuperLink first")
        folder = self.work / "sites" / name
        folder.mkdir(parents=True, exist_ok=True)
        nc = {"audit-dir": str(folder / "audit"), **({"threads": self.threads} if self.threads > 0 else {}),
              **node_config}
        toml = write_toml(folder / "site.toml", nc)
        argv = [flower_bin("flower-supernode"), "--superlink", f"{self.connect_host}:{self.port}", "--host", HOST,
                "--port", str(free_port(HOST)), "--node-config", str(toml), "--max-retries", "10",
                *self._tls_args(server=False)]
        if self.node_auth:
            key, pub = make_node_key(folder / "node-key")
            if register:
                self.register_key(pub)
            argv += ["--auth-supernode-private-key", str(key)]
        home = folder / "flwr-home"
        home.mkdir(exist_ok=True)
        proc = self.procs.start(f"site-{name}", argv, env={**self.env, "FLWR_HOME": str(home), **(env or {})})
        site = dict(name=name, folder=folder, node_config=nc, proc=proc, audit=Path(nc["audit-dir"]) / "audit.jsonl")
        self.sites[name] = site
        return site

    def kill_site(self, name: str) -> None:
        """The machine of site ``name`` dies: SIGKILL its SuperNode and everything it started."""
        self.killed.add(name)
        self.procs.kill(f"site-{name}")

    # -- runs -------------------------------------------------------------------------------------
    def submit(self, settings: PilotSettings, app_dir: str | Path | None = None) -> str:
        app = write_app(Path(app_dir) if app_dir else self.work / "app")
        run_toml = write_toml(self.work / "run.toml", settings.to_run_config())
        doc = self._flwr_json("run", str(app), CONNECTION, "--run-config", str(run_toml))
        return str(doc["run-id"])

    def status(self, run_id: str) -> str:
        doc = self._flwr_json("ls", CONNECTION, "--run-id", str(run_id))
        runs = doc.get("runs") or []
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def run_log(self, run_id: str) -> str:
        """Flower's log of a run (the ServerApp's output, tracebacks included), saved in logs/."""
        try:
            r = self.flwr("log", str(run_id), CONNECTION, "--show", timeout=60)
        except subprocess.TimeoutExpired:
            return ""
        text = r.stdout + r.stderr
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        (self.work / "logs" / f"run-{run_id}.log").write_text(text)
        return text

    def check_sites(self) -> None:
        """A site that died without being killed on purpose is an error (its log says why)."""
        for name, site in self.sites.items():
            proc = site["proc"]
            if name not in self.killed and not proc.alive():
                raise PilotError(f"site {name}'s SuperNode exited (code {proc.popen.returncode}); its log "
                                 f"{proc.log} ends with:\n{log_tail(proc.log)}")

    def wait(self, run_id: str, timeout: float, done=None, on_poll=None, interval: float = 0.5,
             status_every: float = 20.0) -> str:
        """Wait until the run finishes (``finished:completed`` / ``:failed`` / ``:stopped``).

        ``done()`` (cheap, e.g. "the result file exists") says when to ask the SuperLink for the
        status; otherwise it is asked every ``status_every`` seconds (each ``flwr ls`` costs a
        Python start-up)."""
        end = time.monotonic() + timeout
        status, last = "unknown", time.monotonic()
        while time.monotonic() < end:
            if on_poll is not None:
                on_poll(self)
            if self.superlink is not None and not self.superlink.alive():
                raise PilotError(f"the SuperLink exited (code {self.superlink.popen.returncode}); log:\n"
                                 f"{log_tail(self.superlink.log)}")
            self.check_sites()
            finished = done is not None and done()
            if finished or time.monotonic() - last >= status_every:
                last = time.monotonic()
                status = self.status(run_id)
                if status.startswith(FINISHED):
                    return status
            time.sleep(interval if not finished else 1.0)
        self.flwr("stop", str(run_id), CONNECTION, timeout=60)
        raise PilotError(f"run {run_id} did not finish within {timeout:g} s (last status {status}); stopped it")
