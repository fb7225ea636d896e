"""Run a program inside an emulated host: join its cgroups (CPU, memory) and network namespace, then exec.

Usage: python -m mlfo_toolkit.net.inhost --pid HOST_PID [--cgroup DIR ...] -- PROGRAM [ARGS...]
No shell is involved: PROGRAM and ARGS are passed to execvp as they are.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlfo_toolkit.util.linux import enter_network_namespace, join_cgroup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlfo_toolkit.net.inhost", description=__doc__)
    parser.add_argument("--pid", type=int, required=True, help="PID of a process in the host's network namespace")
    parser.add_argument("--cgroup", action="append", default=[], help="cgroup directory to join first (CPU, memory limits)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    for cgroup in args.cgroup:
        join_cgroup(cgroup)
    enter_network_namespace(args.pid)
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"inhost: cannot run {command[0]}: {err.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
