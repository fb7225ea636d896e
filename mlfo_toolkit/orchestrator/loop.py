"""The campus MLFO's closed loop over one deployment: after every round, and at once when a client is
seen lost, observe -> assess -> ask the deployment's policy -> check and bound its actions -> carry
them out -> record the decision (and, a round later, what came of it).

No policy can loop or run away: every action kind is done at most `max_actions_per_kind` times a run,
not again within `cooldown_rounds` (per client for restarts), a client is restarted at most
`max_restarts_per_client` times, and what a policy asks that makes no sense (a part it does not have,
more clients than the cap) is refused and recorded as such. A policy that raises or answers nonsense
is recorded, and the deployment goes on under `none`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from mlfo_toolkit.config import AssuranceSettings, Config
from mlfo_toolkit.errors import MlfoError, ValidationError
from mlfo_toolkit.monitoring.metrics import MlfoMetrics
from mlfo_toolkit.orchestrator.assurance import (
    Action,
    Assessment,
    NonePolicy,
    Observation,
    Policy,
    Target,
    assess,
    check_actions,
    fmt_metric,
    load_policy,
)
from mlfo_toolkit.orchestrator.deployments import DeploymentTable
from mlfo_toolkit.orchestrator.records import MAX_DECISIONS, Decision, Deployment

log = logging.getLogger(__name__)


class Actuator(Protocol):
    """What the loop can have the campus MLFO do, through the southbound it has."""

    def restart(self, deployment_id: str, part: int, agent: str | None = None) -> dict[str, Any]: ...

    def start_part(self, deployment_id: str, part: int) -> dict[str, Any]: ...

    def remove_part(self, deployment_id: str, part: int) -> dict[str, Any]: ...

    def control(self, deployment_id: str, changes: dict[str, Any]) -> dict[str, Any]: ...

    def meter(self, deployment_id: str, rate_mbit: float | None) -> dict[str, Any]: ...

    def meter_rate(self, deployment_id: str) -> float | None: ...


def settings_for(config: Config, record: Deployment) -> AssuranceSettings:
    """The config's thresholds with the deployment's own overrides (sent with its intent)."""
    return config.assurance.with_thresholds(record.assurance_settings)


class AssuranceLoop:
    """Runs a deployment's closed loop; `step()` is called by the watch after a round or a lost client."""

    def __init__(self, config: Config, table: DeploymentTable, actuator: Actuator, metrics: MlfoMetrics) -> None:
        self.config = config
        self.table = table
        self.actuator = actuator
        self.metrics = metrics
        self._policies: dict[str, tuple[str, Policy]] = {}
        self._traffic: dict[str, tuple[int, float]] = {}  # deployment -> (round, bytes) at its last round
        self._lock = threading.Lock()

    # --- one turn ---------------------------------------------------------------------------------
    def step(self, deployment_id: str, trigger: str) -> Decision | None:
        with self._lock:  # one turn at a time per MLFO: turns are short, and actions must not interleave
            record = self.table.get(deployment_id)
            if record.ended or record.state != "running":
                return None
            target = Target.from_intent(record.intent)
            settings = settings_for(self.config, record)
            observation = self.observe(record, target, settings, trigger)
            assessment = assess(observation)
            observation = dataclasses.replace(observation, assessment=assessment)
            name, policy = self._policy(record, settings)
            error = None
            actions: list[Action] = []
            # After a stop the run ends with the round under way, which may still report: the loop records what it
            # shows and does not ask the policy again (a second stop, with the next round's figures, was once recorded).
            if not _stopped(record):
                try:
                    actions = check_actions(policy.decide(observation))
                except Exception as err:  # a researcher's policy must not take the MLFO down
                    error = f"policy {name} failed ({type(err).__name__}: {err}); the deployment goes on under none"
                    log.warning("deployment %s: %s", deployment_id, error)
                    self._policies[deployment_id] = ("none", NonePolicy())
            results: list[dict[str, Any]] = []
            for action in actions:  # each bounded against the record as the earlier ones left it
                results.append(self._carry_out(self.table.get(deployment_id), observation, action, results))
            changed = assessment is not None and (record.assurance or {}).get("state") != assessment.state
            decision = None
            if results or error or changed:
                decision = Decision(at=time.time(), round=observation.round, trigger=trigger, policy=name,
                                    observed=observation.summary(),
                                    assessment={"state": assessment.state, "reason": assessment.reason} if assessment else None,
                                    rules=sorted({a.rule for a in actions if a.rule}), actions=results, error=error)
            self._record(deployment_id, observation.round, decision, assessment, changed)
            for result in results:
                if result["status"] == "done":
                    self.metrics.actions.labels(result["kind"]).inc()
            return decision

    def conclude(self, deployment_id: str) -> str | None:
        """A run that went all its rounds: record how it ended against its target (met, or missed if its
        value was not reached) and return that as the deployment's reason."""
        with self._lock:
            record = self.table.get(deployment_id)
            target = Target.from_intent(record.intent)
            if not target.assured or record.ended:
                return None
            settings = settings_for(self.config, record)
            observation = self.observe(record, target, settings, "end")
            assessment = assess(observation)
            if assessment is not None and target.value is not None and assessment.state not in ("met", "missed"):
                assessment = Assessment("missed", f"the run ended after {observation.round} rounds with {target.metric} "
                                                  f"{fmt_metric(observation.best)}, short of {target.value:g}")
            if assessment is None:
                return None
            if (record.assurance or {}).get("state") == assessment.state:  # nothing new to record
                self.forget_unlocked(deployment_id)
                return f"target {assessment.state}: {assessment.reason}" if assessment.state in ("met", "missed") else None
            decision = Decision(at=time.time(), round=observation.round, trigger="end", policy=self._policy(record, settings)[0],
                                observed=observation.summary(), assessment={"state": assessment.state, "reason": assessment.reason})
            self._record(deployment_id, observation.round, decision, assessment, changed=True)
            self.forget_unlocked(deployment_id)
            if assessment.state in ("met", "missed"):
                return f"target {assessment.state}: {assessment.reason}"
            return None

    def _record(self, deployment_id: str, round_: int, decision: Decision | None, assessment: Assessment | None,
                changed: bool) -> None:
        """Into the deployment's record: what came of the previous decision (the round after it), this
        decision, and the assurance state (`since` kept while the state has not changed)."""
        with self.table.edit(deployment_id) as live:
            previous = live.decisions[-1] if live.decisions else None
            if previous is not None and previous.outcome is None and previous.round < round_:
                previous.outcome = self._outcome(live, previous)
            if decision is not None:
                live.decisions.append(decision)
                _trim(live)
            if assessment is not None:
                since = (live.assurance or {}).get("since") if not changed else None
                live.assurance = {"state": assessment.state, "reason": assessment.reason, "since": since or time.time()}

    # --- what the MLFO sees -------------------------------------------------------------------------
    def observe(self, record: Deployment, target: Target, settings: AssuranceSettings, trigger: str) -> Observation:
        rounds = sorted(record.rounds, key=lambda r: r.round)
        metric = [float(getattr(r, target.metric)) for r in rounds if getattr(r, target.metric) is not None]
        seconds = [s for s in record.round_seconds() if s is not None]
        control = record.control or {}
        rounds_total = int(control.get("rounds") or record.params.rounds)
        started = (record.initial or {}).get("time") or (record.created + (record.orchestration_seconds or 0))
        elapsed = max(0.0, time.time() - float(started))
        done = rounds[-1].round if rounds else 0
        rounds_left = (target.deadline_rounds or rounds_total) - done
        seconds_left = None if target.deadline_seconds is None else target.deadline_seconds - elapsed
        traffic = record.traffic or {}
        total_bytes = float(traffic.get("bytes_sent", 0) or 0) + float(traffic.get("bytes_received", 0) or 0)
        measured = None
        earlier = self._traffic.get(record.id)
        if done and (earlier is None or earlier[0] != done):
            if earlier is not None and seconds and total_bytes > earlier[1]:
                measured = (total_bytes - earlier[1]) * 8 / max(seconds[-1], 1e-3) / 1e6
            self._traffic[record.id] = (done, total_bytes)
        return Observation(
            deployment=record.id, cohort=record.name, trigger=trigger, time=time.time(), round=done, rounds_total=rounds_total,
            target=target, metric=metric, accuracy=[float(r.accuracy) for r in rounds if r.accuracy is not None],
            loss=[float(r.loss) for r in rounds if r.loss is not None], round_seconds=seconds,
            last_phases=rounds[-1].phases if rounds else None, elapsed_seconds=elapsed,
            rounds_left=max(0, rounds_left), seconds_left=seconds_left,
            running=[c.part for c in record.clients if c.state in ("running", "starting")],
            lost=[c.part for c in record.clients if c.state == "lost"],
            spare=[c.part for c in record.clients if c.state == "spare"],
            restarts={c.part: len(c.restarts) for c in record.clients},
            traffic_mb=total_bytes / 1e6 if traffic else None, measured_mbit=measured,
            fraction_fit=float(control.get("fraction_fit") or record.params.fraction_fit),
            min_fit=int(control.get("min_fit") or record.params.min_fit),
            min_available=int(control.get("min_available") or record.params.min_available),
            network=self.config.mlfo.network_dir is not None, meter_rate_mbit=self.actuator.meter_rate(record.id),
            settings=settings,
        )

    def _policy(self, record: Deployment, settings: AssuranceSettings) -> tuple[str, Policy]:
        cached = self._policies.get(record.id)
        if cached is not None:
            return cached
        name = record.policy or settings.policy
        try:
            policy = load_policy(name, settings, base=Path.cwd())
        except ValidationError as err:
            log.warning("deployment %s: %s; it runs under none", record.id, err.message)
            self._policies[record.id] = ("none", NonePolicy())
            return self._policies[record.id]
        self._policies[record.id] = (name, policy)
        return self._policies[record.id]

    def forget(self, deployment_id: str) -> None:
        with self._lock:
            self.forget_unlocked(deployment_id)

    def forget_unlocked(self, deployment_id: str) -> None:
        self._policies.pop(deployment_id, None)
        self._traffic.pop(deployment_id, None)

    # --- doing it, within bounds ------------------------------------------------------------------------
    def _carry_out(self, record: Deployment, observation: Observation, action: Action, earlier: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {**action.to_dict()}
        refusal = self._bound(record, observation, action, earlier)
        if refusal:
            result.update(status="refused", detail=refusal)
            return result
        try:
            result.update(status="done", detail=self._do(record, observation, action))
        except MlfoError as err:
            result.update(status="failed", detail=err.message)
        log.info("deployment %s, round %d: %s %s", record.id, observation.round, action.kind, result["status"])
        return result

    def _bound(self, record: Deployment, observation: Observation, action: Action, earlier: list[dict[str, Any]]) -> str | None:
        """Why an action is not done (its bound, its cool-down, or it makes no sense here), or None. `earlier`:
        the actions of this same turn so far (they count as done in this round)."""
        settings = observation.settings
        done = _done(record, action.kind)
        done += [(observation.round, a) for a in earlier if a.get("status") == "done" and a.get("kind") == action.kind]
        if len(done) >= settings.max_actions_per_kind:
            return f"{action.kind} was done {len(done)} times in this run (assurance.max_actions_per_kind)"
        same = [r for r, a in done if action.part is None or a.get("part") == action.part]
        if same and observation.round - max(same) < settings.cooldown_rounds and action.kind != "stop":
            return f"{action.kind} was done in round {max(same)}: cooling down for {settings.cooldown_rounds} round(s)"
        parts = {c.part: c for c in record.clients}
        if action.kind in ("restart_client", "replace_client", "remove_client"):
            client = parts.get(action.part) if action.part is not None else None
            if client is None:
                return f"the cohort has no client part {action.part}"
            if action.kind in ("restart_client", "replace_client") and client.state not in ("lost", "failed"):
                return f"client {action.part} is {client.state}, not lost"
            if action.kind == "restart_client" and len(client.restarts) >= settings.max_restarts_per_client:
                return f"client {action.part} was restarted {len(client.restarts)} times (assurance.max_restarts_per_client)"
            if action.kind == "replace_client" and not observation.spare:
                return "no spare client host to start it on"
            if action.kind == "remove_client" and client.state != "running":
                return f"client {action.part} is {client.state}, not running"
        if action.kind == "add_clients":
            running = sum(1 for c in record.clients if c.state in ("running", "starting"))
            cap = observation.target.max_clients
            if not action.count or action.count < 1:
                return "add_clients needs a count of 1 or more"
            if not observation.spare:
                return "no spare client of the cohort to add"
            if cap is not None and running + action.count > cap:
                return f"{running} clients run and the intent allows {cap}"
        if action.kind == "set_fraction_fit" and (action.value is None or not 0 < action.value <= 1):
            return f"fraction_fit {action.value} is not above 0 and at most 1"
        if action.kind in ("set_min_fit", "set_min_available") and (not action.count or action.count < 1):
            return f"{action.kind} needs a count of 1 or more"
        if action.kind == "set_rounds" and (not action.count or action.count < max(1, observation.round)):
            return f"the run has done {observation.round} rounds: it cannot be shorter than that"
        if action.kind in ("set_meter", "clear_meter") and not observation.network:
            return "meters exist in the emulated network only"
        if action.kind == "set_meter" and (action.value is None or action.value <= 0):
            return "set_meter needs a rate in Mbit/s above 0"
        return None

    def _do(self, record: Deployment, observation: Observation, action: Action) -> str:
        kind = action.kind
        if kind == "restart_client":
            answer = self.actuator.restart(record.id, int(action.part or 0))
            return f"client {action.part} restarted on {answer.get('agent')} in {answer.get('seconds')} s"
        if kind == "replace_client":
            answer = self.actuator.restart(record.id, int(action.part or 0), agent="spare")
            return f"client {action.part} started on the spare host {answer.get('agent')} in {answer.get('seconds')} s"
        if kind == "add_clients":
            started = [self.actuator.start_part(record.id, part)["part"] for part in observation.spare[: int(action.count or 1)]]
            return f"started client part(s) {', '.join(map(str, started))}"
        if kind == "remove_client":
            self.actuator.remove_part(record.id, int(action.part or 0))
            return f"client {action.part} taken out (its SuperNode stopped, not sampled again)"
        if kind == "set_fraction_fit":
            self.actuator.control(record.id, {"fraction_fit": action.value})
            return f"fraction_fit {observation.fraction_fit:g} -> {action.value:g} from the next round"
        if kind in ("set_min_fit", "set_min_available"):
            key = kind.removeprefix("set_")
            self.actuator.control(record.id, {key: action.count})
            return f"{key} -> {action.count} from the next round"
        if kind == "set_rounds":
            self.actuator.control(record.id, {"rounds": action.count})
            return f"rounds {observation.rounds_total} -> {action.count}"
        if kind == "stop":
            word = {"met": "target met", "missed": "target missed"}.get(action.outcome or "", "stopped by the policy")
            reason = f"{word} at round {observation.round}" + (f": {action.reason}" if action.reason else "")
            self.actuator.control(record.id, {"stop": reason[:300]})
            return reason
        if kind == "set_meter":
            self.actuator.meter(record.id, float(action.value or 0))
            return f"meter {observation.meter_rate_mbit or 'none'} -> {action.value:g} Mbit/s"
        if kind == "clear_meter":
            self.actuator.meter(record.id, None)
            return "meter cleared"
        raise MlfoError(f"unknown action {kind}")

    @staticmethod
    def _outcome(record: Deployment, decision: Decision) -> str:
        """What the round after a decision showed: its results, time and metric."""
        later = [r for r in record.rounds if r.round > decision.round]
        if not later:
            return "no round finished after it"
        first = min(later, key=lambda r: r.round)
        ordered = sorted(record.rounds, key=lambda r: r.round)
        took = record.round_seconds()[ordered.index(first)]
        lost = [c.part for c in record.clients if c.state == "lost"]
        return (f"round {first.round}: {first.results}/{first.sampled} results"
                + (f", {took:.1f} s" if took is not None else "") + (f", accuracy {first.accuracy:.4f}" if first.accuracy is not None else "")
                + (f", lost clients {lost}" if lost else ", no client lost"))


def _done(record: Deployment, kind: str) -> list[tuple[int, dict[str, Any]]]:
    """The actions of one kind the loop carried out in this run, each with its decision's round."""
    return [(d.round, a) for d in record.decisions for a in d.actions if a.get("status") == "done" and a.get("kind") == kind]


def _stopped(record: Deployment) -> bool:
    """Whether the loop stopped this run already (a stop action done)."""
    return bool(_done(record, "stop"))


def _trim(record: Deployment) -> None:
    """Keep a record's decisions bounded: past MAX_DECISIONS the oldest one without an action goes (or the oldest)."""
    while len(record.decisions) > MAX_DECISIONS:
        index = next((i for i, d in enumerate(record.decisions) if not d.actions), 0)
        del record.decisions[index]
        record.decisions_dropped += 1
