"""What the campus MLFO takes in: the /receive form (typed), whether the machine has room for a cohort
(memory), and the fair, bounded queue of deployments waiting for a free FL server."""

from __future__ import annotations

import threading
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import CapacityError
from mlfo_toolkit.orchestrator.deployments import DeploymentTable
from mlfo_toolkit.util.names import NAME_MAX, NAME_PATTERN, SEED_MAX
from mlfo_toolkit.util.yamlfiles import Float, Int


class ReceiveParams(BaseModel):
    """The prototype's /receive form fields, typed; `name` is mlfo's addition."""

    model_config = ConfigDict(extra="forbid")

    ipstart: Int | None = Field(None, ge=0, le=255)
    cohortsize: Int = Field(1, ge=1, le=10_000)
    sameserver: StrictBool = False
    avgalgo: str | None = Field(None, max_length=64)
    fracfit: Float | None = Field(None, gt=0, le=1)
    minfit: Int | None = Field(None, ge=1, le=10_000)
    minav: Int | None = Field(None, ge=1, le=10_000)
    numround: Int | None = Field(None, ge=1, le=10_000)
    name: str | None = Field(None, max_length=NAME_MAX, pattern=NAME_PATTERN)
    seed: Int | None = Field(None, ge=0, le=SEED_MAX)
    roundtimeout: Float | None = Field(None, gt=0, le=86_400)
    policy: str | None = Field(None, max_length=300, description="the closed loop's policy (default: assurance.policy)")
    assurance: str | None = Field(None, max_length=4096, description="JSON object of assurance thresholds for this deployment")
    partition: str | None = Field(None, max_length=1024, description="JSON object: how the clients split the data "
                                  "(kind, alpha, classes, shards, seed; default: the agents' fl.partitioning)")
    aggregation: Literal["flat", "hierarchical", "auto"] = Field(
        "flat", description="hierarchical: an edge aggregator per group of clients; auto: where the MLFO measures that it pays")
    edges: Int | None = Field(None, ge=1, le=1000, description="hierarchical: edges (default: one per 10 clients)")
    localrounds: Int | None = Field(None, ge=1, le=1000, description="hierarchical: local rounds per global round (default 1)")

    @field_validator("minfit", "minav")
    @classmethod
    def _fits_the_cohort(cls, value: int | None, info: ValidationInfo) -> int | None:
        # A shared server also counts the previous cohort's clients, so only a cohort of its own is bounded.
        size, shared = info.data.get("cohortsize"), info.data.get("sameserver")
        if value is not None and size is not None and not shared and value > size:
            raise ValueError(f"{value} exceeds cohortsize={size}: the run could never start")
        return value

    @field_validator("edges")
    @classmethod
    def _edges_fit(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("cohortsize")
        if value is not None and size is not None and value > size:
            raise ValueError(f"{value} edges for {size} clients: every edge needs a client")
        return value

    @field_validator("sameserver", mode="before")
    @classmethod
    def _form_bool(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        return value


class Admission:
    """Refuses a cohort whose estimated memory exceeds what is left (per-client costs measured for this design)."""

    def __init__(self, config: Config, table: DeploymentTable) -> None:
        self.config = config
        self.table = table
        self.lock = threading.Lock()

    def estimate(self, cohortsize: int, sameserver: bool) -> int:
        cfg = self.config.mlfo
        return cohortsize * cfg.client_memory_mb + (0 if sameserver else cfg.server_memory_mb)

    def check(self, name: str, need_mb: int, cohortsize: int, sameserver: bool) -> None:
        cfg = self.config.mlfo
        if cfg.client_memory_mb == 0:
            return
        starting = [r for r in self.table.all() if r.state in ("planned", "deploying")]
        promised = sum(int(r.memory_mb or 0) for r in starting)
        available = psutil.virtual_memory().available // 2**20
        if need_mb + promised + cfg.memory_reserve_mb <= available:
            return
        server = "" if sameserver else f" + FL server {cfg.server_memory_mb} MB"
        raise CapacityError(
            f"cohort '{name}' needs about {need_mb} MB ({cohortsize} clients x {cfg.client_memory_mb} MB{server}); "
            f"MemAvailable is {available} MB, of which {promised} MB is promised to {len(starting)} deployment(s) "
            f"still starting and {cfg.memory_reserve_mb} MB is kept free",
            hint="send a smaller cohort, wait for running cohorts to finish, or change mlfo.client_memory_mb / "
            "mlfo.memory_reserve_mb if your measurements differ",
        )


class ServerQueue:
    """Deployments waiting for a free FL server, oldest first: only the oldest asks the cloud MLFO again
    (fair), when a server is given back or every second; bounded in length (`mlfo.queue_length`)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.waiting: list[str] = []
        self.changed = threading.Condition()

    def full(self) -> bool:
        with self.changed:
            return len(self.waiting) >= self.config.mlfo.queue_length

    def join(self, deployment_id: str) -> None:
        with self.changed:
            if len(self.waiting) >= self.config.mlfo.queue_length:
                raise CapacityError(f"{len(self.waiting)} deployments already wait for a free FL server (mlfo.queue_length)",
                                    hint="send it again when a cohort has finished, or raise mlfo.queue_length")
            self.waiting.append(deployment_id)
            self.changed.notify_all()

    def leave(self, deployment_id: str) -> None:
        with self.changed:
            if deployment_id in self.waiting:
                self.waiting.remove(deployment_id)
            self.changed.notify_all()

    def wait(self, timeout: float) -> None:
        """Until the queue changes or a server is given back (or `timeout` passed)."""
        with self.changed:
            self.changed.wait(timeout)

    def server_freed(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def position(self, deployment_id: str) -> int | None:
        with self.changed:
            return self.waiting.index(deployment_id) + 1 if deployment_id in self.waiting else None
