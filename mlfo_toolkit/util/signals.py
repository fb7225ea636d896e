"""One way to stop on SIGTERM: as Ctrl-C does, so every `finally` stops what was started."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def terminate_as_interrupt(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (as Ctrl-C does),
    so what the block started is stopped by its `finally` clauses; the previous handlers come back after.
    Outside the main thread (where Python cannot set handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {number: signal.signal(number, interrupt) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
