"""Process handling: free ports, a listener that exits is an error, whole groups are ended, the
caller's session and priority are kept."""

import os
import sys
import time

import pytest

from fedmol.pilot.processes import Processes, free_port, group_members, is_listening, wait_listening
from fedmol.pilot.records import PilotError


def test_free_port_is_free():
    port = free_port()
    assert 1024 < port < 65536 and not is_listening("127.0.0.1", port)


def test_exit_before_listening_is_an_error(tmp_path):
    procs = Processes(tmp_path)
    p = procs.start("quits", [sys.executable, "-c", "print('port busy'); raise SystemExit(0)"])
    with pytest.raises(PilotError, match="exited with code 0 before listening"):
        wait_listening(p, "127.0.0.1", free_port(), timeout=30)
    procs.stop_all()


def test_listening_process_is_found_and_whole_group_stopped(tmp_path):
    port = free_port()
    code = ("import socket, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
            "time.sleep(600)\n")
    procs = Processes(tmp_path)
    p = procs.start("server", [sys.executable, "-c", code])
    wait_listening(p, "127.0.0.1", port, timeout=60)
    end = time.monotonic() + 30
    while len(group_members(p.pgid)) < 2 and time.monotonic() < end:
        time.sleep(0.1)
    assert len(group_members(p.pgid)) == 2  # the server and the child it spawned
    procs.stop_all()
    assert group_members(p.pgid) == [] and procs.leftovers() == {}
    assert (tmp_path / "server.log").is_file()


def test_a_process_leads_its_group_in_the_callers_session_at_its_priority(tmp_path):
    """Its own group (ended as one), but no session of its own: a session of its own would escape the
    caller's priority under Linux's autogroup scheduling (``nice fedmol pilot demo`` would lower nothing)."""
    procs = Processes(tmp_path)
    p = procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert os.getpgid(p.pid) == p.pid != os.getpgid(0)
        assert os.getsid(p.pid) == os.getsid(0)
        assert os.getpriority(os.PRIO_PROCESS, p.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        procs.stop_all()
    assert group_members(p.pgid) == []
