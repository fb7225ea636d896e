"""Where a Flower round's time goes: a Grid that polls replies fast and times every phase.

`RoundClock` sits between a Flower strategy and its `Grid`. It pushes messages and pulls the
replies with the public Grid API (the same push-then-pull loop as Flower's `send_and_receive`, with
a configurable interval instead of Flower's fixed 3 s), and records per round:

* `sampling`: the strategy choosing and configuring its clients (waits for enough nodes, and for the
  MLFO while it holds the round: `held_seconds`);
* `send`: pushing the messages to the SuperLink;
* `receive`: until the slowest client starts training (SuperNode poll, ClientApp start, message pull);
* `train`: that client's local training;
* `upload`: from its end of training until its reply reached the SuperLink (to half a poll interval);
* `aggregate`: the strategy aggregating the replies;
* `evaluate`: the server evaluating the new global model on the held-out split;
* `idle`: everything else in the round (poll granularity, the strategy's own bookkeeping).

The phases add up to the round's wall time. Clients report `train-start`/`train-end` (wall clock;
every process of an emulated network shares the host's clock) in their reply's metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfo_toolkit.fl.control import RunControl
from mlfo_toolkit.fl.wake import SERVER_SOCKET, Waker, WakeSocket

WAKE_POLL_SECONDS = 2.0  # with wake-ups from the SuperNodes, how long the ServerApp waits before it looks anyway
PULL_WAIT_SECONDS = 1.0  # how long one look for replies waits for its pulls (each answers at once unless stuck)
HOLD_POLL_SECONDS = 0.05  # how often a held round looks whether the MLFO let it go, where inotify is unavailable
HOLD_LOOK_SECONDS = 1.0  # with inotify (woken when the control file is written), how long before it looks anyway
PHASES = ("sampling", "send", "receive", "train", "upload", "aggregate", "evaluate", "idle")
TRAIN_START = "train-start"
TRAIN_END = "train-end"
TRAIN_PART = "mlfo-part"  # the client's partition id, so a round can say how long each client trained
Message = Any  # flwr.app.Message; kept untyped so this module imports without Flower


@dataclass
class RoundRecord:
    """What one training round did and how long each part took."""

    started: float = 0.0
    configured: float = 0.0
    pushed: tuple[float, float] = (0.0, 0.0)
    sampled: int = 0
    results: int = 0
    failures: int = 0
    arrivals: dict[str, float] = field(default_factory=dict)  # reply id -> poll that found it
    previous_poll: dict[str, float] = field(default_factory=dict)
    client_times: dict[str, tuple[float, float]] = field(default_factory=dict)  # reply id -> train start/end
    client_parts: dict[str, int] = field(default_factory=dict)  # reply id -> the client's partition id
    aggregate: tuple[float, float] = (0.0, 0.0)
    stalled: bool = False  # a reply pull outlived the round's timeout
    excluded: int = 0  # sampled SuperNodes the MLFO saw gone during the round (not waited for)
    held: float = 0.0  # seconds the round waited for the MLFO before it started (counted in `sampling`)

    def phases(self, evaluate_started: float, evaluate_ended: float) -> dict[str, float]:
        """Seconds per phase; they add up to the round's wall time."""
        push_start, push_end = self.pushed
        out = dict.fromkeys(PHASES, 0.0)
        out["sampling"] = max(0.0, self.configured - self.started)
        out["send"] = max(0.0, push_end - push_start)
        critical = max(self.client_times, key=lambda k: self.client_times[k][1], default=None)
        if critical is not None:
            train_start, train_end = self.client_times[critical]
            found = self.arrivals.get(critical, train_end)
            before = max(self.previous_poll.get(critical, push_end), train_end)
            out["receive"] = max(0.0, train_start - push_end)
            out["train"] = max(0.0, train_end - train_start)
            out["upload"] = max(0.0, (before + found) / 2 - train_end)
        out["aggregate"] = max(0.0, self.aggregate[1] - self.aggregate[0])
        out["evaluate"] = max(0.0, evaluate_ended - evaluate_started)
        total = max(0.0, evaluate_ended - self.started)
        out["idle"] = max(0.0, total - sum(out.values()))
        return {k: round(v, 4) for k, v in out.items()}


class StopRequested(Exception):
    """The MLFO asked the run to stop (its reason is the message)."""


class TooFewNodes(Exception):
    """A round waited `node_wait_seconds` for the SuperNodes its strategy needs and they did not come."""


class _Pull(threading.Thread):
    """One `grid.pull_messages` call in a daemon thread, so that a round can stop waiting for it."""

    def __init__(self, grid: Any, ids: set[str]) -> None:
        super().__init__(daemon=True, name="pull-replies")
        self.grid, self.ids = grid, set(ids)
        self.found: list[Message] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.found = list(self.grid.pull_messages(self.ids))
        except BaseException as err:  # handed to the round's thread
            self.error = err

    def replies(self) -> list[Message]:
        if self.error is not None:
            raise self.error
        return self.found


class RoundClock:
    """Wraps a Flower Grid and a strategy; `record(round)` gives that round's anatomy."""

    def __init__(self, grid: Any, poll_seconds: float, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, control: RunControl | None = None,
                 node_wait_seconds: float | None = None, wake_dir: str = "") -> None:
        self.grid = grid
        # Wake-ups (mlfo_toolkit.fl.wake): the cohort's SuperNodes pull as soon as a round is pushed, and a
        # reply that went up ends the wait between two looks for replies.
        self.waker: Waker | None = Waker(Path(wake_dir)) if wake_dir else None
        self.replies: WakeSocket | None = None
        if wake_dir:
            try:
                self.replies = WakeSocket(Path(wake_dir) / SERVER_SOCKET)
            except OSError:  # no socket here: the replies are looked for every poll_seconds, as without wake-ups
                self.replies = None
        # Flower's sample_nodes waits forever for min_available nodes: a run whose clients died would hang.
        self.node_wait_seconds = node_wait_seconds
        self.hold_limit = node_wait_seconds if node_wait_seconds is not None else 600.0
        self._waiting_since: float | None = None
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.sleep = sleep
        self.control = control or RunControl(None)
        self.rounds: dict[int, RoundRecord] = {}
        self._current: RoundRecord | None = None

    # --- the strategy side --------------------------------------------------------------------
    def instrument(self, strategy: Any) -> Any:
        """Time the strategy's configure_train and aggregate_train (its other methods are untouched)."""
        configure, aggregate = strategy.configure_train, strategy.aggregate_train

        def configure_train(server_round: int, *args: Any, **kwargs: Any) -> Any:
            record = RoundRecord(started=self.clock())
            self.rounds[server_round] = self._current = record
            record.held = self.hold(server_round)
            messages = configure(server_round, *args, **kwargs)
            record.configured = self.clock()
            return messages

        def aggregate_train(server_round: int, *args: Any, **kwargs: Any) -> Any:
            started = self.clock()
            try:
                return aggregate(server_round, *args, **kwargs)
            finally:
                if server_round in self.rounds:
                    self.rounds[server_round].aggregate = (started, self.clock())

        strategy.configure_train = configure_train
        strategy.aggregate_train = aggregate_train
        return strategy

    def hold(self, server_round: int) -> float:
        """Wait while the MLFO holds this round (an experiment firing its events); seconds waited. A hold ends
        at the latest after `hold_limit` seconds, so a forgotten one never stops a run."""
        started = self.clock()
        if not self.control.read().holds(server_round):
            return 0.0  # no watch set up for the rounds nobody holds
        with self.control.changes(HOLD_POLL_SECONDS, self.sleep) as wait:
            while self.control.read().holds(server_round) and (left := self.hold_limit - (self.clock() - started)) > 0:
                wait(min(left, HOLD_LOOK_SECONDS))
        return round(self.clock() - started, 4)

    # --- the Grid side: what the strategy calls -------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def get_node_ids(self) -> list[int]:
        """The connected SuperNodes the strategy may sample: Flower's, less those the MLFO knows are gone.
        A stop asked for while the strategy waits for enough nodes ends that wait (StopRequested)."""
        settings = self.control.read()
        if settings.stop:
            raise StopRequested(settings.stop)
        nodes = [node for node in self.grid.get_node_ids() if node not in settings.exclude_nodes]
        now = self.clock()
        if self._waiting_since is None:
            self._waiting_since = now  # the first look of this round; send_and_receive ends the wait
        elif self.node_wait_seconds is not None and now - self._waiting_since > self.node_wait_seconds:
            raise TooFewNodes(f"the round waited {now - self._waiting_since:.0f} s for enough clients: {len(nodes)} connected, "
                              f"fewer than its strategy needs (min_available, min_fit)")
        return nodes

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push, then pull every `poll_seconds` until every reply is in or `timeout` passes."""
        self._waiting_since = None
        messages = list(messages)
        if not messages:
            return []
        record = self._current if self._current is not None and not self._current.sampled else None
        push_start = self.clock()
        if self.poll_seconds <= 0:  # Flower's own loop (3 s polls): coarse anatomy only
            answered = list(self.grid.send_and_receive(messages, timeout=timeout))
            if record is not None:
                now = self.clock()
                record.pushed, record.sampled = (push_start, push_start), len(messages)
                self._note(record, answered, now, push_start)
            return answered
        if self.replies is not None:
            self.replies.drain()  # wake-ups of an earlier round's replies
        pushed = list(self.grid.push_messages(messages))
        destination = {m: getattr(getattr(msg, "metadata", None), "dst_node_id", None) for m, msg in zip(pushed, messages)}
        if self.waker is not None:  # a wake-up for each message pushed, to the SuperNode it went to
            self.waker.wake_for([destination.get(m) for m in pushed if m])
        pending = {m for m in pushed if m}
        push_end = self.clock()
        if record is not None:
            record.pushed, record.sampled = (push_start, push_end), len(messages)
        deadline = None if timeout is None else push_end + timeout
        replies: list[Message] = []
        previous = push_end
        # One pull per pending reply, side by side. Flower's pull of several replies waits for a reply whose
        # objects never finish uploading (its SuperNode died mid-upload) until the SuperLink's push session
        # expires (180 s), holding the others it already took with it; a pull of its own holds only that one.
        pulls: dict[str, _Pull] = {}
        while pending:
            for message in pending:
                if message not in pulls:
                    pulls[message] = _Pull(self.grid, {message})
                    pulls[message].start()
            waited_until = min(self.clock() + PULL_WAIT_SECONDS, deadline if deadline is not None else float("inf"))
            for message in pending:  # a stuck pull of a reply no longer waited for (its node excluded) is not waited on
                pulls[message].join(max(0.0, waited_until - self.clock()))
            found = []
            for message, pull in list(pulls.items()):
                if not pull.is_alive():
                    del pulls[message]
                    found.extend(pull.replies())
            now = self.clock()
            if record is not None:
                self._note(record, found, now, previous)
            replies.extend(found)
            pending.difference_update(m.metadata.reply_to_message_id for m in found)
            # A SuperNode the MLFO saw gone will not answer: stop waiting for it now, not at the timeout.
            settings = self.control.read()
            if settings.stop:  # the MLFO's closed loop ended the run (its target met or missed): no use finishing the round
                raise StopRequested(settings.stop)
            gone = {m for m in pending if destination.get(m) in settings.exclude_nodes}
            if gone and record is not None:
                record.excluded += len(gone)
            pending -= gone
            previous = now
            if not pending or (deadline is not None and now >= deadline):
                break
            if self.replies is not None and self._nodes_wake_server():
                self.replies.wait(WAKE_POLL_SECONDS)  # at once when a reply went up; the timeout is a safety net
            elif self.replies is not None:
                self.replies.wait(self.poll_seconds)
            else:
                self.sleep(self.poll_seconds)
        if any(pull.is_alive() for message, pull in pulls.items() if message in pending) and record is not None:
            record.stalled = True  # a reply's pull outlived the round: it finishes on its own, unheard
        return replies

    def _nodes_wake_server(self) -> bool:
        """Whether the cohort's SuperNodes say when their reply went up (they were forked with wake-ups)."""
        return self.waker is not None and self.waker.has_nodes()

    @staticmethod
    def _note(record: RoundRecord, replies: list[Message], found_at: float, previous_poll: float) -> None:
        for reply in replies:
            key = reply.metadata.reply_to_message_id
            record.arrivals[key] = found_at
            record.previous_poll[key] = previous_poll
            if reply.has_error():
                record.failures += 1
                continue
            record.results += 1
            metrics = reply.content.get("metrics")
            if metrics is not None and TRAIN_START in metrics and TRAIN_END in metrics:
                record.client_times[key] = (float(metrics[TRAIN_START]), float(metrics[TRAIN_END]))
                if TRAIN_PART in metrics:
                    record.client_parts[key] = int(metrics[TRAIN_PART])

    def summary(self, server_round: int, evaluate_started: float, evaluate_ended: float) -> dict[str, Any]:
        """The round event's anatomy fields: sampled, results, failures, phases."""
        record = self.rounds.get(server_round)
        if record is None:
            return {}
        return {
            "sampled": record.sampled,
            "results": record.results,
            "failures": record.failures,
            "excluded": record.excluded,
            "held_seconds": record.held,
            "phases": record.phases(evaluate_started, evaluate_ended),
            # Each client's training seconds, by partition id (stragglers; device profiles).
            "client_train_seconds": {str(record.client_parts[k]): round(end - start, 4) for k, (start, end) in record.client_times.items()
                                     if k in record.client_parts},
        }

