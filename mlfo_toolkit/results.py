"""What the public API's functions return: frozen dataclasses with typed fields and `to_dict()`, the JSON
form that `--json` prints. Every function of `mlfo_toolkit.api` returns one of these."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import DeploymentFailed
from mlfo_toolkit.orchestrator.cohorts import CohortPlan
from mlfo_toolkit.orchestrator.records import Deployment
from mlfo_toolkit.orchestrator.sending import SentCohort


@dataclass(frozen=True)
class Result:
    """Base of every result: `data` is the JSON form, `to_dict()` returns it."""

    data: dict[str, Any] = field(repr=False, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return self.data


# --- intents and deployments ----------------------------------------------------------------------
@dataclass(frozen=True)
class CohortResult(Result):
    """One cohort's FL run as the MLFO followed it."""

    name: str
    deployment_id: str
    state: str | None
    reason: str | None
    strategy: str | None
    accuracy: list[float | None]
    loss: list[float | None]
    orchestration_seconds: float | None

    @property
    def final_accuracy(self) -> float | None:
        return self.accuracy[-1] if self.accuracy else None

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> CohortResult:
        return cls(name=summary["name"], deployment_id=summary["deployment"], state=summary["state"], reason=summary.get("reason"),
                   strategy=summary.get("strategy"), accuracy=list(summary["accuracy"]), loss=list(summary["loss"]),
                   orchestration_seconds=summary.get("orchestration_seconds"), data=summary)


@dataclass(frozen=True)
class RunResult(Result):
    """A followed set of deployments (a demo or `send --wait`) and the run folder written for it."""

    run_dir: Path
    cohorts: list[CohortResult]
    wall_seconds: float | None

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> RunResult:
        return cls(Path(summary["run_dir"]), [CohortResult.from_summary(c) for c in summary["cohorts"]],
                   summary.get("wall_seconds"), data=summary)

    @property
    def failed(self) -> list[CohortResult]:
        return [c for c in self.cohorts if c.state == "failed"]

    def check(self) -> RunResult:
        """Raise DeploymentFailed (exit code 7) naming every failed cohort; else return self."""
        if self.failed:
            raise DeploymentFailed("; ".join(f"cohort {c.name} failed: {c.reason}" for c in self.failed),
                                   hint="GET /deployments/ID on the MLFO shows per-client status")
        return self


@dataclass(frozen=True)
class SentCohorts(Result):
    """Cohorts the campus MLFO accepted: pass to `wait()` to follow them."""

    mlfo: str
    cohort_file: Path
    sent: list[SentCohort]
    trusted: bool = True  # whether api.token went along (see send_cohorts)

    @classmethod
    def of(cls, mlfo: str, cohort_file: Path, sent: list[SentCohort], trusted: bool = True) -> SentCohorts:
        data = {"mlfo": mlfo, "deployments": [{"name": c.name, "id": c.deployment_id, "ipstart": c.ipstart} for c in sent]}
        return cls(mlfo, cohort_file, sent, trusted, data=data)


@dataclass(frozen=True)
class IntentCheck(Result):
    """A valid intent and the ML pipeline each of its targets maps to."""

    intent_id: str
    intent: dict[str, Any]
    pipelines: list[dict[str, Any]]
    understood: list[dict[str, Any]]  # what the MLFO reads from each target: metric, value, deadline, bounds


@dataclass(frozen=True)
class PlanResult(Result):
    """Which FL server and client agents each cohort of a file gets (`CohortPlan`s), as a fresh cloud MLFO would give them."""

    cohorts: list[CohortPlan]

    @classmethod
    def of(cls, cohorts: list[CohortPlan]) -> PlanResult:
        return cls(cohorts, data={"cohorts": [c.to_dict() for c in cohorts]})


@dataclass(frozen=True)
class ClientRestarted(Result):
    """A lost client started again: its new SuperNode and how long the start took."""

    deployment: str
    part: int
    agent: str
    client: str | None
    pid: int | None
    seconds: float


@dataclass(frozen=True)
class DeploymentStatus(Result):
    """A deployment on the campus MLFO: its state, the target it is assured against and the closed loop's decisions."""

    deployment: str
    name: str
    state: str
    reason: str | None
    policy: str | None
    target: dict[str, Any] | None
    assurance: dict[str, Any] | None  # {state: on_track | at_risk | met | missed, reason, since}
    decisions: list[dict[str, Any]]
    accuracy: list[float | None]
    record: Deployment

    @classmethod
    def of(cls, record: Deployment, answer: dict[str, Any]) -> DeploymentStatus:
        rounds = sorted(record.rounds, key=lambda r: r.round)
        return cls(record.id, record.name, record.state, record.reason, record.policy, record.target, record.assurance,
                   [d.model_dump(exclude_none=True) for d in record.decisions], [r.accuracy for r in rounds], record, data=answer)


@dataclass(frozen=True)
class DeploymentStopped(Result):
    deployment: str
    state: str


# --- the emulated network ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkResult(Result):
    """What a network command did or found."""

    topology: str
    phase: str


@dataclass(frozen=True)
class ImageResult(Result):
    """The Docker image of Containernet hosts: its tag, id, and whether it was built now."""

    image: str
    id: str
    built: bool


@dataclass(frozen=True)
class ExecResult(Result):
    node: str
    exit_code: int
    stdout: str | None = None
    stderr: str | None = None


@dataclass(frozen=True)
class PingResult(Result):
    pairs: int
    loss_percent: float
    failed: list[list[str]]
    seconds: float


@dataclass(frozen=True)
class InitResult(Result):
    """`mlfo init`: the CPU limits set, which FL servers the cloud MLFO reaches, the background traffic."""

    cpu_limits: dict[str, float | None]
    reachable: dict[str, bool]
    background: dict[str, Any]


@dataclass(frozen=True)
class MeterResult(Result):
    """Meters set, listed, cleared or measured."""

    cohorts: list[int]


@dataclass(frozen=True)
class TraceResult(Result):
    """A link trace started (its replayer's PID and log), or the replayers stopped."""

    link: str | None
    stopped: list[str] = field(default_factory=list)


# --- monitoring and reports ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MonitorResult(Result):
    """Prometheus (and Grafana) started or stopped."""

    prometheus: str | None
    processes: list[str]


@dataclass(frozen=True)
class MonitorConfig(Result):
    """prometheus.yml for a topology, the running network or loopback."""

    config: str
    targets: str
    written: str | None


@dataclass(frozen=True)
class ReportResult(Result):
    """The plots, manifest and page written for a run folder (or an experiment's)."""

    plots: list[Path]
    manifest: Path
    html: Path | None


@dataclass(frozen=True)
class ApiSchema(Result):
    """The OpenAPI 3 document of one service's HTTP API."""

    service: str


# --- experiments ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExperimentPlan(Result):
    """An experiment's runs, events and expected duration (`mlfo run --dry-run`)."""

    experiment: str
    backend: str
    runs: list[dict[str, Any]]
    events: list[dict[str, Any]]
    expected_seconds: int


@dataclass(frozen=True)
class ExperimentResult(Result):
    """An experiment's runs (finished now or earlier) and where they are."""

    name: str
    folder: Path
    runs: list[dict[str, Any]]


# --- datasets ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataResult(Result):
    """Datasets fetched, imported or listed (`mlfo data`)."""

    datasets: list[str]


def fields_of(data: dict[str, Any], kind: type[Result]) -> dict[str, Any]:
    """The keys of `data` that are fields of `kind` (to build a result from a JSON form)."""
    names = {f for f in kind.__dataclass_fields__ if f != "data"}
    return {k: v for k, v in data.items() if k in names}

