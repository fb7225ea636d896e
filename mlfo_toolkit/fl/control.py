"""Changes to a running FL run, from the MLFO's closed loop to mlfo's ServerApp, between rounds.

The FL server's agent writes them into the run's `control.json` (`POST /control`); the ServerApp reads
the file before every round and while it waits for replies (cheaply: only when the file changed):

* `exclude_nodes`: SuperNodes known to be gone (their client was lost, restarted elsewhere or taken
  out): never sampled again, and a round stops waiting for their replies at once. Flower's SuperLink
  would go on sampling a SIGKILLed SuperNode until its heartbeat expires (2 x 30 s).
* `fraction_fit`, `min_fit`, `min_available`: the strategy's sampling for the next rounds.
* `rounds`: the run's length (longer or shorter, never below the rounds already done).
* `stop`: end now, with this reason (a round under way is dropped, not aggregated).
* `hold`: do not start round `hold` or a later one yet (0: go on). An experiment holds each round it
  has events for until they fired, so an event lands in its round however fast rounds are; a hold
  never lasts longer than the run's round timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfo_toolkit.util.files import write_json_atomically
from mlfo_toolkit.util.linux import FolderChanges

FIELDS = ("exclude_nodes", "fraction_fit", "min_fit", "min_available", "rounds", "stop", "hold")


@dataclass
class Settings:
    """What the control file says now."""

    exclude_nodes: set[int] = field(default_factory=set)
    fraction_fit: float | None = None
    min_fit: int | None = None
    min_available: int | None = None
    rounds: int | None = None
    stop: str | None = None
    hold: int | None = None  # rounds from this one on wait (None or 0: none do)

    def to_dict(self) -> dict[str, Any]:
        return {"exclude_nodes": sorted(self.exclude_nodes), "fraction_fit": self.fraction_fit, "min_fit": self.min_fit,
                "min_available": self.min_available, "rounds": self.rounds, "stop": self.stop, "hold": self.hold}

    def holds(self, server_round: int) -> bool:
        """Whether round `server_round` must wait before it starts."""
        return bool(self.hold) and self.hold is not None and server_round >= self.hold and not self.stop


class RunControl:
    """The ServerApp's view of its control file (no file: nothing changed)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._seen: tuple[int, int] | None = None
        self._settings = Settings()

    def read(self) -> Settings:
        if self.path is None:
            return self._settings
        try:
            info = os.stat(self.path)
        except OSError:
            return self._settings
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._seen:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return self._settings  # being replaced right now: the next read gets it
            self._seen = stamp
            self._settings = settings_from(data)
        return self._settings

    @contextlib.contextmanager
    def changes(self, poll_seconds: float, sleep: Callable[[float], None] = time.sleep) -> Iterator[Callable[[float], None]]:
        """A `wait(at_most)` that returns once the control file may have changed, or after `at_most` seconds.

        Woken by inotify when the file is written (the watch is set before the caller's next `read()`, so no change
        falls between the two); where inotify is unavailable, or there is no file, it sleeps `poll_seconds` (at most
        `at_most`) with `sleep`, as it does whenever `sleep` is not the real clock's (a test's clock passes its time
        only in its own sleep). A held round waits here: polled every 50 ms, the seed's five held ServerApps used
        0.019 cores, woken, 0.006 (bench/idle_bench.py)."""
        watch = None
        if self.path is not None and sleep is time.sleep:
            try:
                watch = FolderChanges(self.path.parent)
            except OSError:
                watch = None
        name = self.path.name if self.path is not None else ""

        def wait(at_most: float) -> None:
            if watch is None:
                sleep(max(0.0, min(poll_seconds, at_most)))
                return
            deadline = time.monotonic() + max(0.0, at_most)
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([watch.fd], [], [], left)
                if readable and name in watch.drain():
                    return

        try:
            yield wait
        finally:
            if watch is not None:
                watch.close()


def settings_from(data: dict[str, Any]) -> Settings:
    def number(key: str, kind: type) -> Any:
        value = data.get(key)
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return Settings(
        exclude_nodes={int(n) for n in data.get("exclude_nodes") or [] if isinstance(n, int) and not isinstance(n, bool)},
        fraction_fit=number("fraction_fit", float), min_fit=number("min_fit", int), min_available=number("min_available", int),
        rounds=number("rounds", int), stop=str(data["stop"]) if data.get("stop") else None, hold=number("hold", int),
    )


# The agent serves control requests in parallel threads (the closed loop and the client watch may change a run
# at once): a read-merge-write of the file is done by one of them at a time, so no change overwrites another.
_UPDATING = threading.Lock()


def update_control(path: Path, changes: dict[str, Any]) -> Settings:
    """Merge changes into a control file (excluded nodes add up; a value replaces the earlier one)."""
    with _UPDATING:
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = {}
        merged = {**current, **{k: v for k, v in changes.items() if k in FIELDS and k != "exclude_nodes" and v is not None}}
        merged["exclude_nodes"] = sorted({*current.get("exclude_nodes", []), *changes.get("exclude_nodes", [])})
        write_json_atomically(path, merged)
    return settings_from(merged)
