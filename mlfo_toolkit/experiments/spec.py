"""The experiment file: what to run, which events to fire at which FL round, how often, over which grid.

    name: kill-a-client
    backend: loopback                        # or network (root): the emulated network
    topology: {file: small, params: {}, backend: mininet, controller: faucet}   # network: brought up if none runs
    cohorts: ../intents/cohorts.yaml        # a cohort file (path relative to this file), or a list inline
    shape: {cohorts: 1, clients: 4, rounds: 6}
    fl: {fraction_fit: 1.0, min_fit: 2, min_available: 2, round_timeout: 8}
    init: {cpus: 0.5, clients: false, background: 20mbit}   # network: `mlfo init` before each run
    timeline:
      - at: {cohort: welding-a, round: 3}    # or at: {seconds: 20}
        kill: {cohort: welding-a, part: 1}   # or server: true; restart: {cohort, part}
      # network: meter {cohort, rate}, meter_clear N, link {a, b, rate | state: down/up},
      #          trace {a, b, file: leo-pass | my.csv, loop},
      #          cpu {host, cpus}, background {rate | off, pattern: step/sine/poisson, period}
    repeat: 2                                # seeds 1, 2 unless `seeds:` lists them
    sweep: {strategy: [FedAvg, FedMedian]}   # also policy, assurance.*, meter.rate, link.rate, init.cpus, ...
    policy: default                          # the closed loop's policy for every cohort (none, default,
    assurance: {plateau_rounds: 3}           #   module:Name, file.py:Name) and its thresholds

Validated with field and line before anything starts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from mlfo_toolkit.config import AssuranceSettings
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.fl.partitions import PartitionSpec
from mlfo_toolkit.fl.strategies import canonical_strategy
from mlfo_toolkit.fl.userapps import read_app
from mlfo_toolkit.net.changes import link_ends
from mlfo_toolkit.net.profiles import ProfileSpec
from mlfo_toolkit.net.topology import load_topology
from mlfo_toolkit.net.traces import load_trace
from mlfo_toolkit.orchestrator.assurance import check_thresholds
from mlfo_toolkit.util.files import read_input
from mlfo_toolkit.util.names import NAME_MAX, NAME_PATTERN, SEED_MAX
from mlfo_toolkit.util.yamlfiles import Float, Int, load_yaml, validate

# Events that change the emulated network; on loopback there is nothing to change.
NETWORK_EVENTS = ("meter", "meter_clear", "link", "trace", "cpu", "background")
EVENTS = ("kill", "restart", *NETWORK_EVENTS)
SWEEPABLE = ("strategy", "fraction_fit", "rounds", "clients", "policy", "partition", "profiles", "aggregation", "local_rounds",
             "edges")
# The closed loop's thresholds a sweep can vary: `sweep: {assurance.plateau_gain: [0.001, 0.01]}`.
SWEEPABLE_ASSURANCE_FIELDS = tuple(f"assurance.{name}" for name in AssuranceSettings.model_fields
                                   if name not in ("policy", "allowed_policies"))
# An event's value a sweep can vary: `sweep: {meter.rate: [5mbit, 50mbit]}` sets it on every such event.
SWEEPABLE_EVENT_FIELDS = {"meter.rate": ("meter", "rate"), "link.rate": ("link", "rate"), "cpu.cpus": ("cpu", "cpus"),
                          "background.rate": ("background", "rate"), "background.pattern": ("background", "pattern"),
                          "trace.file": ("trace", "file")}
RATE_PATTERN = r"^\d+(\.\d+)?\s*([kKmMgG]?(bit|bps)?)$"
BACKGROUND_RATE = RATE_PATTERN.replace("^", "^(off|").replace("$", ")$")
# Sweepable values of the init section: `sweep: {init.cpus: [0.25, 1]}`.
SWEEPABLE_INIT_FIELDS = ("init.cpus", "init.background")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class At(_Model):
    """When an event fires: at a round of a cohort (as that round starts), or seconds after the cohorts were sent."""

    cohort: str | None = None
    round: int | None = Field(None, ge=1, le=10_000)
    phase: Literal["train"] = "train"
    seconds: float | None = Field(None, ge=0, le=86_400)

    @model_validator(mode="after")
    def _one_trigger(self) -> At:
        if (self.round is None) == (self.seconds is None):
            raise ValueError("give either round (with cohort) or seconds")
        if self.round is not None and not self.cohort:
            raise ValueError("a round trigger names its cohort")
        return self


class Kill(_Model):
    """SIGKILL the SuperNode of one client (`part`) of a cohort, its FL server's SuperLink (`server: true`), or
    an edge aggregator of a hierarchical cohort (`edge`: its number from 0 or its name, e.g. edge2: its edge
    SuperLink and its relay); with `agent: true` (network) the node agent that runs it, and with the agent
    its Flower processes."""

    cohort: str
    part: int | None = Field(None, ge=0)
    server: bool = False
    edge: int | str | None = Field(None, description="an edge aggregator: its number (from 0) or its name")
    agent: bool = False

    @model_validator(mode="after")
    def _one_target(self) -> Kill:
        if sum((self.part is not None, self.server, self.edge is not None)) != 1:
            raise ValueError("name one of part (a client), server: true or edge (an edge aggregator)")
        return self


class Restart(_Model):
    """Start a killed client's SuperNode again, through the campus MLFO (it waits until the MLFO saw it lost);
    with `agent: true` (network) start its killed agent first."""

    cohort: str
    part: int = Field(ge=0)
    agent: bool = False


class Meter(_Model):
    cohort: int = Field(ge=1)
    rate: str = Field("10mbit", pattern=RATE_PATTERN)


class Link(_Model):
    """Change the link between nodes a and b (a host and its switch, or two switches): its rate, or down / up."""

    a: str
    b: str
    rate: str | None = Field(None, pattern=RATE_PATTERN)
    state: Literal["down", "up"] | None = None

    @model_validator(mode="after")
    def _one_change(self) -> Link:
        if (self.rate is None) == (self.state is None):
            raise ValueError("give either rate (e.g. 20mbit) or state (down or up)")
        return self


class Trace(_Model):
    """Make the link between nodes a and b follow a trace until the run ends: a CSV (relative to this file)
    of seconds,rate_mbit[,delay_ms,loss_percent], or a shipped one (leo-pass, cellular-drive)."""

    a: str
    b: str
    file: str = Field(max_length=1000)
    loop: bool = False


class Cpu(_Model):
    """A host's CPU limit in cores; null lifts it."""

    host: str
    cpus: float | None = Field(..., gt=0, le=256)


class Background(_Model):
    """Background iperf3 traffic from the app-client host to the app-server host at `rate`, or `off`; with a
    `pattern` (step, sine, poisson) the rate varies over `period` seconds (its peak is `rate`)."""

    rate: str = Field(pattern=BACKGROUND_RATE)
    pattern: Literal["constant", "step", "sine", "poisson"] = "constant"
    period: float = Field(30.0, ge=2, le=86_400)


class Absence(_Model):
    """One client away: from the start of round `away` until the start of round `back` (null: to the end)."""

    part: int = Field(ge=0)
    away: int = Field(ge=1, le=10_000)
    back: int | None = Field(None, ge=2, le=10_000)

    @model_validator(mode="after")
    def _back_after_away(self) -> Absence:
        if self.back is not None and self.back <= self.away:
            raise ValueError(f"back ({self.back}) must come after away ({self.away})")
        return self


class Availability(_Model):
    """Which clients of a cohort are away when: drawn (a share of the clients each `hold_rounds` rounds, from a
    seed) or listed (`absences`). Carried out as kill and restart events of the clients' SuperNodes."""

    cohort: str
    away_fraction: float | None = Field(None, gt=0, lt=1, description="the share of the cohort's clients away at any time")
    hold_rounds: int = Field(2, ge=1, le=1000, description="rounds a drawn set of clients stays away before the next draw")
    from_round: int = Field(2, ge=1, le=10_000, description="the first round with clients away")
    seed: int | None = Field(None, description="the draws' seed (default: the run's seed)")
    absences: list[Absence] | None = Field(None, max_length=10_000, description="per-client on/off times, instead of a draw")

    @model_validator(mode="after")
    def _one_source(self) -> Availability:
        if (self.away_fraction is None) == (self.absences is None):
            raise ValueError("give either away_fraction (a seeded draw) or absences (per-client on/off rounds)")
        return self


class Event(_Model):
    at: At
    kill: Kill | None = None
    restart: Restart | None = None
    meter: Meter | None = None
    meter_clear: int | None = Field(None, ge=1)
    link: Link | None = None
    trace: Trace | None = None
    cpu: Cpu | None = None
    background: Background | None = None

    @property
    def kind(self) -> str:
        return next(k for k in EVENTS if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _one_action(self) -> Event:
        actions = [k for k in EVENTS if getattr(self, k) is not None]
        if len(actions) != 1:
            raise ValueError(f"an event has exactly one action ({', '.join(EVENTS)}), not {len(actions)}")
        return self


class Shape(_Model):
    cohorts: Int | None = Field(None, ge=1, le=20)
    clients: Int | None = Field(None, ge=1, le=50)
    rounds: Int | None = Field(None, ge=1, le=1000)


class FlOverrides(_Model):
    strategy: str | None = None
    fraction_fit: Float | None = Field(None, gt=0, le=1)
    min_fit: int | None = Field(None, ge=1)
    min_available: int | None = Field(None, ge=1)
    round_timeout: float | None = Field(None, gt=0, le=86_400)
    partition: PartitionSpec | None = Field(None, description="how every cohort's clients split the data; a swept one "
                                            "is laid over it (so a fixed partition seed here holds for every point)")
    aggregation: Literal["flat", "hierarchical", "auto"] | None = Field(None, description="every cohort's aggregation")
    local_rounds: Int | None = Field(None, ge=1, le=1000, description="hierarchical: the edges' local rounds per global round")
    edges: Int | None = Field(None, ge=1, le=1000, description="hierarchical on loopback: how many edges")


class TopologyChoice(_Model):
    file: str = "small"
    params: dict[str, int] = Field(default_factory=dict)
    backend: Literal["mininet", "containernet"] = "mininet"  # used when the run brings the network up
    controller: str | None = Field(None, max_length=200, pattern=r"^(faucet|onos|[A-Za-z0-9.\-]+:\d{1,5})$",
                                   description="the OpenFlow controller of a network the run brings up: faucet, onos or "
                                   "HOST:PORT (default: none); meter events act through it")


class Init(_Model):
    """What `mlfo init` sets, applied before each run and undone after it."""

    cpus: float | None = Field(None, gt=0, le=256, description="FL servers' CPU limit (default: each host's cpus in the topology)")
    clients: bool = Field(False, description="limit the FL clients too")
    background: str | None = Field(None, pattern=BACKGROUND_RATE, description="background traffic rate, or off")
    links: list[Link] = Field(default_factory=list, description="links changed before the cohorts are sent (e.g. a "
                              "throttled backhaul the MLFO's placement then measures)")


class ExperimentFile(_Model):
    name: str = Field(max_length=NAME_MAX, pattern=NAME_PATTERN)
    description: str = Field("", max_length=4000, description="what the experiment asks (shown in its report)")
    backend: Literal["loopback", "network"] = "loopback"
    topology: TopologyChoice = Field(default_factory=TopologyChoice)
    init: Init | None = None
    cohorts: str | list[dict[str, Any]] = "cohorts.yaml"
    app: str | None = Field(None, description="a Flower app's folder (relative to this file) trained instead of mlfo's "
                            "model (loopback; in a network, register it in fl.apps before topo up)")
    shape: Shape = Field(default_factory=Shape)
    fl: FlOverrides = Field(default_factory=FlOverrides)
    timeline: list[Event] = Field(default_factory=list)
    availability: Availability | None = None
    profiles: ProfileSpec | None = Field(None, description="network: every FL client's device profile (a class, or a seeded "
                                         "draw of CPU shares), applied before each run and undone after it")
    repeat: int = Field(1, ge=1, le=100)
    seeds: list[Int] | None = None
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    timeout: float = Field(900, gt=0)
    policy: str | None = Field(None, max_length=300, description="the closed loop's policy for every cohort of every run")
    assurance: dict[str, Any] | None = Field(None, description="the closed loop's thresholds (the config's assurance section)")


# The model and field that check each sweepable run setting.
SWEPT_SETTINGS: dict[str, tuple[type[BaseModel], str]] = {
    "fraction_fit": (FlOverrides, "fraction_fit"), "rounds": (Shape, "rounds"), "clients": (Shape, "clients"),
    "policy": (AssuranceSettings, "policy"), "aggregation": (FlOverrides, "aggregation"), "local_rounds": (FlOverrides, "local_rounds"),
    "edges": (FlOverrides, "edges"),
}
SWEEP_KEYS = (*SWEEPABLE, *SWEEPABLE_EVENT_FIELDS, *SWEEPABLE_INIT_FIELDS, *SWEEPABLE_ASSURANCE_FIELDS)


@dataclass(frozen=True)
class RunPlan:
    """One run of the experiment: a sweep point and a repetition."""

    key: str  # folder name, unique in the experiment
    point: dict[str, Any]
    repetition: int
    seed: int


@dataclass(frozen=True)
class Experiment:
    spec: ExperimentFile
    source: Path
    runs: list[RunPlan]
    lines: dict[tuple[Any, ...], int]

    @property
    def name(self) -> str:
        return self.spec.name


def where(lines: dict[tuple[Any, ...], int], *path: Any) -> int | None:
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def load_experiment(path: Path) -> Experiment:
    """Parse and check an experiment file; ValidationError naming field and line, before anything runs."""
    source = str(path)
    data, lines = load_yaml(read_input(path, "experiment file"), source)
    if not isinstance(data, dict):
        raise ValidationError("an experiment file is a mapping (name, cohorts, timeline, ...)", source=source, line=1)
    spec = validate(ExperimentFile, data, lines, source)
    for i, event in enumerate(spec.timeline):
        if spec.backend == "loopback" and event.kind in NETWORK_EVENTS:
            raise ValidationError(f"a '{event.kind}' event changes the emulated network, which a loopback run does not have",
                                  field=f"timeline[{i}].{event.kind}", line=where(lines, "timeline", i, event.kind), source=source,
                                  hint="set backend: network (needs root and `mlfo topo up`), or drop the event")
    if spec.backend == "loopback" and (spec.profiles is not None or "profiles" in spec.sweep):
        raise ValidationError("device profiles set CPU limits and link rates of the emulated network's clients, which a "
                              "loopback run does not have", field="profiles", line=where(lines, "profiles") or where(lines, "sweep"),
                              source=source, hint="set backend: network (needs root), or drop profiles")
    if spec.backend == "loopback" and spec.init is not None:
        raise ValidationError("init sets CPU limits and background traffic in the emulated network, which a loopback run "
                              "does not have", field="init", line=where(lines, "init"), source=source,
                              hint="set backend: network (needs root), or drop init")
    for i, event in enumerate(spec.timeline):
        action = event.kill or event.restart
        if spec.backend == "loopback" and action is not None and action.agent:
            raise ValidationError("agents of a loopback run live in the mlfo process itself: only backend: network kills "
                                  "or restarts an agent", field=f"timeline[{i}].{event.kind}.agent",
                                  line=where(lines, "timeline", i, event.kind, "agent"), source=source,
                                  hint="drop agent: true to kill the SuperNode, or set backend: network")
    if spec.app is not None:
        if spec.backend != "loopback":
            raise ValidationError("app: runs an app on the run's own loopback agents; a running network's agents take "
                                  "apps from their config", field="app", line=where(lines, "app"), source=source,
                                  hint="register it under fl.apps before `topo up` and name model: app:NAME in the catalog")
        try:
            read_app(path.parent / spec.app)
        except ValidationError as err:
            raise ValidationError(err.reason, field="app", line=where(lines, "app"), source=source, hint=err.hint) from None
    if spec.backend == "network":
        _check_topology(spec, lines, source)
    _check_traces(spec, path, lines, source)
    if spec.assurance is not None:
        check_thresholds(spec.assurance, "experiment", lines, source, ("assurance",))
    for key, values in spec.sweep.items():
        if key not in SWEEP_KEYS:
            raise ValidationError(f"cannot sweep '{key}'", field=f"sweep.{key}", line=where(lines, "sweep", key), source=source,
                                  hint=f"sweepable: {', '.join(SWEEP_KEYS)}")
        if key in SWEEPABLE_INIT_FIELDS and spec.backend != "network":
            raise ValidationError(f"sweeps '{key}', which needs backend: network", field=f"sweep.{key}",
                                  line=where(lines, "sweep", key), source=source)
        if key in SWEEPABLE_EVENT_FIELDS and not any(e.kind == SWEEPABLE_EVENT_FIELDS[key][0] for e in spec.timeline):
            raise ValidationError(f"sweeps '{key}' but the timeline has no {SWEEPABLE_EVENT_FIELDS[key][0]} event",
                                  field=f"sweep.{key}", line=where(lines, "sweep", key), source=source)
        if not values:
            raise ValidationError("lists no values", field=f"sweep.{key}", line=where(lines, "sweep", key), source=source)
        for j, value in enumerate(values):
            try:
                values[j] = swept_value(spec, key, value)
            except PydanticValidationError as err:
                raise ValidationError(f"{value!r}: {err.errors()[0]['msg']}", field=f"sweep.{key}[{j}]",
                                      line=where(lines, "sweep", key), source=source) from None
        if key == "strategy":
            for j, value in enumerate(values):
                try:
                    canonical_strategy(str(value), f"sweep.strategy[{j}]")
                except ValidationError as err:
                    raise ValidationError(err.reason, field=f"sweep.strategy[{j}]",
                                          line=where(lines, "sweep", key), source=source, hint=err.hint) from None
    for j, seed in enumerate(spec.seeds or []):
        if not 0 <= seed <= SEED_MAX:
            raise ValidationError(f"{seed} is not a seed (0 to {SEED_MAX})", field=f"seeds[{j}]", line=where(lines, "seeds"), source=source)
    if spec.seeds is not None and len(spec.seeds) != spec.repeat:
        raise ValidationError(f"lists {len(spec.seeds)} seeds for repeat: {spec.repeat}", field="seeds",
                              line=where(lines, "seeds"), source=source)
    seeds = spec.seeds or list(range(1, spec.repeat + 1))
    keys = list(spec.sweep)
    runs = []
    points: list[tuple[Any, ...]] = list(itertools.product(*(spec.sweep[k] for k in keys)))
    for combo in points:
        point = dict(zip(keys, combo))
        label = "-".join(f"{k.split('.')[-1]}_{_label(k, v)}" for k, v in point.items()) or "base"
        if not re.fullmatch(NAME_PATTERN, label) or ".." in label:
            # Run keys are folder names: a value must not reach outside the experiment folder.
            raise ValidationError(f"the run name '{label[:80]}' made of these values is not a plain folder name",
                                  field="sweep", line=where(lines, "sweep"), source=source,
                                  hint="sweep values are names, numbers and rates (letters, digits, . _ -)")
        for repetition, seed in enumerate(seeds, start=1):
            runs.append(RunPlan(f"{label}-r{repetition}", point, repetition, seed))
    return Experiment(spec, path, runs, lines)


def _label(key: str, value: Any) -> Any:
    """A sweep value as it names a run: a policy `path/file.py:Name` by its Name."""
    if key == "partition":
        return PartitionSpec.model_validate(value).slug()
    if key == "profiles":
        return ProfileSpec.model_validate(value).label()
    if key == "trace.file":
        return Path(str(value)).stem
    return str(value).rsplit(":", 1)[-1] if key == "policy" else value


def swept_value(spec: ExperimentFile, key: str, value: Any) -> Any:
    """A sweep value checked as the field it replaces is checked (the init section, an event's action, a
    run setting); returns it as that field reads it (a number given as text becomes a number)."""
    if key in SWEEPABLE_INIT_FIELDS:
        base = spec.init.model_dump() if spec.init else {}
        name = key.split(".", 1)[1]
        return getattr(Init.model_validate({**base, name: value}), name)
    if key in SWEEPABLE_EVENT_FIELDS:
        kind, name = SWEEPABLE_EVENT_FIELDS[key]
        action = next(getattr(e, kind) for e in spec.timeline if getattr(e, kind) is not None)
        return getattr(type(action).model_validate({**action.model_dump(), name: value}), name)
    if key == "profiles":  # a plain mapping too
        return ProfileSpec.model_validate(value).model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
    if key == "partition":  # kept as a plain mapping: it is written into run.json with the point
        base = spec.fl.partition.model_dump(exclude_none=True) if spec.fl.partition else {}
        return PartitionSpec.model_validate({**base, **value} if isinstance(value, dict) else value).model_dump(exclude_none=True)
    if key in SWEPT_SETTINGS:
        model, name = SWEPT_SETTINGS[key]
        return getattr(model.model_validate({name: value}), name)
    if key in SWEEPABLE_ASSURANCE_FIELDS:
        name = key.split(".", 1)[1]
        return getattr(AssuranceSettings().with_thresholds({**(spec.assurance or {}), name: value}), name)
    return value


def _check_traces(spec: ExperimentFile, path: Path, lines: dict[tuple[Any, ...], int], source: str) -> None:
    """Trace files load (a relative path is taken from the experiment's folder and made absolute)."""
    swept = [str(v) for v in spec.sweep.get("trace.file", [])]
    for i, event in enumerate(spec.timeline):
        if event.trace is None:
            continue
        names = [event.trace.file, *swept]
        resolved = [str((path.parent / n).resolve()) if (path.parent / n).exists() else n for n in names]
        for name, field_name in zip(resolved, [f"timeline[{i}].trace.file", *["sweep.trace.file"] * len(swept)], strict=True):
            try:
                load_trace(name)
            except ValidationError as err:
                raise ValidationError(err.message, field=field_name, line=where(lines, "timeline", i, "trace", "file"), source=source,
                                      hint=err.hint) from None
        event.trace.file = resolved[0]
        if swept:
            spec.sweep["trace.file"] = resolved[1:]


def _check_topology(spec: ExperimentFile, lines: dict[tuple[Any, ...], int], source: str) -> None:
    """Network events name hosts, links and cohorts of the topology: check them before anything starts."""
    try:
        topology = load_topology(Path(spec.topology.file), spec.topology.params or None)
    except ValidationError as err:
        raise ValidationError(f"{err.message}", field="topology", line=where(lines, "topology"), source=source, hint=err.hint) from None
    hosts = {h.name: h for h in topology.hosts}
    cohorts = {h.cohort for h in topology.fl_servers()}
    for i, event in enumerate(spec.timeline):
        problem = None
        if event.meter is not None or event.meter_clear is not None:
            number = event.meter.cohort if event.meter is not None else event.meter_clear
            if number not in cohorts:
                problem = f"topology {topology.name} has no cohort {number} (it has {', '.join(map(str, sorted(c for c in cohorts if c)))})"
        elif event.link is not None or event.trace is not None:
            ends = event.link or event.trace
            assert ends is not None
            try:
                link_ends(topology, ends.a, ends.b)
            except ValidationError as err:
                problem = err.reason
        elif event.cpu is not None and event.cpu.host not in hosts:
            problem = f"topology {topology.name} has no host '{event.cpu.host}'"
        elif event.background is not None and not {"app-client", "app-server"} <= {h.role for h in topology.hosts}:
            problem = f"topology {topology.name} has no app-client and app-server hosts for background traffic"
        if problem:
            raise ValidationError(problem, field=f"timeline[{i}].{event.kind}", line=where(lines, "timeline", i, event.kind),
                                  source=source, hint="`mlfo topo show` lists the hosts, links and cohorts")
