"""What the benchmarks sample while a job runs: the machine's MemAvailable and load average, and the CPU
seconds the job's processes used by their own accounting (a figure that compares across machines)."""

from __future__ import annotations

import os
import threading
from types import TracebackType

import psutil


class MachineWatch:
    """Samples MemAvailable and the 1-minute load every `interval` seconds in a thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.available_before = psutil.virtual_memory().available
        self.min_available = self.available_before
        self.peak_load = os.getloadavg()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._times_before = os.times()
        self.cpu_seconds = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.min_available = min(self.min_available, psutil.virtual_memory().available)
            self.peak_load = max(self.peak_load, os.getloadavg()[0])

    def __enter__(self) -> MachineWatch:
        self._times_before = os.times()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        # This process and every descendant it (or they) reaped: user + system time. A process that was
        # reparented to init before it ended (a daemon) is not counted.
        after, before = os.times(), self._times_before
        self.cpu_seconds = round(sum(a - b for a, b in zip(after[:4], before[:4])), 2)

    @property
    def drop_gb(self) -> float:
        """How far MemAvailable fell below its value at the start, in GB."""
        return round((self.available_before - self.min_available) / 1e9, 2)
