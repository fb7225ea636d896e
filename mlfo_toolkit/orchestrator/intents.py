"""Intents (ITU-T Y.3172 style YAML), the operand catalog, and the MLFO-to-MLFO (Mo-Mo) intent."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator, model_validator

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.fl.data import LOADERS
from mlfo_toolkit.fl.models import MODEL_KINDS
from mlfo_toolkit.fl.strategies import canonical_strategy
from mlfo_toolkit.fl.userapps import APP_PREFIX, check_model_form, read_app
from mlfo_toolkit.util.files import read_input
from mlfo_toolkit.util.names import NAME_MAX, OPTIONAL_NAME, SEED_MAX
from mlfo_toolkit.util.resources import resource_path
from mlfo_toolkit.util.yamlfiles import Float, Int, load_yaml, validate

# maximise / minimise as long as the run goes (with `value`: the least / most acceptable); achieve: reach `value`.
USER_OPERATIONS = ("maximise", "minimise", "maximize", "minimize", "achieve")
MOMO_OPERATION = "aggregate.global"
MOMO_OPERAND = "model.federated"

Scalar = str | int | float | bool
# Bounds on what an intent may hold: generous for any real intent, and small enough that a stored
# deployment record stays small (50,000 constraints once grew the campus by 100 MB).
MAX_TARGETS = 16
MAX_CONSTRAINTS = 64
MAX_TEXT = 1024


# Constraints the MLFO reads and assures, beyond the prototype's privacylevel (any other is kept, unread).
# An FL client is one accelerator: "using maximum 10 GPUs" is max_gpus: 10, the same as max_clients: 10.
CLIENT_CAPS = ("max_clients", "max_gpus", "max_accelerators")
KNOWN_CONSTRAINTS: dict[str, str] = {
    "privacylevel": "high means federated learning",
    **{cap: "the most FL clients (accelerators) the deployment may run at once" for cap in CLIENT_CAPS},
    "max_traffic_mb": "the FL traffic budget of the whole run, in MB (the FL server's bytes in and out)",
    "max_round_seconds": "the longest a round may take, in seconds",
}


class Deadline(BaseModel):
    """By when the target's value must be reached: a number of rounds, or seconds from the first round."""

    model_config = ConfigDict(extra="forbid")

    rounds: Int | None = Field(None, ge=1, le=10_000)
    seconds: Float | None = Field(None, gt=0, le=7 * 86_400)

    @model_validator(mode="after")
    def _one(self) -> Deadline:
        if (self.rounds is None) == (self.seconds is None):
            raise ValueError("give either rounds or seconds")
        return self


class Target(BaseModel):
    """One target of an intent: what to do with which operand, and (mlfo's additions) the value wanted,
    by when, within which constraints."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(min_length=1, max_length=MAX_TEXT)
    operation: str = Field(min_length=1, max_length=MAX_TEXT)
    operand: str = Field(min_length=1, max_length=MAX_TEXT)
    value: Float | None = Field(None, description="achieve: the value to reach; maximise: the least acceptable; minimise: the most")
    deadline: Deadline | None = None
    constraints: dict[str, Scalar] = Field(default_factory=dict, max_length=MAX_CONSTRAINTS)

    @field_validator("constraints")
    @classmethod
    def _plain_values(cls, constraints: dict[str, Scalar]) -> dict[str, Scalar]:
        for key, value in constraints.items():
            if not key or len(key) > 64:
                raise ValueError(f"a constraint's name has 1 to 64 characters ('{key[:64]}')")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key}: {value} is not a finite number")
            if isinstance(value, str) and len(value) > MAX_TEXT:
                raise ValueError(f"{key}: a value has at most {MAX_TEXT} characters")
        return constraints


class Intent(BaseModel):
    """An intent as the prototype wrote it: intentID and a list of targets."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    intentID: str = Field(min_length=1, max_length=MAX_TEXT)  # noqa: N815 - the prototype's field name
    targets: list[Target] = Field(min_length=1, max_length=MAX_TARGETS)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False)


def parse_intent(text: str | bytes, source: str = "intent") -> Intent:
    """Parse and validate intent YAML; errors name the field and line."""
    data, lines = load_yaml(text, source)
    if not isinstance(data, dict):
        raise ValidationError("an intent must be a mapping with intentID and targets", source=source, line=1)
    intent = validate(Intent, data, lines, source)
    for index, target in enumerate(intent.targets):
        if target.operation not in (*USER_OPERATIONS, MOMO_OPERATION):
            raise ValidationError(
                f"unknown operation '{target.operation}'",
                field=f"targets[{index}].operation",
                line=lines.get(("targets", index, "operation")),
                source=source,
                hint=f"use one of {', '.join((*USER_OPERATIONS, MOMO_OPERATION))}",
            )
        if target.operation != MOMO_OPERATION:
            check_target(target, index, lines, source)
    return intent


def _number(target: Target, key: str, index: int, lines: dict[tuple[Any, ...], int], source: str, *, whole: bool) -> float | None:
    value = target.constraints.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (whole and value != int(value)):
        raise ValidationError(f"must be a {'whole ' if whole else ''}number above 0: {KNOWN_CONSTRAINTS[key]}",
                              field=f"targets[{index}].constraints.{key}", line=lines.get(("targets", index, "constraints", key)),
                              source=source)
    return float(value)


def check_target(target: Target, index: int, lines: dict[tuple[Any, ...], int], source: str) -> None:
    """Refuse a target that contradicts itself, naming the field and line."""
    where = f"targets[{index}]"

    def fail(field: str, message: str, hint: str | None = None) -> None:
        raise ValidationError(message, field=f"{where}.{field}", line=lines.get(("targets", index, *field.split("."))) or
                              lines.get(("targets", index)), source=source, hint=hint)

    if target.operation == "achieve" and target.value is None:
        fail("value", "achieve needs the value to reach", hint="e.g. value: 0.93")
    metric = target_metric(target.operand)
    if target.value is not None and metric == "accuracy" and not 0 < target.value <= 1:
        fail("value", f"an accuracy is between 0 and 1, not {target.value}")
    if target.value is not None and metric == "loss" and target.value <= 0:
        fail("value", f"a loss is above 0, not {target.value}")
    caps = [cap for cap in CLIENT_CAPS if cap in target.constraints]
    if len(caps) > 1:
        fail(f"constraints.{caps[1]}", f"{caps[0]} and {caps[1]} say the same thing: give one")
    for key in (*CLIENT_CAPS, "max_traffic_mb", "max_round_seconds"):
        _number(target, key, index, lines, source, whole=key in CLIENT_CAPS)
    bound = _number(target, "max_round_seconds", index, lines, source, whole=False)
    if target.deadline is not None and target.deadline.seconds is not None and bound is not None and target.deadline.seconds < bound:
        fail("deadline.seconds", f"a deadline of {target.deadline.seconds:g} s is shorter than one round "
                                 f"(max_round_seconds: {bound:g})")


def target_metric(operand: str) -> str:
    """What an operand measures: `...accuracy` is the held-out accuracy, `...loss` its loss."""
    return "loss" if operand.rsplit(".", 1)[-1] == "loss" else "accuracy"


def client_cap(target: Target) -> int | None:
    """The most clients a target lets a deployment run (max_clients, max_gpus or max_accelerators)."""
    for cap in CLIENT_CAPS:
        value = target.constraints.get(cap)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None


def understood(target: Target) -> dict[str, Any]:
    """What the MLFO reads from a target: shown by `intent validate` and `intent plan`."""
    metric = target_metric(target.operand)
    wanted = None
    if target.value is not None:
        relation = "<=" if (target.operation.startswith("minimi") or metric == "loss") else ">="
        wanted = f"{metric} {relation} {target.value:g}"
    deadline = None
    if target.deadline is not None:
        deadline = f"{target.deadline.rounds} rounds" if target.deadline.rounds else f"{target.deadline.seconds:g} s"
    return {
        "operation": target.operation, "metric": metric, "wanted": wanted, "deadline": deadline,
        "max_clients": client_cap(target),
        "max_traffic_mb": target.constraints.get("max_traffic_mb"),
        "max_round_seconds": target.constraints.get("max_round_seconds"),
        "assured": bool(wanted or deadline or client_cap(target) or target.constraints.get("max_traffic_mb")
                        or target.constraints.get("max_round_seconds")),
        "unread_constraints": sorted(k for k in target.constraints if k not in KNOWN_CONSTRAINTS),
    }


def load_intent_file(path: Path) -> Intent:
    return parse_intent(read_input(path, "intent file"), str(path))


@dataclass(frozen=True)
class Pipeline:
    """What an operand resolves to: source dataset, model, sink, and whether FL is needed."""

    operand: str
    source: str
    model: str
    sink: str
    federated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    model: str
    sink: str = "none"
    description: str = ""


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    federated_when: dict[str, list[Scalar]] = Field(default_factory=lambda: {"privacylevel": list[Scalar](["high"])})
    operands: dict[str, CatalogEntry] = Field(min_length=1)


class Catalog:
    """The operand -> pipeline mapping, read from a YAML file (intents/catalog.yaml by default)."""

    def __init__(self, spec: CatalogFile, source: str) -> None:
        self.spec = spec
        self.source = source

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        path = path or resource_path("intents/catalog.yaml")
        data, lines = load_yaml(read_input(path, "the operand catalog"), str(path))
        spec = validate(CatalogFile, data, lines, str(path))
        for operand, entry in spec.operands.items():
            if entry.source not in LOADERS:
                raise ValidationError(f"unknown dataset '{entry.source}'", field=f"operands.{operand}.source",
                                      line=lines.get(("operands", operand, "source")), source=str(path),
                                      hint=f"known: {', '.join(LOADERS)}")
            try:
                check_model_form(entry.model, MODEL_KINDS, f"operands.{operand}.model")
            except ValidationError as err:
                raise ValidationError(err.reason, field=err.field, line=lines.get(("operands", operand, "model")),
                                      source=str(path), hint=err.hint) from None
        return cls(spec, str(path))

    def with_model(self, model: str, path: Path) -> Path:
        """Write this catalog to `path` with every operand's model set to `model` (`mlfo demo --app`)."""
        spec = self.spec.model_copy(deep=True)
        for entry in spec.operands.values():
            entry.model = model
        path.write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
        return path

    @property
    def operands(self) -> list[str]:
        return list(self.spec.operands)

    def resolve(self, intent: Intent, target_index: int = 0) -> Pipeline:
        """The pipeline for one target; ValidationError naming the operand if unknown."""
        target = intent.targets[target_index]
        entry = self.spec.operands.get(target.operand)
        if entry is None:
            raise ValidationError(
                f"unknown operand '{target.operand}'",
                field=f"targets[{target_index}].operand",
                hint=f"known operands: {', '.join(self.operands)} (add more in {self.source})",
            )
        federated = any(
            str(target.constraints.get(key, "")).lower() in {str(v).lower() for v in values}
            for key, values in self.spec.federated_when.items()
        )
        return Pipeline(target.operand, entry.source, entry.model, entry.sink, federated)


class MomoConstraints(BaseModel):
    """Constraints of the Mo-Mo aggregation intent (the prototype's names)."""

    model_config = ConfigDict(extra="forbid")

    sourcekind: str
    modelkind: str
    avgalgo: str = "FedAvg"
    fracfit: float = Field(0.5, gt=0, le=1)
    minfit: int = Field(1, ge=1, le=10_000)
    minav: int = Field(1, ge=1, le=10_000)
    numround: int = Field(20, ge=1, le=10_000)
    sameserv: StrictBool = False
    deployment: str = Field("", max_length=NAME_MAX, pattern=OPTIONAL_NAME)
    cohort: str = Field("", max_length=NAME_MAX, pattern=OPTIONAL_NAME)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    roundtimeout: float | None = Field(None, gt=0, le=86_400)

    @field_validator("sourcekind", "modelkind")
    @classmethod
    def _known_kind(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "modelkind":
            try:
                check_model_form(value, MODEL_KINDS, "modelkind")
            except ValidationError as err:
                raise ValueError(f"{err.reason} ({err.hint})") from None
        elif value not in LOADERS:
            raise ValueError(f"unknown dataset '{value[:64]}' (known: {', '.join(LOADERS)})")
        return value


def build_momo_intent(intent_id: str, pipeline: Pipeline, constraints: MomoConstraints) -> Intent:
    """The aggregation intent a campus MLFO sends to the cloud MLFO."""
    return Intent(
        intentID=f"{intent_id}.momo",
        targets=[
            Target(
                id="cloud.fl",
                operation=MOMO_OPERATION,
                operand=MOMO_OPERAND,
                constraints=constraints.model_dump(exclude_none=True),
            )
        ],
    )


def parse_momo_intent(data: Any, source: str = "Mo-Mo intent") -> tuple[Intent, MomoConstraints]:
    """Validate a Mo-Mo intent (mapping or YAML) and its typed constraints."""
    if isinstance(data, (str, bytes)):
        intent = parse_intent(data, source)
    else:
        intent = validate(Intent, data, {}, source)
    target = intent.targets[0]
    if target.operation != MOMO_OPERATION or target.operand != MOMO_OPERAND:
        raise ValidationError(
            f"a Mo-Mo intent must have operation {MOMO_OPERATION} and operand {MOMO_OPERAND}",
            field="targets[0].operation",
            source=source,
        )
    constraints = validate(MomoConstraints, target.constraints, {}, source, prefix=("targets", 0, "constraints"))
    constraints.avgalgo = canonical_strategy(constraints.avgalgo, "targets[0].constraints.avgalgo")
    return intent, constraints


def config_with_app(config: Config, app_dir: Path, work_dir: Path) -> Config:
    """`config` with the Flower app in `app_dir` registered (named after its folder) and run by every operand
    of its catalog (a copy written into `work_dir`): `mlfo demo --app`, an experiment's `app:`."""
    source = app_dir.resolve()
    read_app(source)  # not a Flower app: say so now, not from inside an agent
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", source.name).lstrip("-_.")[:64] or "app"
    catalog = Catalog.load(config.mlfo.catalog).with_model(f"{APP_PREFIX}{name}", work_dir / "catalog.yaml")
    apps = {**{k: v.model_dump() for k, v in config.fl.apps.items()}, name: {"path": str(source)}}
    return config.with_overrides({"fl.apps": apps, "mlfo.catalog": str(catalog)})
