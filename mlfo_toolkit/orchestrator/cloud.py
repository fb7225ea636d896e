"""The cloud MLFO: FL servers from the configured pool, allocated for Mo-Mo intents, started on their agents."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ConflictError, MlfoError, NotFoundError, RemoteError, ValidationError
from mlfo_toolkit.monitoring.metrics import MlfoMetrics
from mlfo_toolkit.orchestrator.api_clients import AgentClient, southbound
from mlfo_toolkit.orchestrator.cohorts import free_server
from mlfo_toolkit.orchestrator.intents import parse_momo_intent
from mlfo_toolkit.orchestrator.records import Allocation
from mlfo_toolkit.orchestrator.store import Store

log = logging.getLogger(__name__)

ALLOCATION = "allocation"


class CloudMlfo:
    """Allocates FL servers from the configured pool for Mo-Mo intents and starts them."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self._lock = threading.Lock()
        self.metrics = MlfoMetrics("cloud")

    def allocations(self) -> list[Allocation]:
        return [Allocation.model_validate(raw) for raw in self.store.all(ALLOCATION)]

    def _get(self, deployment: str) -> Allocation | None:
        raw = self.store.get(ALLOCATION, deployment)
        return Allocation.model_validate(raw) if raw is not None else None

    def _put(self, allocation: Allocation) -> None:
        self.store.put(ALLOCATION, allocation.deployment, allocation.to_json(), allocation.created)

    def deploy(self, momo: Any) -> dict[str, Any]:
        """Pick a free server (or the previous cohort's with sameserv), start it, return its address."""
        intent, constraints = parse_momo_intent(momo)
        deployment = constraints.deployment or uuid.uuid4().hex[:12]
        if constraints.sameserv:
            return self._share(deployment)
        with self._lock:
            earlier = self._get(deployment)
        if earlier is not None and earlier.active:
            # The same deployment asked again (its first answer was lost): the same server, never a second one.
            return {"server": self._server_of(deployment), "agent": earlier.agent, "shared_with": earlier.shares}
        with self._lock:
            busy = {a.agent for a in self.allocations() if a.active}
            picked = free_server(self.config.server_agents(), busy)
            if picked is None:
                raise ConflictError(f"all {len(self.config.server_agents())} FL servers of the pool are busy",
                                    hint="wait for a cohort to finish or add servers to ip_plan.servers")
            record = Allocation(deployment=deployment, agent=picked, intent_id=intent.intentID, created=time.time())
            self._put(record)
        started = time.monotonic()
        try:
            with southbound(AgentClient, record.agent, self.config) as agent:
                answer = agent.start_server({
                    "algo": constraints.avgalgo, "fracfit": constraints.fracfit, "minfit": constraints.minfit,
                    "minav": constraints.minav, "numround": constraints.numround, "source": constraints.sourcekind,
                    "model": constraints.modelkind, "deployment": deployment, "cohort": constraints.cohort,
                    "seed": constraints.seed, "roundtimeout": constraints.roundtimeout,
                })
        except BaseException as err:
            # Whatever went wrong, the server is not this deployment's: free the allocation.
            record.active = False
            self._put(record)
            if isinstance(err, ValidationError):
                raise
            if isinstance(err, MlfoError):
                raise RemoteError(f"FL server agent {record.agent} failed: {err.message}", status=502) from None
            raise
        log.info("MoMo Intent took %.3f s (deployment %s -> %s)", time.monotonic() - started, deployment, answer["server"])
        record.server = answer["server"]
        self._put(record)
        return {"server": answer["server"], "agent": record.agent, "shared_with": None, "pid": answer.get("pid")}

    def _share(self, deployment: str) -> dict[str, Any]:
        """Give `deployment` the server of the most recent active allocation (sameserver)."""
        with self._lock:
            previous = [a for a in self.allocations() if a.active]
            if not previous:
                raise ConflictError("sameserver asked to share the previous cohort's server, but none is active")
            shared = previous[-1]
            record = shared.model_copy(update={"deployment": deployment, "shares": shared.deployment, "created": time.time()})
            self._put(record)
        # The shared server may still be starting: its address comes when its agent answers.
        record.server = self._server_of(shared.deployment)
        self._put(record)
        return {"server": record.server, "agent": shared.agent, "shared_with": shared.deployment}

    def _server_of(self, deployment: str, timeout: float = 120.0) -> str:
        """The server address of an allocation, waiting while its agent is still starting it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self._get(deployment)
            if record is not None and record.server:
                return record.server
            if record is None or not record.active:
                break
            time.sleep(0.2)
        raise ConflictError(f"the server of deployment {deployment} to share did not start")

    def release(self, deployment: str) -> dict[str, Any]:
        """Mark a deployment's server free; stop it when no other active deployment shares it."""
        with self._lock:
            record = self._get(deployment)
            if record is None:
                raise NotFoundError(f"no allocation for deployment '{deployment}'")
            record.active = False
            self._put(record)
            still_used = [a for a in self.allocations() if a.active and a.agent == record.agent]
            owner: Allocation | None = record  # a shared server runs under the deployment that asked for it first
            while owner is not None and owner.shares:
                owner = self._get(owner.shares)
        stopped = False
        if not still_used:
            try:
                # Only this deployment's server: once the allocation is free the agent may already run the
                # next deployment's, which a bare /stop would kill (seen as "no longer running on its agent").
                with southbound(AgentClient, record.agent, self.config) as agent:
                    agent.stop(owner.deployment if owner is not None else deployment)
                stopped = True
            except MlfoError as err:
                log.warning("could not stop FL server on %s: %s", record.agent, err.message)
        return {"released": deployment, "stopped": stopped}

    def close(self) -> None:
        pass
