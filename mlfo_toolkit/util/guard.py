"""`python -m mlfo_toolkit.util.guard --owner PID:START -- ARGV...`: run ARGV and tie its life to an owner.

The node agent starts Flower's SuperLink and `flwr run` in sessions of their own (Flower detaches
its SuperExec further still), so a SIGKILLed agent used to leave them training. Each runs under
this guard instead: it remembers every descendant while the parent links exist and, when the
owner process is gone (or the child ends, or it gets SIGTERM), stops that whole tree by PID.
The guard is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): a descendant whose parent died (a
ServerApp whose SuperLink was killed, started after the guard last looked) becomes the guard's
child, not init's, so the last look finds it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

import psutil

from mlfo_toolkit.util.processes import end_processes, same_process

POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# Listing descendants scans every process on the machine (this kernel has no /proc/PID/task/*/children),
# about 400 at the seed's scale: do it rarely. The tree is walked once more at the end, while the
# child still holds it together; the periodic walk only covers a child that exits on its own.
REMEMBER_SECONDS = 10.0


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the guard dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def become_subreaper() -> None:
    """Orphaned descendants of this process become its children (Linux 3.4+), not init's."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


def guard(owner: tuple[int, float], argv: list[str]) -> int:
    become_subreaper()
    child = subprocess.Popen(argv, preexec_fn=die_with_parent)  # noqa: PLW1509 (no threads here yet)
    known: dict[int, psutil.Process] = {}
    stopping = False

    def remember() -> None:
        try:
            descendants = psutil.Process(os.getpid()).children(recursive=True)
        except psutil.Error:
            return
        for proc in descendants:
            known.setdefault(proc.pid, proc)
            try:
                if proc.pid != child.pid and proc.ppid() == os.getpid() and proc.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(proc.pid, os.WNOHANG)  # an orphan that came to the guard and ended: reap it
                    known.pop(proc.pid, None)
            except (psutil.Error, ChildProcessError):
                pass

    def stop_all() -> None:
        remember()
        end_processes(list(known.values()), timeout=5.0)

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    remembered = 0.0
    while True:
        if time.monotonic() - remembered >= REMEMBER_SECONDS:
            remember()
            remembered = time.monotonic()
        code = child.poll()
        if code is not None or stopping or not same_process(*owner):
            stop_all()
            child.wait()
            return child.returncode if code is not None else -signal.SIGTERM
        time.sleep(POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--owner", required=True, help="PID:START_TIME of the process whose death ends ARGV")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    pid, _, start = args.owner.partition(":")
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        parser.error("no command given after --")
    sys.exit(guard((int(pid), float(start)), argv) & 0xFF)


if __name__ == "__main__":
    main()
