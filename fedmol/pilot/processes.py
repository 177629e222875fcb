"""Starting and stopping Flower's processes (SuperLink, SuperNodes) safely.

Every process leads a process group of its own, holding everything it spawns (SuperExec, ServerApp,
ClientApp processes), with its output in a log file, and is ended by its group id: SIGTERM, then
SIGKILL after a grace period. It stays in the caller's session: a terminal's Ctrl-C does not reach
it (it is not in the foreground group), and it keeps the caller's scheduling priority, so ``nice
fedmol pilot demo`` lowers the whole federation's (Linux's autogroup scheduling shares the CPU
between sessions whatever the niceness inside them: a session per process would escape it).
:func:`group_members` lists what is still alive in a group (tests use it to check nothing is left
behind).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedmol.pilot.records import PilotError


def flower_bin(name: str) -> str:
    """The path of a Flower executable, preferring the one beside this Python."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if not found:
        raise PilotError(f"{name} not found: install flwr (pip install 'flwr==1.42.*') in this environment")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (bind to port 0 and let the OS choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    out = []
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux: ask the kernel whether the group exists
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) > 2 and rest[0] != "Z" and int(rest[2]) == pgid:
            out.append(int(d.name))
    return out


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen
    log: Path
    pgid: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Processes:
    """The processes one pilot started (ended in reverse order by :meth:`stop_all`)."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd: str | Path | None = None) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, cwd=cwd, process_group=0)
        p = Proc(name, argv, popen, log, popen.pid)
        self.procs.append(p)
        return p

    def get(self, name: str) -> Proc:
        for p in self.procs:
            if p.name == name:
                return p
        raise KeyError(name)

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything in its group at once (a machine that dies)."""
        p = self.get(name)
        _signal_group(p.pgid, signal.SIGKILL)
        p.popen.wait(timeout=10)

    def stop(self, p: Proc, grace: float = 8.0) -> None:
        if group_members(p.pgid) or p.alive():
            _signal_group(p.pgid, signal.SIGTERM)
            end = time.monotonic() + grace
            while time.monotonic() < end and (p.alive() or group_members(p.pgid)):
                time.sleep(0.1)
                p.popen.poll()
            if p.alive() or group_members(p.pgid):
                _signal_group(p.pgid, signal.SIGKILL)
        try:
            p.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass

    def stop_all(self, grace: float = 8.0) -> None:
        """End every group at once: SIGTERM, up to ``grace`` seconds to exit, then SIGKILL."""
        live = [p for p in self.procs if p.alive() or group_members(p.pgid)]
        for p in reversed(live):
            _signal_group(p.pgid, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and any(p.popen.poll() is None or group_members(p.pgid) for p in live):
            time.sleep(0.1)
        for p in live:
            if p.popen.poll() is None or group_members(p.pgid):
                _signal_group(p.pgid, signal.SIGKILL)
        for p in self.procs:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass

    def leftovers(self) -> dict[str, list[int]]:
        return {p.name: m for p in self.procs if (m := group_members(p.pgid))}

    def records(self) -> list[dict]:
        return [dict(name=p.name, pid=p.pid, pgid=p.pgid, log=str(p.log), argv=p.argv,
                     returncode=p.popen.poll()) for p in self.procs]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_listening(proc: Proc, host: str, port: int, timeout: float = 60.0) -> None:
    """Wait until ``proc`` listens on ``host:port``; an exit (even with code 0) or a timeout is an error."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.alive():
            raise PilotError(f"{proc.name} exited with code {proc.popen.returncode} before listening on "
                             f"{host}:{port} (port busy?); its log {proc.log} ends with:\n{log_tail(proc.log)}")
        if is_listening(host, port):
            time.sleep(0.3)  # still ours? a process that lost the port race exits now
            if proc.alive():
                return
        time.sleep(0.2)
    raise PilotError(f"{proc.name} did not listen on {host}:{port} within {timeout:g} s; log {proc.log}:\n"
                     f"{log_tail(proc.log)}")
