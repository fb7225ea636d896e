"""The closed loop's judgement and policies, on observation sequences recorded from real runs."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlfo_toolkit.config import AssuranceSettings, Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.monitoring.metrics import MlfoMetrics
from mlfo_toolkit.orchestrator.assurance import (
    Action,
    DefaultPolicy,
    Observation,
    Target,
    assess,
    check_actions,
    load_policy,
)
from mlfo_toolkit.orchestrator.deployments import DeploymentTable
from mlfo_toolkit.orchestrator.loop import AssuranceLoop
from mlfo_toolkit.orchestrator.records import ClientRecord, Deployment, DeploymentParams, FlRound
from mlfo_toolkit.orchestrator.store import Store

# Held-out accuracy by round of `mlfo demo` with intents/welding-target.yaml (4 clients, FedAvg, seed 0).
RECORDED = [0.7611, 0.8694, 0.8944, 0.9111, 0.9194, 0.9194, 0.9278, 0.9306, 0.9417]
# A run that flattens out near 0.92: 0.999 is out of its reach.
FLAT = [0.78, 0.86, 0.90, 0.915, 0.918, 0.919, 0.9191, 0.9192, 0.9192, 0.9193]


def target(**fields: Any) -> Target:
    return Target(**{"operation": "achieve", "metric": "accuracy", **fields})


def observe(metric: list[float], tgt: Target, **fields: Any) -> Observation:
    settings = fields.pop("settings", AssuranceSettings())
    base: dict[str, Any] = dict(
        deployment="d1", cohort="c", trigger="round", time=0.0, round=len(metric), rounds_total=20, target=tgt, metric=metric,
        accuracy=metric, loss=[], round_seconds=[4.0] * len(metric), last_phases=None, elapsed_seconds=4.0 * len(metric),
        rounds_left=(tgt.deadline_rounds or 20) - len(metric), seconds_left=None, running=[0, 1, 2, 3], lost=[], spare=[4, 5],
        restarts={}, traffic_mb=None, measured_mbit=None, fraction_fit=1.0, min_fit=2, min_available=4, network=False,
        meter_rate_mbit=None, settings=settings,
    )
    base.update(fields)
    observation = Observation(**base)
    return dataclasses.replace(observation, assessment=assess(observation))


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


def test_an_achieve_target_stops_the_run_at_the_round_it_is_reached() -> None:
    tgt = target(value=0.93, deadline_rounds=12, max_clients=4)
    policy = DefaultPolicy()
    stops = []
    for n in range(1, len(RECORDED) + 1):
        actions = policy.decide(observe(RECORDED[:n], tgt))
        if "stop" in kinds(actions):
            stops.append((n, actions[0].outcome))
    assert stops[0] == (8, "met")  # 0.9306 at round 8, the first round at or above 0.93


def test_a_target_out_of_reach_is_missed_once_the_metric_stops_improving() -> None:
    tgt = target(value=0.999, deadline_rounds=30)
    judged = [assess(observe(FLAT[:n], tgt)) for n in range(1, len(FLAT) + 1)]
    states = [j.state for j in judged if j]
    assert "missed" in states and "met" not in states
    first = states.index("missed") + 1
    assert first < 30, "the run is called missed at its plateau, long before its deadline"
    assert "stopped improving" in judged[first - 1].reason  # type: ignore[union-attr]
    stop = DefaultPolicy().decide(observe(FLAT[:first], tgt))
    assert kinds(stop) == ["stop"] and stop[0].outcome == "missed"


def test_a_maximise_target_with_a_floor_stops_only_once_it_plateaus_above_it() -> None:
    tgt = target(operation="maximise", value=0.9)
    at_floor = observe(FLAT[:4], tgt)  # 0.915 reached, still climbing
    assert at_floor.assessment is not None and at_floor.assessment.state == "met"
    assert DefaultPolicy().decide(at_floor) == []
    flat = observe(FLAT, tgt)
    assert kinds(DefaultPolicy().decide(flat)) == ["stop"]


def test_a_deadline_in_seconds_missed() -> None:
    tgt = target(value=0.95, deadline_seconds=20)
    judged = assess(observe(FLAT[:5], tgt, seconds_left=-1.0))
    assert judged is not None and judged.state == "missed" and "20 s" in judged.reason


def test_slow_pace_is_at_risk_and_adds_a_spare_client_within_the_cap() -> None:
    slow = [0.70, 0.72, 0.74, 0.76, 0.78]
    tgt = target(value=0.95, deadline_rounds=8, max_clients=5)
    observation = observe(slow, tgt)
    assert observation.assessment is not None and observation.assessment.state == "at_risk"
    actions = DefaultPolicy().decide(observation)
    assert kinds(actions) == ["add_clients"] and actions[0].count == 1
    # At the cap (4 running, cap 4) no client is added.
    assert DefaultPolicy().decide(observe(slow, target(value=0.95, deadline_rounds=8, max_clients=4))) == []


def test_a_lost_client_is_restarted_then_replaced_on_a_spare_host() -> None:
    tgt = target(value=0.93, deadline_rounds=12)
    first = DefaultPolicy().decide(observe(RECORDED[:2], tgt, lost=[1], running=[0, 2, 3], trigger="lost"))
    assert [(a.kind, a.part) for a in first] == [("restart_client", 1)]
    again = DefaultPolicy().decide(observe(RECORDED[:4], tgt, lost=[1], running=[0, 2, 3], restarts={1: 2}))
    assert [(a.kind, a.part) for a in again] == [("replace_client", 1)]
    nowhere = DefaultPolicy().decide(observe(RECORDED[:4], tgt, lost=[1], running=[0, 2, 3], restarts={1: 2}, spare=[]))
    assert nowhere == []


def test_a_slow_round_raises_the_meter_in_a_network_and_samples_fewer_clients_outside() -> None:
    tgt = target(value=0.93, max_round_seconds=5)
    slow = {"round_seconds": [4.0, 4.2, 9.5]}
    metered = DefaultPolicy().decide(observe(RECORDED[:3], tgt, network=True, meter_rate_mbit=2.0, **slow))
    assert [(a.kind, a.value) for a in metered] == [("set_meter", 4.0)]
    loopback = DefaultPolicy().decide(observe(RECORDED[:3], tgt, **slow))
    assert [(a.kind, a.value) for a in loopback] == [("set_fraction_fit", 0.5)]
    floor = DefaultPolicy().decide(observe(RECORDED[:3], tgt, fraction_fit=0.2, **slow))
    assert floor == []


def test_the_traffic_budget_first_thins_sampling_then_stops_before_it_is_spent() -> None:
    tgt = target(value=0.99, max_traffic_mb=100)
    thin = DefaultPolicy().decide(observe(RECORDED[:2], tgt, traffic_mb=30.0, rounds_total=10))
    assert kinds(thin) == ["set_fraction_fit"] and thin[0].value == 0.75
    stop = DefaultPolicy().decide(observe(RECORDED[:5], tgt, traffic_mb=90.0, rounds_total=10))
    assert kinds(stop) == ["stop"] and stop[0].outcome == "missed"


def test_a_deadline_in_rounds_sets_the_run_length_at_start() -> None:
    actions = DefaultPolicy().decide(observe([], target(value=0.9, deadline_rounds=12), trigger="start", rounds_total=20))
    assert [(a.kind, a.count) for a in actions] == [("set_rounds", 12)]


def test_an_intent_without_anything_to_assure_is_left_alone() -> None:
    plain = Target(operation="maximise", metric="accuracy")
    observation = observe(FLAT, plain, lost=[1])
    assert observation.assessment is None and DefaultPolicy().decide(observation) == []


def test_target_from_an_intent() -> None:
    intent = {"intentID": "x", "targets": [{"id": "t", "operation": "minimize", "operand": "robots.welding.loss", "value": 0.3,
                                            "deadline": {"seconds": 120}, "constraints": {"max_gpus": 3, "max_traffic_mb": 50}}]}
    read = Target.from_intent(intent)
    assert (read.operation, read.metric, read.value, read.deadline_seconds, read.max_clients, read.max_traffic_mb) == \
        ("minimise", "loss", 0.3, 120, 3, 50.0)
    assert read.lower_is_better and read.reached(0.25) and not read.reached(0.35)


# --- a researcher's policy ------------------------------------------------------------------------------
POLICY_FILE = '''
from mlfo_toolkit.orchestrator.assurance import Action

class StopAtFive:
    def __init__(self, settings):
        self.settings = settings

    def decide(self, observation):
        return [Action("stop", reason="five is enough")] if observation.round >= 5 else []

class NoDecide:
    pass
'''


def test_a_policy_is_loaded_from_a_file_or_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mypolicy.py").write_text(POLICY_FILE)
    from_file = load_policy("mypolicy.py:StopAtFive", AssuranceSettings(plateau_rounds=3), base=tmp_path)
    assert from_file.settings.plateau_rounds == 3  # type: ignore[attr-defined]
    assert kinds(from_file.decide(observe(FLAT[:5], target(value=0.99)))) == ["stop"]
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = load_policy("mypolicy:StopAtFive", AssuranceSettings())
    assert from_module.decide(observe(FLAT[:4], target(value=0.99))) == []
    for bad, words in (("mypolicy:Missing", "cannot load"), ("mypolicy:NoDecide", "no decide"), ("no such thing!", "is not none"),
                       ("absent.py:X", "cannot load")):
        with pytest.raises(ValidationError, match=words):
            load_policy(bad, AssuranceSettings(), base=tmp_path)
    sys.modules.pop("mypolicy", None)


def test_what_a_policy_answers_is_checked() -> None:
    assert check_actions(None) == []
    assert kinds(check_actions([{"kind": "stop", "reason": "x", "junk": 1}])) == ["stop"]
    for bad in ("stop", [42], [Action("reboot_the_world")]):
        with pytest.raises(ValueError):
            check_actions(bad)


# --- the loop's bounds, with a recording actuator --------------------------------------------------------------
class Recorder:
    """The campus MLFO's side of the loop, recorded: what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def restart(self, deployment_id: str, part: int, agent: str | None = None) -> dict[str, Any]:
        self.calls.append(("restart", part))
        return {"agent": "a", "seconds": 1.0}

    def start_part(self, deployment_id: str, part: int) -> dict[str, Any]:
        self.calls.append(("start_part", part))
        return {"part": part}

    def remove_part(self, deployment_id: str, part: int) -> dict[str, Any]:
        self.calls.append(("remove_part", part))
        return {"part": part}

    def control(self, deployment_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("control", changes))
        return {"control": changes}

    def meter(self, deployment_id: str, rate_mbit: float | None) -> dict[str, Any]:
        self.calls.append(("meter", rate_mbit))
        return {}

    def meter_rate(self, deployment_id: str) -> float | None:
        return None


class Scripted:
    """A policy that answers what the test says, round after round."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers

    def decide(self, observation: Observation) -> Any:
        answer = self.answers.pop(0) if self.answers else []
        if isinstance(answer, Exception):
            raise answer
        return answer


def running_deployment(table: DeploymentTable, intent_target: dict[str, Any], lost: tuple[int, ...] = ()) -> Deployment:
    now = time.time()
    record = Deployment(
        id="d1", name="c", intent_id="x", pipeline={},
        intent={"intentID": "x", "targets": [{"id": "t", "operation": "achieve", "operand": "robots.welding.accuracy", **intent_target}]},
        params=DeploymentParams(ipstart=10, cohortsize=4, strategy="FedAvg", fraction_fit=1.0, min_fit=2, min_available=2, rounds=10),
        state="running", created=now, updated=now, initial={"time": now - 10},
        clients=[ClientRecord(agent=f"127.0.0.1:{9000 + i}", part=i, state="lost" if i in lost else "running") for i in range(4)],
        policy="scripted",
    )
    table.add(record)
    return record


def add_round(table: DeploymentTable, number: int, accuracy: float) -> None:
    with table.edit("d1") as live:
        live.rounds.append(FlRound(round=number, accuracy=accuracy, loss=1 - accuracy, time=time.time(), sampled=4, results=4))


@pytest.fixture
def loop(tmp_path: Path) -> tuple[AssuranceLoop, DeploymentTable, Recorder]:
    table = DeploymentTable(Store(tmp_path / "campus.sqlite3"))
    recorder = Recorder()
    config = Config().with_overrides({"assurance.cooldown_rounds": 2, "assurance.max_actions_per_kind": 2,
                                      "assurance.max_restarts_per_client": 1})
    return AssuranceLoop(config, table, recorder, MlfoMetrics("campus")), table, recorder


def test_the_loop_bounds_what_a_policy_asks(loop: tuple[AssuranceLoop, DeploymentTable, Recorder]) -> None:
    the_loop, table, recorder = loop
    running_deployment(table, {"value": 0.99})
    fraction = [Action("set_fraction_fit", value=0.5)]
    the_loop._policies["d1"] = ("scripted", Scripted([fraction, fraction, fraction, fraction, fraction, [Action("remove_client", part=9)]]))
    statuses = []
    for number in range(1, 7):
        add_round(table, number, 0.5 + number / 100)
        decision = the_loop.step("d1", "round")
        assert decision is not None
        statuses.append([a["status"] for a in decision.actions])
    # Done in round 1, cooling down in round 2, done in round 3, then the bound of 2 per run holds.
    assert statuses[:5] == [["done"], ["refused"], ["done"], ["refused"], ["refused"]]
    assert statuses[5] == ["refused"]  # there is no part 9
    assert [c for c in recorder.calls if c[0] == "control"] == [("control", {"fraction_fit": 0.5})] * 2
    record = table.get("d1")
    assert record.decisions[0].outcome and record.decisions[0].outcome.startswith("round 2: 4/4 results")
    assert "max_actions_per_kind" in record.decisions[4].actions[0]["detail"]


def test_a_client_is_restarted_at_most_max_restarts_times(loop: tuple[AssuranceLoop, DeploymentTable, Recorder]) -> None:
    the_loop, table, recorder = loop
    running_deployment(table, {"value": 0.99}, lost=(1,))
    the_loop._policies["d1"] = ("scripted", Scripted([[Action("restart_client", part=1)], [Action("restart_client", part=2)]]))
    add_round(table, 1, 0.6)
    assert the_loop.step("d1", "lost").actions[0]["status"] == "done"  # type: ignore[union-attr]
    add_round(table, 2, 0.6)
    refused = the_loop.step("d1", "round").actions[0]  # type: ignore[union-attr]
    assert refused["status"] == "refused" and "not lost" in refused["detail"]  # part 2 runs
    assert recorder.calls == [("restart", 1)]


def test_a_failing_policy_is_recorded_and_the_deployment_goes_on_under_none(loop: tuple[AssuranceLoop, DeploymentTable, Recorder]) -> None:
    the_loop, table, recorder = loop
    running_deployment(table, {"value": 0.99})
    the_loop._policies["d1"] = ("scripted", Scripted([ZeroDivisionError("oops")]))
    add_round(table, 1, 0.6)
    decision = the_loop.step("d1", "round")
    assert decision is not None and "ZeroDivisionError: oops" in (decision.error or "")
    assert the_loop._policies["d1"][0] == "none"
    add_round(table, 2, 0.7)
    the_loop.step("d1", "round")
    assert recorder.calls == []
    assert table.get("d1").assurance["state"] in ("on_track", "at_risk")  # type: ignore[index]


def test_an_ended_deployment_gets_no_turn(loop: tuple[AssuranceLoop, DeploymentTable, Recorder]) -> None:
    the_loop, table, recorder = loop
    running_deployment(table, {"value": 0.5})
    table.update("d1", state="done")
    assert the_loop.step("d1", "round") is None and recorder.calls == []


def test_after_a_stop_the_round_under_way_is_recorded_and_nothing_more_is_decided(
        loop: tuple[AssuranceLoop, DeploymentTable, Recorder]) -> None:
    """The run ends with the round under way when the stop came; that round may still report. The loop records what
    it showed and asks the policy nothing more (it once recorded a second stop with that round's figures)."""
    the_loop, table, recorder = loop
    running_deployment(table, {"value": 0.9})
    asked = Scripted([[Action("stop", outcome="met", reason="first")], [Action("stop", outcome="met", reason="again")]])
    the_loop._policies["d1"] = ("scripted", asked)
    add_round(table, 2, 0.91)
    assert [a["status"] for a in the_loop.step("d1", "round").actions] == ["done"]  # type: ignore[union-attr]
    add_round(table, 3, 0.92)
    assert the_loop.step("d1", "round") is None
    assert recorder.calls == [("control", {"stop": "target met at round 2: first"})]
    assert len(asked.answers) == 1, "the policy was asked after the stop"
    decisions = table.get("d1").decisions
    assert len(decisions) == 1 and (decisions[0].outcome or "").startswith("round 3: 4/4 results")


def test_the_readme_policy_is_the_shipped_file_and_trains_fewer_clients_while_on_track() -> None:
    from tests.helpers import REPO

    shipped = (REPO / "experiments" / "policies" / "frugal.py").read_text()
    assert f"```python\n{shipped}```" in (REPO / "README.md").read_text()
    frugal = load_policy("experiments/policies/frugal.py:Frugal", AssuranceSettings(min_fraction_fit=0.25), base=REPO)
    tgt = target(value=0.93, deadline_rounds=12)
    on_track = observe(RECORDED[:5], tgt)
    assert on_track.assessment is not None and on_track.assessment.state == "on_track"
    assert [(a.kind, a.value) for a in frugal.decide(on_track)] == [("set_fraction_fit", 0.5)]
    assert [(a.kind, a.value) for a in frugal.decide(observe(RECORDED[:5], tgt, fraction_fit=0.25))] == []
    slow = observe([0.70, 0.72, 0.74, 0.76, 0.78], tgt, fraction_fit=0.5, spare=[])
    assert [(a.kind, a.value) for a in frugal.decide(slow)] == [("set_fraction_fit", 1.0)]
    assert kinds(frugal.decide(observe(RECORDED[:8], tgt))) == ["stop"]  # mlfo's rule 1 still stops it


def test_decisions_survive_a_restart_of_the_campus_mlfo(loop: tuple[AssuranceLoop, DeploymentTable, Recorder], tmp_path: Path) -> None:
    the_loop, table, _ = loop
    running_deployment(table, {"value": 0.99})
    the_loop._policies["d1"] = ("scripted", Scripted([[Action("set_rounds", count=5)]]))
    add_round(table, 1, 0.6)
    the_loop.step("d1", "round")
    table.store.close()
    reloaded = DeploymentTable(Store(tmp_path / "campus.sqlite3")).get("d1")
    assert [a["kind"] for d in reloaded.decisions for a in d.actions] == ["set_rounds"]
    assert reloaded.assurance is not None and reloaded.assurance["state"] in ("on_track", "at_risk")


def test_a_run_report_draws_the_target_and_lists_the_decisions(tmp_path: Path) -> None:
    import csv
    import json

    from mlfo_toolkit.reports.report import build_report

    decisions = [
        {"round": 0, "trigger": "start", "policy": "default", "assessment": {"state": "on_track", "reason": "no round yet"},
         "rules": ["7 deadline"], "actions": [{"kind": "set_rounds", "count": 12, "status": "done", "detail": "rounds 20 -> 12"}]},
        {"round": 8, "trigger": "round", "policy": "default", "assessment": {"state": "met", "reason": "reached"},
         "rules": ["1 met"], "actions": [{"kind": "stop", "status": "done", "detail": "target met at round 8"}]},
    ]
    cohort = {"name": "target-a", "deployment": "d1", "state": "done", "strategy": "FedAvg", "clients": 6, "accuracy": RECORDED[:8], "loss": [1 - a for a in RECORDED[:8]],
              "target": target(value=0.93, deadline_rounds=12).to_dict(), "assurance": {"state": "met"}, "policy": "default",
              "decisions": decisions}
    (tmp_path / "run.json").write_text(json.dumps({"cohorts": [cohort], "run_dir": str(tmp_path)}))
    built = build_report(tmp_path)
    assert "assurance.png" in {Path(p).name for p in built["plots"]}
    rows = list(csv.DictReader(open(tmp_path / "report" / "decisions.csv")))
    assert [(r["round"], r["action"], r["status"]) for r in rows] == [("0", "set_rounds", "done"), ("8", "stop", "done")]
    assert "Decisions of the closed loop" in (tmp_path / "report" / "index.html").read_text()


def test_a_target_within_reach_of_the_rounds_left_is_not_called_missed_at_a_plateau() -> None:
    # Seed 2 of experiments/assurance-kill.yaml: 0.9278 best after 9 rounds, 0.0007 a round over the last 4.
    curve = [0.78, 0.87, 0.895, 0.915, 0.925, 0.9278, 0.9250, 0.9270, 0.9278]
    near = observe(curve, target(value=0.93, deadline_rounds=12))
    assert near.assessment is not None and near.assessment.state != "missed"
    far = observe(curve, target(value=0.95, deadline_rounds=12))
    assert far.assessment is not None and far.assessment.state == "missed"


def test_one_turn_cannot_repeat_an_action_past_its_cool_down(loop: tuple[AssuranceLoop, DeploymentTable, Recorder]) -> None:
    the_loop, table, recorder = loop
    running_deployment(table, {"value": 0.99})
    the_loop._policies["d1"] = ("scripted", Scripted([[Action("set_rounds", count=5)] * 20]))
    add_round(table, 1, 0.6)
    decision = the_loop.step("d1", "round")
    assert decision is not None and [a["status"] for a in decision.actions] == ["done"] + ["refused"] * 19
    assert recorder.calls == [("control", {"rounds": 5})]


def test_a_long_noisy_run_keeps_a_bounded_number_of_decisions(loop: tuple[AssuranceLoop, DeploymentTable, Recorder],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    MAX_DECISIONS = 20
    monkeypatch.setattr("mlfo_toolkit.orchestrator.loop.MAX_DECISIONS", MAX_DECISIONS)
    the_loop, table, _ = loop
    running_deployment(table, {"constraints": {"max_round_seconds": 5}})
    the_loop._policies["d1"] = ("scripted", Scripted([[Action("set_rounds", count=2000)]]))
    started = table.get("d1").initial["time"]  # type: ignore[index]
    for number in range(1, MAX_DECISIONS + 40):
        with table.edit("d1") as live:  # rounds of 1 s and 10 s by turns: on_track / at_risk, flipping every round
            live.rounds.append(FlRound(round=number, accuracy=0.5, loss=0.5, time=started + 5.5 * number + (4.5 if number % 2 else 0),
                                       sampled=4, results=4))
        the_loop.step("d1", "round")
    record = table.get("d1")
    assert len(record.decisions) == MAX_DECISIONS and record.decisions_dropped > 0
    assert record.decisions[0].actions[0]["kind"] == "set_rounds"  # a decision that acted is kept longest


def test_an_edit_that_changes_nothing_is_neither_written_nor_dated(tmp_path: Path) -> None:
    store = Store(tmp_path / "campus.sqlite3")
    table = DeploymentTable(store)
    running_deployment(table, {"value": 0.9})
    writes: list[str] = []
    put = store.put
    store.put = lambda kind, record_id, data, created: (writes.append(record_id), put(kind, record_id, data, created))[1]  # type: ignore[method-assign]
    dated = table.get("d1").updated
    table.update("d1", rounds=[])  # an idle poll: the same (empty) rounds again
    with table.edit("d1"):
        pass
    assert writes == [] and table.get("d1").updated == dated
    add_round(table, 1, 0.8)
    assert writes == ["d1"] and table.get("d1").updated > dated
    assert DeploymentTable(Store(tmp_path / "campus.sqlite3")).get("d1").rounds[0].accuracy == 0.8
