"""Which TCP ports listen in a process's network namespace (sock_diag), as `topo up` waits for its services."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from mlfo_toolkit.util.linux import listening_tcp_ports


def test_ports_listening_here_are_seen_and_closed_ones_are_not() -> None:
    with socket.socket() as four, socket.socket(socket.AF_INET6) as six, socket.socket() as bound_only:
        four.bind(("127.0.0.1", 0))
        four.listen()
        six.bind(("::1", 0))
        six.listen()
        bound_only.bind(("127.0.0.1", 0))  # bound, never listening: nothing can connect to it yet
        ports = listening_tcp_ports(os.getpid())
        assert four.getsockname()[1] in ports
        assert six.getsockname()[1] in ports
        assert bound_only.getsockname()[1] not in ports
        closed = four.getsockname()[1]
    assert closed not in listening_tcp_ports(os.getpid())


def test_a_process_that_is_gone_listens_on_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert listening_tcp_ports(child.pid) == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="entering another network namespace needs root")
def test_ports_of_another_namespace_are_its_own() -> None:
    """A listener in a namespace of its own is seen there, and not in this one (nor the other way round)."""
    script = ("import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); "
              "print(s.getsockname()[1], flush=True); time.sleep(30)")
    with socket.socket() as here:
        here.bind(("127.0.0.1", 0))
        here.listen()
        inside = subprocess.Popen(["unshare", "--net", sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert inside.stdout is not None
            port = int(inside.stdout.readline())  # printed once listening, by the Python unshare became
            assert os.stat(f"/proc/{inside.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
            theirs = listening_tcp_ports(inside.pid)
            assert port in theirs
            assert here.getsockname()[1] not in theirs
        finally:
            inside.kill()
            inside.wait()
