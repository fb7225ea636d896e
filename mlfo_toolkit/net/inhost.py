"""Run a program inside an emulated host: join its CPU cgroup and network namespace, then exec.

Usage: python -m mlfo_toolkit.net.inhost --pid HOST_PID [--cgroup DIR] -- PROGRAM [ARGS...]
No shell is involved: PROGRAM and ARGS are passed to execvp as they are.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

CLONE_NEWNET = 0x40000000


def setns(fd: int, nstype: int) -> None:
    """setns(2) of the calling thread into the namespace open as `fd`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _enter(pid: int, kind: str, nstype: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
    try:
        setns(fd, nstype)
    except OSError as err:
        raise OSError(err.errno, f"setns into the {kind} namespace of {pid}: {err.strerror}") from None
    finally:
        os.close(fd)


def enter_network_namespace(pid: int) -> None:
    """setns(2) into the network namespace of `pid` (the calling thread; call before any threads)."""
    _enter(pid, "net", CLONE_NEWNET)


def join_cgroup(directory: str) -> None:
    with open(os.path.join(directory, "cgroup.procs"), "w", encoding="ascii") as procs:
        procs.write(str(os.getpid()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlfo_toolkit.net.inhost", description=__doc__)
    parser.add_argument("--pid", type=int, required=True, help="PID of a process in the host's network namespace")
    parser.add_argument("--cgroup", help="cgroup directory to join first (CPU limits)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    if args.cgroup:
        join_cgroup(args.cgroup)
    enter_network_namespace(args.pid)
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"inhost: cannot run {command[0]}: {err.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
