"""An experiment's timeline during one run: events fired as FL rounds begin (or after seconds), each
recorded with when it fired, the round and phase it fell into, and what it did."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from mlfo_toolkit.errors import MlfoError
from mlfo_toolkit.experiments.spec import Event
from mlfo_toolkit.orchestrator.records import FlRound
from mlfo_toolkit.orchestrator.sending import SentCohort
from mlfo_toolkit.util.progress import Progress


class Timeline:
    """Fires an experiment's events during one run and records each: when, and what it did."""

    def __init__(self, events: list[Event], act: Callable[[Event], dict[str, Any]],
                 hold: Callable[[str, int], None] | None = None) -> None:
        self.pending = list(enumerate(events))
        self.act = act
        # hold(cohort, round): the cohort's FL server does not start that round, or a later one, until told
        # otherwise (0: go on). Each round with events is held until they fired, however fast rounds are.
        self.hold = hold
        self.records: list[dict[str, Any]] = []
        self.started = time.time()
        self._lock = threading.Lock()

    def held_round(self, cohort: str) -> int:
        """The next round of `cohort` with an event still to fire (0: none)."""
        with self._lock:
            rounds = [e.at.round for _, e in self.pending if e.at.round is not None and e.at.cohort == cohort]
        return min(rounds, default=0)

    def cohorts_with_rounds(self) -> list[str]:
        with self._lock:
            return sorted({str(e.at.cohort) for _, e in self.pending if e.at.round is not None and e.at.cohort})

    def _release(self, cohort: str) -> None:
        if self.hold is not None:
            self.hold(cohort, self.held_round(cohort))

    def due(self, *, cohort: str | None = None, starting_round: int | None = None) -> None:
        """Fire what is due: round events as that round of that cohort starts, time events once their time came."""
        now = time.time()
        with self._lock:
            ready = [(i, e) for i, e in self.pending
                     if (e.at.round is not None and cohort == e.at.cohort and starting_round is not None and starting_round >= e.at.round)
                     or (e.at.seconds is not None and now - self.started >= e.at.seconds)]
            self.pending = [(i, e) for i, e in self.pending if (i, e) not in ready]
        for index, event in ready:
            fired = time.time()
            try:
                effect = self.act(event)
                ok = True
            except MlfoError as err:
                effect, ok = {"error": err.message}, False
            except OSError as err:  # e.g. a process or interface gone under the event
                effect, ok = {"error": str(err)}, False
            self.records.append({"index": index, "kind": event.kind, "at": event.at.model_dump(exclude_none=True),
                                 "what": jsonable(getattr(event, event.kind)), "fired": fired,
                                 "offset_seconds": round(fired - self.started, 2), "ok": ok, "effect": effect})
        if cohort is not None and any(e.at.cohort == cohort and e.at.round is not None for _, e in ready):
            self._release(cohort)  # its events of this round fired: the round may start (held again at the next)


    def follow(self, progress: Progress, run: str) -> Progress:
        """A deployment-progress callback that passes events on and fires what each one makes due."""

        def hook(event: str, data: dict[str, Any]) -> None:
            progress(event, {**data, "run": run})
            if event == "state" and data.get("state") == "running":
                self.due(cohort=data["cohort"], starting_round=1)
            elif event == "round":
                self.due(cohort=data["cohort"], starting_round=int(data["round"]) + 1)
            else:
                self.due()

        return hook

    @contextlib.contextmanager
    def ticking(self) -> Iterator[None]:
        """Check time-triggered events twice a second while the block runs (from the cohorts' sending on)."""
        self.started = time.time()
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                self.due()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join(timeout=5)

    def place(self, sent: list[SentCohort]) -> None:
        """Put each fired event in the round (and phase) of its cohort it fell into."""
        followed = {c.name: c.record for c in sent if c.record is not None}
        for record in self.records:
            cohort = record["at"].get("cohort") or (record["what"].get("cohort") if isinstance(record["what"], dict) else None)
            deployment = followed.get(str(cohort)) or next(iter(followed.values()), None)
            if deployment is None:
                record["round"], record["phase"] = None, None
                continue
            record["round"], record["phase"] = place_in_rounds(record["fired"], deployment.rounds, deployment.params.rounds)


def jsonable(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value


def place_in_rounds(fired: float, rounds: list[FlRound], total: int | None = None) -> tuple[int | None, str | None]:
    """The round (and phase of it) a wall time fell into, from the rounds' end times and phase durations.
    After the last finished round of a run that stopped short of `total`: the round that never finished."""
    ordered = sorted(rounds, key=lambda r: r.round)
    if ordered and total and ordered[-1].round < total and fired > float(ordered[-1].time or 0):
        return ordered[-1].round + 1, None
    for entry in ordered:
        end = float(entry.time or 0)
        if fired > end:
            continue
        phases = entry.phases or {}
        position = end - sum(float(v) for v in phases.values())
        for phase, seconds in phases.items():
            position += float(seconds)
            if fired <= position:
                return entry.round, phase
        return entry.round, None
    return None, None


