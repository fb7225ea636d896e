"""The guard that ties a Flower process tree to its owner (mlfo_toolkit.util.guard)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import wait_for

# The guarded child: starts a grandchild in a session of its own (as Flower's SuperLink starts a ServerApp), says
# both PIDs, and waits to be killed.
CHILD = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
open(sys.argv[1], "w").write(f"{grandchild.pid}\\n")
time.sleep(120)
"""


def test_a_guard_stops_what_its_child_started_just_before_it_was_killed(tmp_path: Path) -> None:
    """SIGKILL the guarded child right after it started a grandchild (before the guard's periodic look at its
    tree): the guard still stops the grandchild, which the dead child left behind."""
    me = psutil.Process()
    pids = tmp_path / "pids"
    guard = subprocess.Popen([sys.executable, "-m", "mlfo_toolkit.util.guard", "--owner", f"{me.pid}:{me.create_time()}",
                              "--", sys.executable, "-c", CHILD, str(pids)])
    grandchild = None
    try:
        assert wait_for(lambda: pids.exists() and pids.read_text().endswith("\n"), 20)
        grandchild = psutil.Process(int(pids.read_text()))
        child = [p for p in psutil.Process(guard.pid).children() if p.pid != grandchild.pid][0]
        child.kill()  # as a SuperLink killed mid-run
        assert guard.wait(timeout=20) == -signal.SIGKILL & 0xFF  # it ends with its child, and says how the child ended
        assert wait_for(lambda: not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE, 10), \
            "the grandchild outlived its guard"
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
        if grandchild is not None and grandchild.is_running():
            os.kill(grandchild.pid, signal.SIGKILL)
            time.sleep(0.1)
