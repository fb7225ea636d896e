"""Round anatomy: phases add up to the round, fewer results are counted, replies are polled fast."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlfo_toolkit.fl.anatomy import PHASES, TRAIN_END, TRAIN_START, RoundClock
from mlfo_toolkit.util.stats import percentile, spread


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Metadata:
    reply_to_message_id: str


@dataclass
class Reply:
    metadata: Metadata
    content: dict[str, Any] = field(default_factory=dict)
    error: bool = False

    def has_error(self) -> bool:
        return self.error


class FakeGrid:
    """Replies arrive at given clock times; a message without an arrival time is never answered."""

    def __init__(self, clock: FakeClock, arrivals: dict[str, tuple[float, Reply]]) -> None:
        self.clock = clock
        self.arrivals = arrivals
        self.pulls = 0

    def push_messages(self, messages: list[str]) -> list[str]:
        self.clock.now += 0.1  # pushing takes 0.1 s
        return list(messages)

    def pull_messages(self, ids: set[str]) -> list[Reply]:
        self.pulls += 1
        return [reply for key, (at, reply) in self.arrivals.items() if key in ids and at <= self.clock.now]

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


class FakeStrategy:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> list[str]:
        self.clock.now += 0.2  # sampling
        return ["m1", "m2", "m3"]

    def aggregate_train(self, server_round: int, replies: list[Reply]) -> str:
        self.clock.now += 0.05
        return "aggregated"


def reply(key: str, start: float, end: float, error: bool = False) -> Reply:
    return Reply(Metadata(key), {"metrics": {TRAIN_START: start, TRAIN_END: end}}, error)


def run_round(arrivals: dict[str, tuple[float, Reply]], timeout: float | None = None) -> tuple[RoundClock, list[Reply], FakeClock]:
    clock = FakeClock()
    grid = FakeGrid(clock, arrivals)
    timed = RoundClock(grid, poll_seconds=0.25, clock=clock, sleep=clock.sleep)
    strategy = timed.instrument(FakeStrategy(clock))
    messages = strategy.configure_train(1, None, None, timed)
    replies = timed.send_and_receive(messages=messages, timeout=timeout)
    strategy.aggregate_train(1, replies)
    return timed, replies, clock


def test_phases_add_up_to_the_round_and_name_the_slowest_client() -> None:
    arrivals = {
        "m1": (1001.0, reply("m1", 1000.8, 1000.9)),
        "m2": (1003.0, reply("m2", 1002.0, 1002.5)),  # the slowest: trains 1002.0 .. 1002.5
        "m3": (1001.5, reply("m3", 1001.0, 1001.2)),
    }
    timed, replies, clock = run_round(arrivals)
    assert len(replies) == 3
    evaluate_start = clock.now
    clock.now += 0.01
    summary = timed.summary(1, evaluate_start, clock.now)
    phases = summary["phases"]
    assert set(phases) == set(PHASES)
    assert summary["sampled"] == 3 and summary["results"] == 3 and summary["failures"] == 0
    assert phases["sampling"] == pytest.approx(0.2)
    assert phases["send"] == pytest.approx(0.1)
    assert phases["receive"] == pytest.approx(2.0 - 0.3)  # push ended at 1000.3, m2 started at 1002.0
    assert phases["train"] == pytest.approx(0.5)
    assert phases["aggregate"] == pytest.approx(0.05)
    assert phases["evaluate"] == pytest.approx(0.01)
    assert sum(phases.values()) == pytest.approx(clock.now - 1000.0, abs=1e-3)
    # Replies are pulled every 0.25 s, not Flower's 3 s: m2 (at 1003.0) is seen by 1003.3 at the latest.
    assert phases["upload"] + phases["idle"] < 0.85


def test_fewer_results_than_sampled_are_counted_and_the_round_ends_at_its_timeout() -> None:
    arrivals = {
        "m1": (1000.5, reply("m1", 1000.4, 1000.45)),
        "m2": (1000.6, reply("m2", 0, 0, error=True)),  # a ClientApp that failed
        # m3 never answers (its SuperNode is gone)
    }
    timed, replies, clock = run_round(arrivals, timeout=5.0)
    summary = timed.summary(1, clock.now, clock.now)
    assert (summary["sampled"], summary["results"], summary["failures"]) == (3, 1, 1)
    assert 5.0 <= clock.now - 1000.3 < 5.3  # waited the timeout, then gave up


def test_a_pull_stuck_on_a_half_uploaded_reply_ends_the_round_at_its_timeout() -> None:
    """Flower's pull waits up to 180 s for the objects of a reply whose SuperNode died mid-upload."""
    import threading

    release = threading.Event()

    answered = Reply(Metadata("m1"))

    class StuckGrid:
        """m2's client died mid-upload: any pull that includes m2 hangs (and would hold m1's reply with it)."""

        def push_messages(self, messages: list[str]) -> list[str]:
            return list(messages)

        def pull_messages(self, ids: set[str]) -> list[Reply]:
            if "m2" in ids:
                release.wait(30)
                return []
            return [answered] if "m1" in ids else []

    timed = RoundClock(StuckGrid(), poll_seconds=0.05)
    started = time.monotonic()
    try:
        # The healthy client's reply still counts: each reply is pulled on its own.
        assert timed.send_and_receive(messages=["m1", "m2"], timeout=0.5) == [answered]
        waited = time.monotonic() - started
    finally:
        release.set()
    assert 0.5 <= waited < 2.0


def test_flower_own_loop_when_poll_seconds_is_zero() -> None:
    clock = FakeClock()

    class FlowerGrid(FakeGrid):
        def send_and_receive(self, messages: list[str], *, timeout: float | None = None) -> list[Reply]:
            clock.now += 3.0
            return [reply(m, 1000.5, 1000.6) for m in messages]

    timed = RoundClock(FlowerGrid(clock, {}), poll_seconds=0, clock=clock, sleep=clock.sleep)
    strategy = timed.instrument(FakeStrategy(clock))
    replies = timed.send_and_receive(messages=strategy.configure_train(1, None, None, timed), timeout=10)
    assert len(replies) == 3
    assert timed.summary(1, clock.now, clock.now)["results"] == 3


def test_no_messages_means_no_round_record() -> None:
    clock = FakeClock()
    timed = RoundClock(FakeGrid(clock, {}), poll_seconds=0.25, clock=clock, sleep=clock.sleep)
    assert timed.send_and_receive(messages=[], timeout=1) == []
    assert timed.summary(7, 0, 0) == {}
    assert timed.get_node_ids() == [1, 2, 3]  # everything else is the wrapped Grid's


def test_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 95) == 95
    assert spread([1.0, 2.0, 10.0]) == {"p50": 2.0, "p95": 10.0}


def test_a_round_that_waits_too_long_for_clients_fails_and_an_excluded_node_is_not_offered(tmp_path: Any) -> None:
    from mlfo_toolkit.fl.anatomy import StopRequested, TooFewNodes
    from mlfo_toolkit.fl.control import RunControl, update_control

    clock = FakeClock()
    control_file = tmp_path / "control.json"
    timed = RoundClock(FakeGrid(clock, {}), poll_seconds=0.25, clock=clock, sleep=clock.sleep,
                       control=RunControl(control_file), node_wait_seconds=30)
    update_control(control_file, {"exclude_nodes": [2]})
    # Flower's sample_nodes asks once a second while too few nodes are connected.
    for _ in range(31):
        assert timed.get_node_ids() == [1, 3]
        clock.now += 1
    with pytest.raises(TooFewNodes, match="waited 31 s"):
        timed.get_node_ids()
    # A round that got its messages out starts the next wait afresh.
    timed.send_and_receive(messages=[], timeout=1)
    assert timed.get_node_ids() == [1, 3]
    update_control(control_file, {"stop": "target met at round 3"})
    with pytest.raises(StopRequested, match="target met"):
        timed.get_node_ids()


def test_a_held_round_waits_for_the_mlfo_and_the_wait_is_counted(tmp_path: Any) -> None:
    from mlfo_toolkit.fl.control import RunControl, update_control

    clock = FakeClock()
    control_file = tmp_path / "control.json"
    update_control(control_file, {"hold": 2})
    timed = RoundClock(FakeGrid(clock, {}), poll_seconds=0.25, clock=clock, sleep=clock.sleep,
                       control=RunControl(control_file), node_wait_seconds=30)
    strategy = timed.instrument(FakeStrategy(clock))
    strategy.configure_train(1, None, None, timed)
    assert timed.rounds[1].held == 0  # before the held round: no wait
    released: list[float] = []

    def sleep(seconds: float) -> None:  # the experiment lets round 2 go 1.5 s later (and holds round 4)
        clock.sleep(seconds)
        if clock.now - timed.rounds[2].started >= 1.5 and not released:
            released.append(clock.now)
            update_control(control_file, {"hold": 4})

    timed.sleep = sleep
    strategy.configure_train(2, None, None, timed)
    assert timed.rounds[2].held == pytest.approx(1.5, abs=0.06)
    strategy.configure_train(3, None, None, timed)
    assert timed.rounds[3].held == 0
    # A hold nobody lifts ends at the run's limit: a forgotten hold never stops a run.
    started = clock.now
    strategy.configure_train(4, None, None, timed)
    assert timed.rounds[4].held == pytest.approx(30, abs=0.1) and clock.now - started >= 30
    # The summary says how long the round was held; its phases still add up to the round.
    evaluate = clock.now
    summary = timed.summary(4, evaluate, evaluate)
    assert summary["held_seconds"] == timed.rounds[4].held
    assert sum(summary["phases"].values()) == pytest.approx(evaluate - timed.rounds[4].started, abs=1e-3)


def test_the_timeline_holds_each_round_with_events_until_they_fired() -> None:
    from mlfo_toolkit.experiments.spec import Event
    from mlfo_toolkit.experiments.timeline import Timeline

    events = [Event.model_validate({"at": {"cohort": "a", "round": r}, "kill": {"cohort": "a", "part": 0}}) for r in (2, 4)]
    events.append(Event.model_validate({"at": {"seconds": 60}, "kill": {"cohort": "b", "part": 0}}))
    fired: list[str] = []
    holds: list[tuple[str, int]] = []
    timeline = Timeline(events, lambda e: fired.append(f"kill@{e.at.round}") or {}, hold=lambda c, n: holds.append((c, n)))
    assert timeline.cohorts_with_rounds() == ["a"] and timeline.held_round("a") == 2 and timeline.held_round("b") == 0
    timeline.due(cohort="a", starting_round=1)  # nothing due: no release
    assert fired == [] and holds == []
    timeline.due(cohort="a", starting_round=2)
    assert fired == ["kill@2"] and holds == [("a", 4)]  # round 2 may start; round 4 is held next
    timeline.due(cohort="a", starting_round=4)
    assert fired == ["kill@2", "kill@4"] and holds[-1] == ("a", 0)  # no more events: nothing held


def test_changes_sent_at_once_to_a_run_all_reach_its_control_file(tmp_path: Path) -> None:
    """The MLFO's closed loop and its client watch change a run at the same time (a node taken out, the sampling
    halved): the agent serves their requests in parallel threads, and no change may overwrite another (a lost
    fraction_fit sent a reshaped cohort back to sampling every client)."""
    from mlfo_toolkit.fl.control import RunControl, update_control

    control_file = tmp_path / "control.json"
    changes = [{"exclude_nodes": [node]} for node in range(40)] + [{"fraction_fit": 0.5}, {"min_fit": 2}]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda change: update_control(control_file, change), changes))
    settings = RunControl(control_file).read()
    assert settings.exclude_nodes == set(range(40)) and settings.fraction_fit == 0.5 and settings.min_fit == 2, settings


def test_a_held_round_sleeps_until_the_control_file_changes(tmp_path: Any) -> None:
    """On the real clock a held ServerApp is woken by the control file's change (inotify), not by polling it: it
    starts its round as soon as the hold is lifted, and looks at the file a handful of times however long it waits."""
    import threading

    from mlfo_toolkit.fl.control import RunControl, update_control

    control_file = tmp_path / "control.json"
    update_control(control_file, {"hold": 1})
    looks: list[float] = []

    class CountedControl(RunControl):
        def read(self) -> Any:
            looks.append(time.monotonic())
            return super().read()

    timed = RoundClock(FakeGrid(FakeClock(), {}), poll_seconds=0.25, control=CountedControl(control_file), node_wait_seconds=30)
    lifted: list[float] = []

    def lift() -> None:
        time.sleep(0.6)
        update_control(tmp_path / "other.json", {"hold": 0})  # another file in the folder does not end the wait
        time.sleep(0.2)
        lifted.append(time.monotonic())
        update_control(control_file, {"hold": 0})

    threading.Thread(target=lift, daemon=True).start()
    held = timed.hold(1)
    started = time.monotonic()
    assert lifted and started - lifted[0] < 0.5  # woken by the write (the old 50 ms polls were as quick)
    assert 0.7 <= held < 2.0
    assert len(looks) <= 5  # the check, the loop's look, one after the wake (and one a second); polled every 50 ms: 17
