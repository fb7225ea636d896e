"""Intent assurance, the MLFO's closed loop (ITU-T Y.3172: monitor, evaluate, decide): what a deployment
is asked to reach, what the MLFO sees after every round, how far it is from the target, and the
policies that decide what to do about it.

A policy is a small object with `decide(observation) -> list[Action]`: mlfo ships `none` (observe and
report only) and `default` (rules with thresholds from the `assurance` config). A researcher's own is
named `package.module:Name` or `path/to/file.py:Name`; the campus MLFO loads it if it is shipped or
listed in `assurance.allowed_policies`. Whatever a policy returns is checked and bounded by the MLFO
before anything is done (`orchestrator.loop`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mlfo_toolkit.config import AssuranceSettings
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.orchestrator.intents import Intent, client_cap, target_metric
from mlfo_toolkit.util.plugins import SPEC, load_object
from mlfo_toolkit.util.yamlfiles import field_name, line_of, validate

AssuranceState = Literal["on_track", "at_risk", "met", "missed"]
ActionKind = Literal["restart_client", "replace_client", "add_clients", "remove_client", "set_fraction_fit", "set_min_fit",
                     "set_min_available", "set_rounds", "set_meter", "clear_meter", "stop"]
ACTION_KINDS: tuple[str, ...] = ActionKind.__args__  # type: ignore[attr-defined]
SHIPPED_POLICIES = ("none", "default")


@dataclass(frozen=True)
class Target:
    """What a deployment is asked to reach, read from its intent's first target."""

    operation: str
    metric: str  # accuracy or loss
    value: float | None = None
    deadline_rounds: int | None = None
    deadline_seconds: float | None = None
    max_clients: int | None = None
    max_traffic_mb: float | None = None
    max_round_seconds: float | None = None

    @classmethod
    def from_intent(cls, intent: dict[str, Any]) -> Target:
        target = Intent.model_validate(intent).targets[0]
        deadline = target.deadline
        number = target.constraints.get

        def positive(key: str) -> float | None:
            value = number(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return cls(operation={"maximize": "maximise", "minimize": "minimise"}.get(target.operation, target.operation),
                   metric=target_metric(target.operand), value=target.value,
                   deadline_rounds=deadline.rounds if deadline else None, deadline_seconds=deadline.seconds if deadline else None,
                   max_clients=client_cap(target), max_traffic_mb=positive("max_traffic_mb"),
                   max_round_seconds=positive("max_round_seconds"))

    @property
    def assured(self) -> bool:
        """Whether there is anything to assure (a value, a deadline or a bound)."""
        return any(v is not None for v in (self.value, self.deadline_rounds, self.deadline_seconds, self.max_clients,
                                           self.max_traffic_mb, self.max_round_seconds))

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "loss" or self.operation == "minimise"

    def reached(self, value: float | None) -> bool:
        if value is None or self.value is None:
            return False
        return value <= self.value if self.lower_is_better else value >= self.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Assessment:
    state: AssuranceState
    reason: str
    risks: tuple[str, ...] = ()  # at_risk: pace, lost, round_time, traffic


@dataclass(frozen=True)
class Observation:
    """What the MLFO sees of a deployment after a round, or when a client is seen lost."""

    deployment: str
    cohort: str
    trigger: str  # start, round or lost
    time: float
    round: int  # the last round finished (0: none yet)
    rounds_total: int
    target: Target
    metric: list[float]  # the target's metric after each round (accuracy or loss)
    accuracy: list[float]
    loss: list[float]
    round_seconds: list[float]
    last_phases: dict[str, float] | None
    elapsed_seconds: float  # since the first round began
    rounds_left: int | None  # to the deadline, or else to the run's end
    seconds_left: float | None  # to a deadline in seconds
    running: list[int]  # client parts running
    lost: list[int]
    spare: list[int]  # parts of the cohort not running, on hosts free for them
    restarts: dict[int, int]  # part -> restarts so far
    traffic_mb: float | None
    measured_mbit: float | None  # the FL server's traffic rate during the last round
    fraction_fit: float
    min_fit: int
    min_available: int
    network: bool  # whether a meter can change (the emulated network)
    meter_rate_mbit: float | None  # the cohort's meter, if one is set
    assessment: Assessment | None = None
    settings: AssuranceSettings = field(default_factory=AssuranceSettings)

    @property
    def best(self) -> float | None:
        if not self.metric:
            return None
        return min(self.metric) if self.target.lower_is_better else max(self.metric)

    def gain_per_round(self, rounds: int) -> float | None:
        """How much the best value improved per round over the last `rounds` rounds (None: too few rounds)."""
        if len(self.metric) <= rounds:
            return None
        pick = min if self.target.lower_is_better else max
        before, now = pick(self.metric[:-rounds]), pick(self.metric)
        gain = (before - now) if self.target.lower_is_better else (now - before)
        return gain / rounds

    def summary(self) -> dict[str, Any]:
        """The part of an observation a decision records."""
        metric = self.metric[-1] if self.metric else None
        return {
            "round": self.round, "rounds_total": self.rounds_total, self.target.metric: _round(metric), "best": _round(self.best),
            "gain_per_round": _round(self.gain_per_round(self.settings.plateau_rounds)), "rounds_left": self.rounds_left,
            "seconds_left": _round(self.seconds_left, 1), "elapsed_seconds": _round(self.elapsed_seconds, 1),
            "round_seconds": _round(self.round_seconds[-1], 2) if self.round_seconds else None,
            "running": len(self.running), "lost": self.lost, "spare": len(self.spare), "traffic_mb": _round(self.traffic_mb, 2),
            "measured_mbit": _round(self.measured_mbit, 2), "fraction_fit": self.fraction_fit, "min_fit": self.min_fit,
            "meter_rate_mbit": self.meter_rate_mbit,
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


@dataclass(frozen=True)
class Action:
    """One thing a policy asks the MLFO to do (checked, bounded and carried out by the MLFO)."""

    kind: str
    part: int | None = None  # restart_client, replace_client, remove_client
    count: int | None = None  # add_clients, set_min_fit, set_min_available, set_rounds
    value: float | None = None  # set_fraction_fit; set_meter: Mbit/s
    outcome: Literal["met", "missed"] | None = None  # stop
    reason: str = ""
    rule: str = ""  # which rule of the policy asked for it

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


class Policy(Protocol):
    """An observation in, a list of actions out. Any object with this method is a policy."""

    def decide(self, observation: Observation) -> list[Action]: ...


def check_thresholds(values: dict[str, Any], owner: str, lines: dict[tuple[Any, ...], int], source: str,
                     prefix: tuple[Any, ...]) -> None:
    """A cohort's, an experiment's or a sent intent's assurance thresholds, checked as the config's assurance
    section is (field and line on failure); the policy is `owner`'s own field, never a threshold."""
    if {"policy", "allowed_policies"} & set(values):
        raise ValidationError(f"holds thresholds only (the policy is the {owner}'s own field)", field=field_name(prefix),
                              line=line_of(prefix, lines), source=source)
    validate(AssuranceSettings, values, lines, source, prefix=prefix)


# --- judging how a deployment stands --------------------------------------------------------------
def assess(observation: Observation) -> Assessment | None:
    """On track, at risk, met or missed, with the reason; None when the intent asks for nothing to assure."""
    target, settings = observation.target, observation.settings
    if not target.assured:
        return None
    metric = target.metric
    best = observation.best
    word = "at most" if target.lower_is_better else "at least"
    if target.value is not None and target.reached(best):
        where = next(i + 1 for i, v in enumerate(observation.metric) if target.reached(v))
        return Assessment("met", f"{metric} {fmt_metric(best)} reached {word} {target.value:g} at round {where}")
    out_of_rounds = target.deadline_rounds is not None and observation.round >= target.deadline_rounds
    out_of_time = target.deadline_seconds is not None and observation.seconds_left is not None and observation.seconds_left <= 0
    if target.value is not None and (out_of_rounds or out_of_time):
        by = f"{target.deadline_rounds} rounds" if out_of_rounds else f"{target.deadline_seconds:g} s"
        return Assessment("missed", f"the deadline ({by}) passed with {metric} {fmt_metric(best)}, short of {target.value:g}")
    gain = observation.gain_per_round(settings.plateau_rounds)
    if target.value is not None and gain is not None and gain < settings.plateau_gain and best is not None and \
            not target.reached(best + (-1 if target.lower_is_better else 1) * settings.plateau_gain * (observation.rounds_left or 0)):
        # Stopped improving, and not even `plateau_gain` a round from here on would reach it in the rounds left.
        return Assessment("missed", f"{metric} has stopped improving at {fmt_metric(best)} ({settings.plateau_rounds} rounds gained "
                                    f"{gain * settings.plateau_rounds:.4f}), short of {target.value:g}")
    risks: dict[str, str] = {}
    if target.value is not None and best is not None and gain is not None and observation.rounds_left is not None:
        projected = best + (-1 if target.lower_is_better else 1) * gain * observation.rounds_left * 0.5
        if not target.reached(projected):
            risks["pace"] = f"at this pace {metric} reaches about {fmt_metric(projected)} in the {observation.rounds_left} rounds left"
    if observation.lost:
        risks["lost"] = f"client{'s' if len(observation.lost) > 1 else ''} {', '.join(map(str, observation.lost))} lost"
    if target.max_round_seconds is not None and observation.round_seconds and observation.round_seconds[-1] > target.max_round_seconds:
        risks["round_time"] = f"round {observation.round} took {observation.round_seconds[-1]:.1f} s, over {target.max_round_seconds:g} s"
    if target.max_traffic_mb is not None and observation.traffic_mb is not None and observation.round:
        projected_mb = observation.traffic_mb / observation.round * observation.rounds_total
        if projected_mb > target.max_traffic_mb:
            risks["traffic"] = f"the run would move about {projected_mb:.0f} MB, over its budget of {target.max_traffic_mb:g} MB"
    if risks:
        return Assessment("at_risk", "; ".join(risks.values()), tuple(risks))
    return Assessment("on_track", f"{metric} {fmt_metric(best)} after round {observation.round}" if best is not None else "no round yet")


def fmt_metric(value: float | None) -> str:
    """A metric as decisions and reasons show it."""
    return "-" if value is None else f"{value:.4f}"


# --- the shipped policies --------------------------------------------------------------------------
class NonePolicy:
    """Observe and report only: the assurance state is recorded, nothing is changed."""

    def decide(self, observation: Observation) -> list[Action]:
        return []


class DefaultPolicy:
    """mlfo's rules, in order; each action is bounded and cooled down by the MLFO (see AssuranceSettings).

    1. met: stop (an `achieve` target at once; a `maximise` target once the metric stopped improving);
    2. missed: stop, with the reason;
    3. a lost client: restart it (up to max_restarts_per_client), then start its part on a spare host;
    4. a round over max_round_seconds: raise the cohort's meter (network), else sample fewer clients;
    5. behind the pace to the value, with a spare client within the cap: add one;
    6. the traffic budget: sample fewer clients, and stop before it is spent;
    7. a deadline in rounds the run is shorter (or longer) than: set the run's rounds to it.

    An intent that asks for nothing to assure (no value, deadline or bound) is left alone.
    """

    def decide(self, observation: Observation) -> list[Action]:
        o, target, settings = observation, observation.target, observation.settings
        if not target.assured:
            return []
        state = o.assessment.state if o.assessment else None
        if state == "met" and o.assessment is not None:
            plateau = o.gain_per_round(settings.plateau_rounds)
            if target.operation == "achieve" or (plateau is not None and plateau < settings.plateau_gain):
                return [Action("stop", outcome="met", reason=o.assessment.reason, rule="1 met")]
        if state == "missed" and o.assessment is not None:
            return [Action("stop", outcome="missed", reason=o.assessment.reason, rule="2 missed")]
        actions: list[Action] = []
        spare = list(o.spare)
        for part in o.lost:
            if o.restarts.get(part, 0) < settings.max_restarts_per_client:
                actions.append(Action("restart_client", part=part, reason=f"client {part} lost", rule="3 lost client"))
            elif spare:
                actions.append(Action("replace_client", part=part, reason=f"client {part} lost again after "
                                      f"{o.restarts.get(part, 0)} restarts: its part on a spare host", rule="3 lost client"))
                spare.pop(0)
        if target.max_round_seconds is not None and o.round_seconds and o.round_seconds[-1] > target.max_round_seconds:
            why = f"round {o.round} took {o.round_seconds[-1]:.1f} s (bound {target.max_round_seconds:g} s)"
            if o.network and o.meter_rate_mbit is not None:
                actions.append(Action("set_meter", value=o.meter_rate_mbit * settings.meter_step, reason=why + ": a faster meter",
                                      rule="4 round time"))
            elif o.fraction_fit > settings.min_fraction_fit:
                actions.append(Action("set_fraction_fit", value=max(settings.min_fraction_fit, round(o.fraction_fit / 2, 3)),
                                      reason=why + ": sample fewer clients", rule="4 round time"))
        if o.assessment is not None and "pace" in o.assessment.risks and spare and not o.lost:
            room = len(spare) if target.max_clients is None else max(0, target.max_clients - len(o.running))
            if room:
                actions.append(Action("add_clients", count=1, reason="behind the pace to the target: one more client", rule="5 at risk"))
        if target.max_traffic_mb is not None and o.traffic_mb is not None and o.round:
            per_round = o.traffic_mb / o.round
            if o.traffic_mb + per_round > target.max_traffic_mb:
                actions.append(Action("stop", outcome="missed", reason=f"the next round would pass the traffic budget "
                                      f"({o.traffic_mb:.1f} of {target.max_traffic_mb:g} MB used)", rule="6 traffic"))
            elif per_round * o.rounds_total > target.max_traffic_mb and o.fraction_fit > settings.min_fraction_fit:
                actions.append(Action("set_fraction_fit", value=max(settings.min_fraction_fit, round(o.fraction_fit * 0.75, 3)),
                                      reason=f"at {per_round:.1f} MB a round the budget of {target.max_traffic_mb:g} MB would "
                                             "not last", rule="6 traffic"))
        if target.deadline_rounds is not None and o.rounds_total != target.deadline_rounds and o.trigger == "start":
            actions.append(Action("set_rounds", count=target.deadline_rounds, reason=f"the deadline is {target.deadline_rounds} rounds",
                                  rule="7 deadline"))
        return actions


# --- loading ------------------------------------------------------------------------------------------


def load_policy(name: str, settings: AssuranceSettings, base: Path | None = None) -> Policy:
    """A policy by name: `none`, `default`, `package.module:Name` or `path/file.py:Name` (relative to `base`).

    The object is built with `settings` if its constructor takes an argument, else with none."""
    if name == "none":
        return NonePolicy()
    if name == "default":
        return DefaultPolicy()
    if not SPEC.match(name):
        raise ValidationError(f"'{name}' is not none, default, package.module:Name or file.py:Name", field="policy")
    return load_object(name, settings, "decide", field="policy", base=base)  # type: ignore[no-any-return]


def check_actions(returned: Any) -> list[Action]:
    """A policy's answer as actions; ValueError saying what is wrong with it otherwise."""
    if returned is None:
        return []
    if not isinstance(returned, (list, tuple)):
        raise ValueError(f"decide() returned {type(returned).__name__}, not a list of actions")
    actions = []
    for item in returned:
        if isinstance(item, dict):
            item = Action(**{k: v for k, v in item.items() if k in Action.__dataclass_fields__})
        if not isinstance(item, Action):
            raise ValueError(f"decide() returned {item!r}, not an Action")
        if item.kind not in ACTION_KINDS:
            raise ValueError(f"unknown action '{item.kind}' (known: {', '.join(ACTION_KINDS)})")
        actions.append(item)
    return actions
