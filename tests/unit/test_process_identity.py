"""How mlfo knows a process it started again (PIDs are reused): its start in seconds since boot, which a step of the
wall clock does not move (a VM resumed, NTP)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from mlfo_toolkit.util.processes import same_process, start_time, stop_trees


def test_a_process_is_known_by_its_start_since_boot() -> None:
    me = os.getpid()
    assert start_time(me) == pytest.approx(psutil.Process(me).create_time() - psutil.boot_time(), abs=0.05)
    assert same_process(me, start_time(me))
    assert not same_process(me, start_time(me) + 1.0)  # another process that got this PID later


def test_a_step_of_the_wall_clock_does_not_make_a_process_a_stranger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's boot time, as the kernel reports it, moves with the wall clock: 22 s once, and `topo down` took
    every service for another process and left them running. A start since boot stays the same."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        recorded = start_time(child.pid)
        wall = psutil.Process(child.pid).create_time()
        stepped = psutil.boot_time() + 22.0
        monkeypatch.setattr(psutil, "boot_time", lambda: stepped)
        monkeypatch.setattr("psutil._pslinux.boot_time", lambda: stepped)
        assert not same_process(child.pid, wall)  # what mlfo recorded before: now a stranger
        assert same_process(child.pid, recorded)
        assert stop_trees([(child.pid, recorded)], timeout=5) == [child.pid]
        assert child.wait(5) is not None
    finally:
        child.kill()
        child.wait()


def test_records_of_an_older_mlfo_in_wall_clock_time_are_still_known() -> None:
    me = psutil.Process()
    assert same_process(me.pid, me.create_time())
    assert not same_process(me.pid, me.create_time() - 5.0)


def test_a_process_that_is_gone_has_no_start() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(psutil.NoSuchProcess):
        start_time(child.pid)
    assert not same_process(child.pid, 1.0)
