"""What the benchmarks sample while a job runs: the machine's MemAvailable and load average."""

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

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.min_available = min(self.min_available, psutil.virtual_memory().available)
            self.peak_load = max(self.peak_load, os.getloadavg()[0])

    def __enter__(self) -> MachineWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def drop_gb(self) -> float:
        """How far MemAvailable fell below its value at the start, in GB."""
        return round((self.available_before - self.min_available) / 1e9, 2)
