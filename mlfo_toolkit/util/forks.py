"""Forked children that run one body and end there, and command lines run inside such a child.

The service launcher, the ClientApp executor and the FL server it forks all start their work by
forking a pre-imported Python; each child must end in the child, whatever happens, with the exit code
a process of its own would have had.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable

from mlfo_toolkit.util.guard import die_with_parent


def fork_child(body: Callable[[], int], *, tied: bool = False) -> int:
    """Fork; the child runs `body` and ends with its code, never returning into the caller (an exception is printed
    and ends it with 1). `tied`: the child gets SIGTERM when this process dies, and ends at once if it already has.
    Returns the child's PID."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        if tied:
            die_with_parent()
        if not tied or os.getppid() == parent:
            code = body()
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happens
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        _exit_as(code)
    return pid  # not reached: _exit_as ends the child


def exit_code(main: Callable[[], object]) -> int:
    """Run a command line's main in this process; the exit code a process of its own would end with (SystemExit's:
    0 for none, 1 for a message)."""
    try:
        main()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def _exit_as(code: int) -> None:
    """End a forked child with `code`; a negative one (-N: stopped by signal N) by that signal, as a process would."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    if code < 0:
        with contextlib.suppress(Exception):
            signal.signal(-code, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
            os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)
