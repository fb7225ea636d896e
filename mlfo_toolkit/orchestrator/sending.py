"""The client side of a campus MLFO: post a cohort file as the prototype's sendintent.py did, and follow
the deployments it made until their FL runs end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import DeploymentFailed, UnreachableError
from mlfo_toolkit.orchestrator.api_clients import campus_client
from mlfo_toolkit.orchestrator.cohorts import CohortFile
from mlfo_toolkit.orchestrator.records import Deployment
from mlfo_toolkit.util.progress import Progress, quiet

log = logging.getLogger(__name__)


@dataclass
class SentCohort:
    """One cohort as the MLFO accepted it, and its deployment record once followed."""

    name: str
    ipstart: int
    deployment_id: str
    record: Deployment | None = None


def post_cohorts(cohort_file: CohortFile, config: Config, campus: str) -> list[SentCohort]:
    """POST every cohort to /receive (multipart: file + the prototype's fields); client ranges run on."""
    sent = []
    ipstart = config.ip_plan.first_client_octet
    with campus_client(config, campus) as client:
        for cohort in cohort_file.cohorts:
            answer = client.send_intent(cohort.intent_yaml.encode(), cohort.form_fields(ipstart))
            sent.append(SentCohort(cohort.name, ipstart, answer["id"]))
            ipstart += cohort.size
    return sent


def follow_deployments(sent: list[SentCohort], config: Config, campus: str, *, timeout: float,
                       progress: Progress = quiet, poll_seconds: float = 1.0) -> list[SentCohort]:
    """Poll each deployment until it is done or failed; report every new round, lost client, decision of the
    closed loop and state change."""
    seen: dict[str, int] = {}
    decided: dict[str, int] = {}
    states: dict[str, str] = {}
    lost: set[str] = set()
    deadline = time.monotonic() + timeout
    with campus_client(config, campus) as client:
        while True:
            pending = 0
            for cohort in sent:
                record = Deployment.model_validate(client.deployment(cohort.deployment_id))
                cohort.record = record
                rounds_total = (record.control or {}).get("rounds") or record.params.rounds
                for entry in record.rounds[seen.get(cohort.name, 0):]:
                    progress("round", {"cohort": cohort.name, "rounds_total": rounds_total, **entry.to_json()})
                seen[cohort.name] = len(record.rounds)
                for decision in record.decisions[decided.get(cohort.name, 0):]:
                    progress("decision", {"cohort": cohort.name, **decision.to_json()})
                decided[cohort.name] = len(record.decisions)
                for client_record in record.clients:
                    key = f"{cohort.name}/{client_record.part}"
                    if client_record.state == "lost" and key not in lost:
                        progress("lost", {"cohort": cohort.name, **client_record.to_json()})
                    if client_record.state == "lost":
                        lost.add(key)
                    else:
                        lost.discard(key)
                if states.get(cohort.name) != record.state:
                    states[cohort.name] = record.state
                    progress("state", {"cohort": cohort.name, **record.to_json()})
                if not record.ended:
                    pending += 1
            if not pending:
                break
            if time.monotonic() > deadline:
                raise UnreachableError(
                    f"{pending} deployment(s) still not finished after {timeout:.0f} s",
                    hint="raise --timeout, or check the deployments with GET /deployments",
                )
            time.sleep(poll_seconds)
    return sent


def raise_for_failures(sent: list[SentCohort]) -> None:
    """DeploymentFailed naming every cohort whose deployment failed."""
    failed = [c for c in sent if c.record is not None and c.record.state == "failed"]
    if failed:
        raise DeploymentFailed(
            "; ".join(f"cohort {c.name} failed: {c.record.reason if c.record else None}" for c in failed),
            hint="GET /deployments/ID on the MLFO shows per-client status",
        )


SETTLE_SECONDS = 60.0


def wait_settled(sent: list[SentCohort], config: Config, campus: str, timeout: float = SETTLE_SECONDS) -> None:
    """Wait (bounded) until the MLFO has stopped what each ended deployment ran, and keep those final records: a
    deployment counts as ended before its clients and edge aggregators are stopped (and their last figures read),
    and a next run on the same network would find an edge host busy."""
    deadline = time.monotonic() + timeout
    with campus_client(config, campus) as client:
        for cohort in sent:
            while time.monotonic() < deadline:
                record = Deployment.model_validate(client.deployment(cohort.deployment_id))
                if record.settled:
                    cohort.record = record
                    break
                time.sleep(0.25)
            else:
                log.warning("deployment %s did not finish stopping within %.0f s", cohort.deployment_id, timeout)
