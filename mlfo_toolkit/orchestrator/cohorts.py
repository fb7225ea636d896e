"""Cohort files (readable per-cohort form and the prototype's parallel lists) and planning."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.fl.partitions import PartitionSpec
from mlfo_toolkit.fl.strategies import canonical_strategy
from mlfo_toolkit.orchestrator.assurance import check_thresholds
from mlfo_toolkit.orchestrator.intents import Catalog, Intent, parse_intent, understood
from mlfo_toolkit.util.files import read_input
from mlfo_toolkit.util.names import NAME_MAX, NAME_PATTERN, SEED_MAX
from mlfo_toolkit.util.resources import resource_path
from mlfo_toolkit.util.yamlfiles import load_yaml, validate

PROTOTYPE_LISTS = {
    "intentdist": "intent",
    "sameserverdist": "sameserver",
    "avgalgodist": "strategy",
    "fracfitdist": "fraction_fit",
    "minfitdist": "min_fit",
    "minavdist": "min_available",
    "numrounddist": "rounds",
}


class CohortSpec(BaseModel):
    """One cohort as written in the readable form; unset values come from `defaults` or fl.*."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=NAME_MAX, pattern=NAME_PATTERN)
    size: int = Field(ge=1, le=10_000)
    intent: str | dict[str, Any]
    sameserver: StrictBool = False
    strategy: str | None = None
    fraction_fit: float | None = Field(None, gt=0, le=1)
    min_fit: int | None = Field(None, ge=1)
    min_available: int | None = Field(None, ge=1)
    rounds: int | None = Field(None, ge=1, le=10_000)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="data split and initial model (default: fl.seed)")
    round_timeout: float | None = Field(None, gt=0, le=86_400, description="seconds a round waits for clients (default: fl.round_timeout)")
    policy: str | None = Field(None, max_length=300, description="the closed loop's policy (default: the campus MLFO's assurance.policy)")
    assurance: dict[str, Any] | None = Field(None, description="assurance thresholds for this cohort (see the assurance config)")
    partition: PartitionSpec | None = Field(None, description="how the clients split the data (default: fl.partitioning)")
    aggregation: Literal["flat", "hierarchical", "auto"] | None = Field(
        None, description="hierarchical: an edge aggregator per group of clients; auto: where the MLFO measures that it pays")
    edges: int | None = Field(None, ge=1, le=1000, description="hierarchical: how many edges (default: one per 10 clients)")
    local_rounds: int | None = Field(None, ge=1, le=1000, description="hierarchical: the edges' local rounds per global round")


class CohortDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: str | None = None
    fraction_fit: float | None = Field(None, gt=0, le=1)
    min_fit: int | None = Field(None, ge=1)
    min_available: int | None = Field(None, ge=1)
    rounds: int | None = Field(None, ge=1, le=10_000)
    policy: str | None = Field(None, max_length=300)
    assurance: dict[str, Any] | None = None
    partition: PartitionSpec | None = None
    aggregation: Literal["flat", "hierarchical", "auto"] | None = None
    edges: int | None = Field(None, ge=1, le=1000)
    local_rounds: int | None = Field(None, ge=1, le=1000)


class ReadableCohortFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mlfo: str | None = None
    defaults: CohortDefaults = Field(default_factory=CohortDefaults)
    cohorts: list[CohortSpec] = Field(min_length=1)


class PrototypeCohortFile(BaseModel):
    """The prototype's sendintent.py settings: parallel lists, one entry per cohort."""

    model_config = ConfigDict(extra="forbid")

    mlfoadd: str | None = None
    cohortdistr: list[int] = Field(min_length=1)
    intentdist: list[str]
    sameserverdist: list[StrictBool] | None = None
    avgalgodist: list[str] | None = None
    fracfitdist: list[float] | None = None
    minfitdist: list[int] | None = None
    minavdist: list[int] | None = None
    numrounddist: list[int] | None = None


@dataclass
class Cohort:
    """A fully resolved cohort, ready to send to a campus MLFO."""

    name: str
    size: int
    intent: Intent
    intent_yaml: str
    sameserver: bool
    strategy: str
    fraction_fit: float
    min_fit: int
    min_available: int
    rounds: int
    # Where the cohort is written, for errors found later (the IP plan): field path and line.
    where: str = ""
    line: int | None = None
    seed: int | None = None  # None: the agents' fl.seed
    round_timeout: float | None = None  # None: the agents' fl.round_timeout
    policy: str | None = None  # None: the campus MLFO's assurance.policy
    assurance: dict[str, Any] | None = None  # thresholds over the campus MLFO's
    partition: PartitionSpec | None = None  # None: the agents' fl.partitioning
    aggregation: str = "flat"  # or hierarchical, auto (mlfo_toolkit.orchestrator.tiers, .placement)
    edges: int | None = None  # hierarchical: None, one per 10 clients
    local_rounds: int | None = None  # hierarchical: None, 1

    def form_fields(self, ipstart: int) -> dict[str, Any]:
        """The prototype's /receive form fields for this cohort (seed and roundtimeout, mlfo's, only when set)."""
        fields = {
            "ipstart": ipstart,
            "cohortsize": self.size,
            "sameserver": self.sameserver,
            "avgalgo": self.strategy,
            "fracfit": self.fraction_fit,
            "minfit": self.min_fit,
            "minav": self.min_available,
            "numround": self.rounds,
            "name": self.name,
            "seed": self.seed,
            "roundtimeout": self.round_timeout,
            "policy": self.policy,
            "assurance": json.dumps(self.assurance) if self.assurance else None,
            "partition": self.partition.model_dump_json(exclude_none=True) if self.partition else None,
            "aggregation": self.aggregation if self.aggregation != "flat" else None,
            "edges": self.edges if self.aggregation != "flat" else None,
            "localrounds": self.local_rounds if self.aggregation != "flat" else None,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass
class CohortFile:
    """A parsed cohort file: the cohorts in order and the MLFO address it names, if any."""

    cohorts: list[Cohort]
    mlfo: str | None
    source: str
    form: str  # "readable" or "prototype"


def _split_list(value: Any) -> Any:
    # The prototype wrote lists as comma-separated strings ("30,10,10").
    if isinstance(value, str) and "," in value:
        return [part.strip() for part in value.split(",")]
    if isinstance(value, (str, int, float, bool)):
        return [value]
    return value


def _load_intent(ref: str | dict[str, Any], base: Path, field_name: str, source: str, line: int | None,
                 any_path: bool) -> tuple[Intent, str]:
    if isinstance(ref, dict):
        text = yaml.safe_dump(ref, sort_keys=False)
        return parse_intent(text, f"{source}: {field_name}"), text
    if "\x00" in str(ref):
        raise ValidationError("an intent file's name has no NUL byte", field=field_name, line=line, source=source)
    path = (base / ref).resolve()
    # Intents live next to the cohort file or in the shipped catalog: a cohort file (perhaps sent by
    # someone else) must not make mlfo read /etc/shadow and echo what it found.
    allowed = (base.resolve(), resource_path("intents").resolve())
    if not any_path and not any(path.is_relative_to(root) for root in allowed):
        raise ValidationError(f"intent file '{ref}' is outside the cohort file's folder", field=field_name, line=line,
                              source=source, hint="move it next to the cohort file, or pass --any-intent-path")
    if not path.is_file():
        shipped = resource_path("intents") / str(ref)
        if not Path(ref).is_absolute() and shipped.is_file():
            path = shipped
        else:
            raise ValidationError(f"intent file '{ref}' not found (looked in {path.parent})", field=field_name, line=line, source=source)
    raw = read_input(path, "intent file")
    return parse_intent(raw, str(path)), raw.decode("utf-8")


def _thresholds(values: dict[str, Any], i: int, lines: dict[tuple[Any, ...], int], source: str) -> dict[str, Any] | None:
    """A cohort's assurance thresholds, checked as the config's assurance section is (policy is its own field)."""
    if not values:
        return None
    check_thresholds(values, "cohort", lines, source, ("cohorts", i, "assurance"))
    return values


def parse_cohort_file(text: str | bytes, source: str, base_dir: Path, config: Config, *, any_intent_path: bool = False) -> CohortFile:
    """Parse either cohort-file form; relative intent paths resolve against `base_dir`."""
    data, lines = load_yaml(text, source)
    if not isinstance(data, dict):
        raise ValidationError("a cohort file must be a mapping (with 'cohorts:' or 'cohortdistr:')", source=source, line=1)
    fl = config.fl
    cohorts: list[Cohort] = []
    if "cohortdistr" in data:
        data = {k: _split_list(v) if k != "mlfoadd" else v for k, v in data.items()}
        spec = validate(PrototypeCohortFile, data, lines, source)
        count = len(spec.cohortdistr)
        for key in PROTOTYPE_LISTS:
            values = getattr(spec, key)
            if values is not None and len(values) != count:
                raise ValidationError(
                    f"has {len(values)} entries but cohortdistr has {count}",
                    field=key,
                    line=lines.get((key,)),
                    source=source,
                )
        for i, size in enumerate(spec.cohortdistr):
            intent, intent_text = _load_intent(spec.intentdist[i], base_dir, f"intentdist[{i}]", source,
                                               lines.get(("intentdist", i)) or lines.get(("intentdist",)), any_intent_path)
            algo = spec.avgalgodist[i] if spec.avgalgodist else fl.strategy
            cohorts.append(
                Cohort(
                    name=f"cohort{i + 1}",
                    size=size,
                    intent=intent,
                    intent_yaml=intent_text,
                    sameserver=spec.sameserverdist[i] if spec.sameserverdist else False,
                    strategy=_strategy(algo, f"avgalgodist[{i}]", lines.get(("avgalgodist",)), source),
                    fraction_fit=spec.fracfitdist[i] if spec.fracfitdist else fl.fraction_fit,
                    min_fit=spec.minfitdist[i] if spec.minfitdist else fl.min_fit,
                    min_available=spec.minavdist[i] if spec.minavdist else fl.min_available,
                    rounds=spec.numrounddist[i] if spec.numrounddist else fl.rounds,
                    where=f"cohortdistr[{i}]",
                    line=lines.get(("cohortdistr",)),
                )
            )
        mlfo, form = spec.mlfoadd, "prototype"
    else:
        readable = validate(ReadableCohortFile, data, lines, source)
        d = readable.defaults
        for i, c in enumerate(readable.cohorts):
            intent, intent_text = _load_intent(c.intent, base_dir, f"cohorts[{i}].intent", source,
                                               lines.get(("cohorts", i, "intent")), any_intent_path)
            strategy = c.strategy or d.strategy or fl.strategy
            cohorts.append(
                Cohort(
                    name=c.name or f"cohort{i + 1}",
                    size=c.size,
                    intent=intent,
                    intent_yaml=intent_text,
                    sameserver=c.sameserver,
                    strategy=_strategy(strategy, f"cohorts[{i}].strategy", lines.get(("cohorts", i, "strategy")), source),
                    fraction_fit=c.fraction_fit or d.fraction_fit or fl.fraction_fit,
                    min_fit=c.min_fit or d.min_fit or fl.min_fit,
                    min_available=c.min_available or d.min_available or fl.min_available,
                    rounds=c.rounds or d.rounds or fl.rounds,
                    seed=c.seed,
                    round_timeout=c.round_timeout,
                    policy=c.policy or d.policy,
                    assurance=_thresholds({**(d.assurance or {}), **(c.assurance or {})}, i, lines, source),
                    partition=c.partition or d.partition,
                    aggregation=c.aggregation or d.aggregation or "flat",
                    edges=c.edges or d.edges,
                    local_rounds=c.local_rounds or d.local_rounds,
                    where=f"cohorts[{i}]",
                    line=lines.get(("cohorts", i)),
                )
            )
        mlfo, form = readable.mlfo, "readable"
    names = [c.name for c in cohorts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        again = next(c for i, c in enumerate(cohorts) if c.name in names[:i])
        raise ValidationError(f"cohort names must be unique: {', '.join(duplicates)}", field=f"{again.where}.name" if form_is_readable(data) else again.where,
                              line=again.line, source=source)
    if cohorts and cohorts[0].sameserver:
        field = "cohorts[0].sameserver" if form_is_readable(data) else "sameserverdist[0]"
        raise ValidationError("the first cohort has no previous cohort's server to share", field=field,
                              line=lines.get(("cohorts", 0, "sameserver")) or lines.get(("sameserverdist",)), source=source)
    return CohortFile(cohorts, mlfo, source, form)


def form_is_readable(data: Any) -> bool:
    return isinstance(data, dict) and "cohortdistr" not in data


def _strategy(name: str, field: str, line: int | None, source: str) -> str:
    try:
        return canonical_strategy(name, field)
    except ValidationError as err:
        raise ValidationError(f"unknown FL strategy '{name}'", field=field, line=line, source=source, hint=err.hint) from None


def shape_cohorts(cohort_file: CohortFile, cohorts: int | None, clients: int | None, rounds: int | None, *,
                  aggregation: str | None = None, edges: int | None = None, local_rounds: int | None = None) -> CohortFile:
    """Repeat the file's cohorts to `cohorts` entries and set every size, round count and aggregation asked for
    (`mlfo demo --cohorts --clients --rounds --aggregation`, an experiment's `shape`)."""
    template = cohort_file.cohorts
    count = cohorts or len(template)
    shaped = []
    for i in range(count):
        base = template[i % len(template)]
        size = clients or base.size
        shaped.append(dataclasses.replace(
            base,
            name=base.name if i < len(template) else f"{base.name}-{i + 1}",
            size=size,
            rounds=rounds or base.rounds,
            min_available=min(base.min_available, size) if not clients else size,
            min_fit=min(base.min_fit, size),
            sameserver=base.sameserver and i > 0,
            aggregation=aggregation or base.aggregation,
            edges=min(edges or base.edges or 1, size) if (edges or base.edges) else None,
            local_rounds=local_rounds or base.local_rounds,
        ))
    return dataclasses.replace(cohort_file, cohorts=shaped)


def load_cohort_file(path: Path, config: Config, *, any_intent_path: bool = False) -> CohortFile:
    text = read_input(path, "cohort file")
    return parse_cohort_file(text, str(path), path.parent, config, any_intent_path=any_intent_path)


@dataclass
class CohortPlan:
    """Which FL server and which client agents one cohort gets."""

    name: str
    intent_id: str
    ipstart: int
    clients: list[str]
    server: str
    shares_server_with: str | None
    strategy: str
    rounds: int
    fields: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] | None = None  # what the MLFO reads from the intent's first target (intents.understood)
    policy: str | None = None  # the closed loop's policy asked for (None: the campus MLFO's assurance.policy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def client_range(config: Config, ipstart: int, size: int) -> list[str]:
    """Client agents ipstart .. ipstart+size-1 (ipstart is the prototype's last octet)."""
    pool = config.client_agents()
    first = ipstart - config.ip_plan.first_client_octet
    if first < 0 or first + size > len(pool):
        raise ValidationError(
            f"clients {ipstart}..{ipstart + size - 1} are outside the IP plan "
            f"({config.ip_plan.first_client_octet}..{config.ip_plan.first_client_octet + len(pool) - 1})",
            field="cohortsize",
            hint="make the cohorts smaller or add clients to ip_plan",
        )
    return pool[first : first + size]


def free_server(pool: list[str], busy: set[str]) -> str | None:
    """The server a cloud MLFO gives the next cohort: the first of the pool not busy (None: all busy).
    The one allocation rule, used by the cloud MLFO and by `intent plan`."""
    return next((server for server in pool if server not in busy), None)


def plan_cohorts(cohort_file: CohortFile, config: Config) -> list[CohortPlan]:
    """Assign client ranges in order and FL servers as a fresh cloud MLFO would; contacts nothing."""
    servers = config.server_agents()
    plans: list[CohortPlan] = []
    ipstart = config.ip_plan.first_client_octet
    busy: set[str] = set()
    catalog = Catalog.load(config.mlfo.catalog)
    for cohort in cohort_file.cohorts:
        # What the campus MLFO would refuse, plan refuses too, naming the cohort.
        try:
            pipeline = catalog.resolve(cohort.intent)
        except ValidationError as err:
            raise ValidationError(f"cohort '{cohort.name}': {err.message}", field=cohort.where or None, line=cohort.line,
                                  source=cohort_file.source, hint=err.hint) from None
        if not pipeline.federated:
            raise ValidationError(f"cohort '{cohort.name}': its intent does not ask for federated learning",
                                  field=cohort.where or None, line=cohort.line, source=cohort_file.source,
                                  hint="set 'privacylevel: high' in the target's constraints")
        try:
            clients = client_range(config, ipstart, cohort.size)
        except ValidationError as err:
            raise ValidationError(err.message.split(": ", 1)[-1], field=f"{cohort.where}.size" if cohort.where.startswith("cohorts") else cohort.where,
                                  line=cohort.line, source=cohort_file.source, hint=err.hint) from None
        target = understood(cohort.intent.targets[0])
        cap = target["max_clients"]
        for what, wanted in (("min_available", cohort.min_available), ("min_fit", cohort.min_fit)):
            if cap is not None and wanted > cap:
                raise ValidationError(f"cohort '{cohort.name}': its intent allows {cap} clients but {what} is {wanted}: "
                                      "the run could never start", field=f"{cohort.where}.{what}", line=cohort.line,
                                      source=cohort_file.source, hint=f"set {what} to {cap} or less, or raise max_clients")
        if cohort.sameserver and plans:
            server, shares = plans[-1].server, plans[-1].name
        else:
            picked = free_server(servers, busy)
            if picked is None:
                raise ValidationError(
                    f"cohort '{cohort.name}' needs an FL server but the pool of {len(servers)} is used up",
                    field="ip_plan.servers",
                    hint="add servers to ip_plan.servers or set sameserver on a cohort",
                )
            server, shares = picked, None
            busy.add(server)
        plans.append(
            CohortPlan(
                name=cohort.name,
                intent_id=cohort.intent.intentID,
                ipstart=ipstart,
                clients=clients,
                server=server,
                shares_server_with=shares,
                strategy=cohort.strategy,
                rounds=cohort.rounds,
                fields=cohort.form_fields(ipstart),
                target=target if target["assured"] else None,
                policy=cohort.policy,
            )
        )
        ipstart += cohort.size
    return plans
