"""A forked child ends in the child, with the exit code a process of its own would have."""

from __future__ import annotations

import os
import signal
import sys

from mlfo_toolkit.util.forks import exit_code, fork_child


def _status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_child_ends_with_its_bodys_code_by_signal_or_by_exception() -> None:
    assert _status(fork_child(lambda: 3)) == 3
    assert _status(fork_child(lambda: -signal.SIGTERM, tied=True)) == -signal.SIGTERM  # stopped by a signal, as a process

    def boom() -> int:
        raise RuntimeError("printed, and the child ends with 1")

    assert _status(fork_child(boom)) == 1


def test_a_command_lines_exit_code_is_what_its_process_would_end_with() -> None:
    assert exit_code(lambda: None) == 0
    assert exit_code(lambda: sys.exit(4)) == 4
    assert exit_code(lambda: sys.exit()) == 0
    assert exit_code(lambda: sys.exit("a message")) == 1
