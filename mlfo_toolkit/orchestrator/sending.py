"""Send a cohort file to a campus MLFO as the prototype's sendintent.py did, and follow it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import DeploymentFailed, UnreachableError
from mlfo_toolkit.orchestrator.clients import MlfoClient
from mlfo_toolkit.orchestrator.cohorts import CohortFile
from mlfo_toolkit.orchestrator.mlfo import TERMINAL_STATES

ProgressCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class SentCohort:
    """One cohort as the MLFO accepted it, and its deployment record once followed."""

    name: str
    ipstart: int
    deployment_id: str
    record: dict[str, Any] = field(default_factory=dict)


def send_cohorts(cohort_file: CohortFile, config: Config, mlfo_address: str) -> list[SentCohort]:
    """POST every cohort to /receive (multipart: file + the prototype's fields); client ranges run on."""
    client = MlfoClient(mlfo_address, token=config.api.token, timeout=config.api.timeout_seconds)
    sent = []
    ipstart = config.ip_plan.first_client_octet
    try:
        for cohort in cohort_file.cohorts:
            answer = client.send_intent(cohort.intent_yaml.encode(), cohort.form_fields(ipstart))
            sent.append(SentCohort(cohort.name, ipstart, answer["id"]))
            ipstart += cohort.size
    finally:
        client.close()
    return sent


def wait_for_deployments(
    sent: list[SentCohort],
    config: Config,
    mlfo_address: str,
    *,
    timeout: float,
    progress: ProgressCallback | None = None,
    poll_seconds: float = 1.0,
) -> list[SentCohort]:
    """Poll each deployment until it is done or failed; report every new round through `progress`."""
    client = MlfoClient(mlfo_address, token=config.api.token, timeout=config.api.timeout_seconds)
    seen: dict[str, int] = {}
    states: dict[str, str] = {}
    lost: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while True:
            pending = 0
            for cohort in sent:
                record = client.deployment(cohort.deployment_id)
                cohort.record = record
                for entry in record.get("rounds", [])[seen.get(cohort.name, 0) :]:
                    if progress:
                        progress("round", {"cohort": cohort.name, "rounds_total": record["params"]["rounds"], **entry})
                seen[cohort.name] = len(record.get("rounds", []))
                for entry in record.get("clients", []):
                    key = f"{cohort.name}/{entry.get('part')}"
                    if progress and entry.get("state") == "lost" and key not in lost:
                        progress("lost", {"cohort": cohort.name, **entry})
                    if entry.get("state") == "lost":
                        lost.add(key)
                    else:
                        lost.discard(key)
                if progress and states.get(cohort.name) != record["state"]:
                    states[cohort.name] = record["state"]
                    progress("state", {"cohort": cohort.name, **record})
                if record["state"] not in TERMINAL_STATES:
                    pending += 1
            if not pending:
                break
            if time.monotonic() > deadline:
                raise UnreachableError(
                    f"{pending} deployment(s) still not finished after {timeout:.0f} s",
                    hint="raise --timeout, or check the deployments with GET /deployments",
                )
            time.sleep(poll_seconds)
    finally:
        client.close()
    return sent


def raise_for_failures(sent: list[SentCohort]) -> None:
    """DeploymentFailed naming every cohort whose deployment failed."""
    failed = [c for c in sent if c.record.get("state") == "failed"]
    if failed:
        raise DeploymentFailed(
            "; ".join(f"cohort {c.name} failed: {c.record.get('reason')}" for c in failed),
            hint="GET /deployments/ID on the MLFO shows per-client status",
        )
