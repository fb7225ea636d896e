"""The cloud MLFO: FL servers from the configured pool, allocated for Mo-Mo intents, started on their agents.

Its allocations are kept in the store, and checked against what the agents actually run: at start
(after a crash) and every `mlfo.janitor_seconds`. An allocation whose agent runs no server for it is
released; a server that no active allocation owns is stopped; a run that ended and was not released
within `mlfo.release_grace_seconds` (its campus MLFO is gone) is released and stopped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ConflictError, MlfoError, NotFoundError, PoolBusyError, RemoteError, StorageError, ValidationError
from mlfo_toolkit.monitoring.metrics import MlfoMetrics
from mlfo_toolkit.orchestrator.api_clients import AgentClient, southbound
from mlfo_toolkit.orchestrator.cohorts import free_server
from mlfo_toolkit.orchestrator.intents import parse_momo_intent
from mlfo_toolkit.orchestrator.records import Allocation
from mlfo_toolkit.orchestrator.store import Store

log = logging.getLogger(__name__)

ALLOCATION = "allocation"
# How long a server start may take (the agent waits up to 60 s for its SuperLink, under load).
SERVER_START_TIMEOUT = 130.0


class CloudMlfo:
    """Allocates FL servers from the configured pool for Mo-Mo intents and starts them."""

    def __init__(self, config: Config, store: Store, *, reconcile: bool = True) -> None:
        self.config = config
        self.store = store
        self._lock = threading.Lock()
        self.metrics = MlfoMetrics("cloud")
        self._stopping = threading.Event()
        self._ended_seen: dict[str, float] = {}  # deployment -> when its server was first seen ended
        self.recovery: dict[str, Any] = {"at": time.time(), **store.recovery(), "released": [], "stopped": []}
        self._thread: threading.Thread | None = None
        if reconcile:
            self.reconcile(first=True)
            self._thread = threading.Thread(target=self._janitor, daemon=True, name="cloud-janitor")
            self._thread.start()

    def allocations(self) -> list[Allocation]:
        out = []
        for raw in self.store.all(ALLOCATION):
            try:
                out.append(Allocation.model_validate(raw))
            except ValueError as err:  # pydantic's ValidationError is a ValueError
                self.store.skip(ALLOCATION, str(raw.get("deployment", "?")), f"not an allocation record: {err}")
        return out

    def _get(self, deployment: str) -> Allocation | None:
        raw = self.store.get(ALLOCATION, deployment)
        return Allocation.model_validate(raw) if raw is not None else None

    def _put(self, allocation: Allocation) -> None:
        try:
            self.store.put(ALLOCATION, allocation.deployment, allocation.to_json(), allocation.created)
        except StorageError:
            self.metrics.store_errors.labels("cloud").inc()
            raise

    def deploy(self, momo: Any) -> dict[str, Any]:
        """Pick a free server (or the previous cohort's with sameserv), start it, return its address."""
        intent, constraints = parse_momo_intent(momo)
        deployment = constraints.deployment or uuid.uuid4().hex[:12]
        if constraints.sameserv:
            return self._share(deployment)
        with self._lock:
            # One lock section for "asked before?" and the allocation: two identical deploys at once
            # start one server, and the second waits for its address.
            earlier = self._get(deployment)
            if earlier is None or not earlier.active:
                busy = {a.agent for a in self.allocations() if a.active}
                picked = free_server(self.config.server_agents(), busy)
                if picked is None:
                    raise PoolBusyError(f"all {len(self.config.server_agents())} FL servers of the pool are busy",
                                        hint="wait for a cohort to finish or add servers to ip_plan.servers")
                record = Allocation(deployment=deployment, agent=picked, intent_id=intent.intentID, created=time.time())
                self._put(record)
        if earlier is not None and earlier.active:
            # The same deployment asked again (its first answer was lost): the same server, never a second one.
            return {"server": self._server_of(deployment), "agent": earlier.agent, "shared_with": earlier.shares}
        started = time.monotonic()
        try:
            # The agent answers once its SuperLink listens: with many cohorts sent at once, that is many Flower
            # processes starting on a few cores (10 at once took longer than api.timeout_seconds).
            with southbound(AgentClient, record.agent, self.config,
                            timeout=max(self.config.api.timeout_seconds, SERVER_START_TIMEOUT)) as agent:
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

    def _owner(self, record: Allocation) -> Allocation:
        """The allocation a shared server runs under (the deployment that asked for it first)."""
        owner = record
        while owner.shares:
            earlier = self._get(owner.shares)
            if earlier is None:
                break
            owner = earlier
        return owner

    def release(self, deployment: str) -> dict[str, Any]:
        """Mark a deployment's server free; stop it when no other active deployment shares it."""
        with self._lock:
            record = self._get(deployment)
            if record is None:
                raise NotFoundError(f"no allocation for deployment '{deployment}'")
            record.active = False
            self._put(record)
            still_used = [a for a in self.allocations() if a.active and a.agent == record.agent]
            owner = self._owner(record)
        stopped = False
        if not still_used:
            try:
                # Only this deployment's server: once the allocation is free the agent may already run the
                # next deployment's, which a bare /stop would kill (seen as "no longer running on its agent").
                with southbound(AgentClient, record.agent, self.config) as agent:
                    agent.stop(owner.deployment)
                stopped = True
            except MlfoError as err:
                log.warning("could not stop FL server on %s: %s", record.agent, err.message)
        return {"released": deployment, "stopped": stopped}

    # --- what the agents really run ---------------------------------------------------------------
    def reconcile(self, *, first: bool = False) -> dict[str, list[str]]:
        """Check the allocations against the pool's agents: release what runs no server, stop what no
        allocation owns, and free runs that ended long ago unreleased. An agent that does not answer is left
        as it is (it cannot be told)."""
        released: list[str] = []
        stopped: list[str] = []
        timeout = min(self.config.api.timeout_seconds, 3.0)
        # What the agents say below may predate a server started (and recorded) while they were asked: only
        # an allocation whose server was recorded before asking can be judged by their answers.
        recorded = {a.deployment for a in self.allocations() if a.active and a.server}
        servers: dict[str, dict[str, Any] | None] = {}
        for agent_address in self.config.server_agents():
            try:
                with southbound(AgentClient, agent_address, self.config, timeout=timeout, retries=0) as agent:
                    servers[agent_address] = agent.status().get("server")
            except MlfoError:
                continue  # unreachable (or not started yet): nothing can be concluded about it
        now = time.time()
        with self._lock:
            allocations = self.allocations()
            active = [a for a in allocations if a.active]
            for record in active:
                if record.agent not in servers:
                    continue  # its agent did not answer: nothing can be told
                if record.server is None and not first and now - record.created < 120:
                    continue  # this process is starting its server right now
                if record.server is not None and record.deployment not in recorded and not first:
                    continue  # its server was started while the agents were asked: judged next time
                running = servers[record.agent]
                owner = self._owner(record)
                if running is None or running.get("deployment") != owner.deployment:
                    record.active = False
                    self._put(record)
                    released.append(record.deployment)
                    continue
                if record.server is None and running.get("address"):
                    # The cloud died between starting the server and recording it: the agent says where it is.
                    record.server = str(running["address"])
                    self._put(record)
                if running.get("state") in ("done", "failed"):
                    seen = self._ended_seen.setdefault(owner.deployment, now)
                    if now - seen >= self.config.mlfo.release_grace_seconds:
                        record.active = False
                        self._put(record)
                        released.append(record.deployment)
            owners = {self._owner(a).deployment for a in self.allocations() if a.active}
        for agent_address, running in servers.items():
            # A server started without a deployment name is not the cloud's to judge (nor to stop by name).
            if running is None or not running.get("deployment") or running.get("deployment") in owners:
                continue
            try:
                with southbound(AgentClient, agent_address, self.config, timeout=timeout, retries=0) as agent:
                    agent.stop(running["deployment"])
                stopped.append(f"{running.get('deployment')} on {agent_address}")
            except MlfoError as err:
                log.warning("could not stop the orphaned FL server on %s: %s", agent_address, err.message)
        for deployment in released:
            self.metrics.recovered.labels("cloud", "released").inc()
            log.info("released the allocation of %s: its agent runs no server for it (or its run ended unreleased)", deployment)
        for what in stopped:
            self.metrics.recovered.labels("cloud", "stopped").inc()
            log.info("stopped the FL server of %s: no active allocation owns it", what)
        if released or stopped:
            self.recovery["released"] += released
            self.recovery["stopped"] += stopped
        return {"released": released, "stopped": stopped}

    def _janitor(self) -> None:
        while not self._stopping.wait(self.config.mlfo.janitor_seconds):
            try:
                self.reconcile()
            except Exception:  # must outlive whatever it checks
                log.exception("checking the allocations")

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
