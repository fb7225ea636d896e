"""The campus MLFO: intents in, an FL server from the cloud MLFO, the cohort's clients started, the run
followed (`orchestrator.watch`) until it ends."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydantic

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import (
    CapacityError,
    ConflictError,
    MlfoError,
    NotFoundError,
    PoolBusyError,
    StorageError,
    UnreachableError,
    ValidationError,
)
from mlfo_toolkit.fl.data import SHAPES
from mlfo_toolkit.fl.models import update_bytes
from mlfo_toolkit.fl.partitions import KINDS, PartitionSpec
from mlfo_toolkit.fl.strategies import canonical_strategy
from mlfo_toolkit.fl.userapps import is_app
from mlfo_toolkit.monitoring.metrics import AssuranceStates, DeploymentStates, MlfoMetrics
from mlfo_toolkit.orchestrator.api_clients import AgentClient, MomoClient, southbound
from mlfo_toolkit.orchestrator.assurance import SHIPPED_POLICIES, Target, check_thresholds, load_policy
from mlfo_toolkit.orchestrator.cohort_meter import CohortMeter
from mlfo_toolkit.orchestrator.cohorts import client_range
from mlfo_toolkit.orchestrator.deployments import DeploymentTable
from mlfo_toolkit.orchestrator.intake import Admission, ReceiveParams, ServerQueue
from mlfo_toolkit.orchestrator.intents import Catalog, Intent, MomoConstraints, Pipeline, build_momo_intent
from mlfo_toolkit.orchestrator.loop import AssuranceLoop
from mlfo_toolkit.orchestrator.placement import check_placement, load_placement
from mlfo_toolkit.orchestrator.records import ClientRecord, ClientRestart, Decision, Deployment, DeploymentParams, EdgeTier, ServerRecord
from mlfo_toolkit.orchestrator.store import Store
from mlfo_toolkit.orchestrator.tiers import default_edges, edge_server_fields, edge_traffic, global_members, plan_tiers, relay_fields
from mlfo_toolkit.orchestrator.watch import DeploymentWatch
from mlfo_toolkit.util.names import safe_name
from mlfo_toolkit.util.stats import spread
from mlfo_toolkit.util.yamlfiles import strict_json

log = logging.getLogger(__name__)

# An agent answers /cli once its SuperNode is up, the cloud answers /momo/deploy once the SuperLink
# is: under load (50 clients starting on 2 cores) both take a while.
CLIENT_START_TIMEOUT = 130.0
MOMO_DEPLOY_TIMEOUT = 150.0  # above the cloud's own wait for a server start (cloud.SERVER_START_TIMEOUT)
MOMO_ATTEMPTS = 3


class CampusMlfo:
    """Receives user intents, asks the cloud MLFO for an FL server, starts the cohort's clients, follows the run.

    It survives its own failures: after a restart it resumes watching what runs and abandons what was half
    deployed (stopping every client it may have started); a release or a stop that failed is retried by
    a janitor; a store it cannot write fails the deployments that change with the reason, keeps them in
    memory and writes them again once it can.
    """

    def __init__(self, config: Config, store: Store, catalog: Catalog | None = None) -> None:
        self.config = config
        self.metrics = MlfoMetrics("campus")
        self.table = DeploymentTable(store, on_store_error=lambda err: self.metrics.store_errors.labels("campus").inc())
        self.catalog = catalog or Catalog.load(config.mlfo.catalog)
        self.metrics.add(DeploymentStates(self.table.states))
        self.metrics.add(AssuranceStates(self.table.assured))
        self.admission = Admission(config, self.table)
        self.queue = ServerQueue(config)
        self.cohort_meter = CohortMeter(config)
        self.loop = AssuranceLoop(config, self.table, self, self.metrics)
        self.watch = DeploymentWatch(config, self.table, self._finish, self.loop, edge_lost=self._edge_lost)
        # Starting a client starts a Python process that imports Flower: a few at a time, machine-wide.
        self._start_slots = threading.BoundedSemaphore(config.mlfo.start_concurrency)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._restarting: set[tuple[str, int]] = set()
        self.recovery: dict[str, Any] = {"at": time.time(), **store.recovery(), "resumed": [], "abandoned": []}
        self._recover()
        self._spawn(self._janitor, "janitor")

    # --- intents in ----------------------------------------------------------------------------
    def receive(self, intent: Intent, params: ReceiveParams) -> dict[str, Any]:
        """Validate an intent and its cohort parameters, record the deployment, deploy in the background."""
        self.metrics.intents.labels("campus").inc()
        pipeline = self.catalog.resolve(intent)
        if not pipeline.federated:
            raise ValidationError(
                "this intent does not ask for federated learning; the MLFO orchestrates FL pipelines only",
                field="targets[0].constraints.privacylevel",
                hint="set 'privacylevel: high' in the target's constraints",
            )
        fl = self.config.fl
        strategy = canonical_strategy(params.avgalgo or fl.strategy, "avgalgo")
        ipstart = params.ipstart if params.ipstart is not None else self.config.ip_plan.first_client_octet
        clients = client_range(self.config, ipstart, params.cohortsize)
        name = params.name or safe_name(intent.intentID)
        target = Target.from_intent(intent.model_dump(exclude_none=True))
        min_available, min_fit = params.minav or fl.min_available, params.minfit or fl.min_fit
        if target.max_clients is not None:
            for field, wanted in (("minav", min_available), ("minfit", min_fit)):
                if wanted > target.max_clients:
                    raise ValidationError(f"the intent allows {target.max_clients} clients but {field} is {wanted}: the run "
                                          "could never start", field="targets[0].constraints.max_clients")
        if params.aggregation != "flat":
            if params.sameserver:
                raise ValidationError("a hierarchical cohort has a global FL server of its own", field="sameserver",
                                      hint="set sameserver to false, or aggregation to flat")
            if target.max_clients is not None:
                raise ValidationError("a hierarchical cohort trains every client: it takes no max_clients cap",
                                      field="targets[0].constraints.max_clients", hint="drop max_clients, or aggregate flat")
        policy, overrides = self._check_assurance(params)
        memory_mb = self.admission.estimate(min(params.cohortsize, target.max_clients or params.cohortsize), params.sameserver)
        if self.queue.full():
            raise CapacityError(f"{self.config.mlfo.queue_length} deployments already wait for a free FL server "
                                "(mlfo.queue_length)", hint="send it again when a cohort has finished, or raise mlfo.queue_length")
        now = time.time()
        record = Deployment(
            id=uuid.uuid4().hex[:12],
            name=name,
            intent_id=intent.intentID,
            intent=intent.model_dump(exclude_none=True),
            pipeline=pipeline.to_dict(),
            params=DeploymentParams(
                ipstart=ipstart, cohortsize=params.cohortsize, sameserver=params.sameserver, strategy=strategy,
                fraction_fit=params.fracfit or fl.fraction_fit, min_fit=params.minfit or fl.min_fit,
                min_available=params.minav or fl.min_available, rounds=params.numround or fl.rounds,
                seed=params.seed, round_timeout=params.roundtimeout, partition=_partition(params.partition),
                aggregation=params.aggregation, local_rounds=params.localrounds or 1,
                edges=(params.edges or default_edges(params.cohortsize)) if params.aggregation != "flat" else None,
            ),
            state="planned", created=now, updated=now,
            clients=[ClientRecord(agent=a, part=i) for i, a in enumerate(clients)],
            memory_mb=memory_mb, policy=policy, assurance_settings=overrides or None,
            target=target.to_dict() if target.assured else None,
        )
        with self.admission.lock:
            self.admission.check(name, memory_mb, params.cohortsize, params.sameserver)
            self.table.add(record)
        self._spawn(self._deploy, record.id)
        return {"id": record.id, "state": "planned", "name": record.name}

    def _check_assurance(self, params: ReceiveParams) -> tuple[str, dict[str, Any]]:
        """The deployment's policy (shipped, or allowed by this MLFO's config, and loadable) and threshold overrides."""
        settings = self.config.assurance
        name = params.policy or settings.policy
        if name not in (*SHIPPED_POLICIES, settings.policy, *settings.allowed_policies):
            raise ValidationError(f"policy '{name}' is not allowed on this MLFO", field="policy",
                                  hint="add it to assurance.allowed_policies in the campus MLFO's config")
        overrides: dict[str, Any] = {}
        if params.assurance:
            try:
                overrides = strict_json(params.assurance)
            except ValueError as err:
                raise ValidationError(f"is not a JSON object: {err}", field="assurance") from None
            if not isinstance(overrides, dict):
                raise ValidationError("is not a JSON object of thresholds", field="assurance")
            check_thresholds(overrides, "form", {}, "form", ("assurance",))
        load_policy(name, settings.with_thresholds(overrides), base=Path.cwd())
        return name, overrides

    # --- reading -------------------------------------------------------------------------------
    def deployments(self) -> list[Deployment]:
        return self.table.all()

    def deployment(self, deployment_id: str) -> Deployment:
        return self.table.get(deployment_id)

    def deployment_page(self, *, limit: int = 100, offset: int = 0, state: str | None = None,
                        summary: bool = False) -> dict[str, Any]:
        return {**self.table.page(limit=limit, offset=offset, state=state, summary=summary),
                "queued": len(self.queue.waiting), "recovery": self.recovery}

    # --- a running deployment stopped ----------------------------------------------------------
    def stop_deployment(self, deployment_id: str) -> dict[str, Any]:
        """End a running deployment now: its clients and server stop, it shows failed, 'stopped on request'."""
        record = self.table.get(deployment_id)
        if record.state != "running":
            raise ConflictError(f"deployment {deployment_id} is {record.state}: only a running deployment stops",
                                hint="a deploying one can be stopped once it runs")
        self._finish(deployment_id, "failed", "stopped on request")
        return {"deployment": deployment_id, "state": self.table.get(deployment_id).state}

    # --- a lost client started again ---------------------------------------------------------
    def restart_client(self, deployment_id: str, part: int) -> dict[str, Any]:
        """Start a new SuperNode for client `part` of a running deployment whose SuperNode is gone (lost).

        It joins the running FL server; Flower samples it from the next round on, and never again the
        SuperNode that was lost. A stop that comes while the client starts wins: the new SuperNode is
        stopped again and the restart answers 409."""
        return self.restart(deployment_id, part)

    def restart(self, deployment_id: str, part: int, agent: str | None = None) -> dict[str, Any]:
        """Restart a lost client part on its own agent, or (`agent="spare"`) on the host of a spare part."""
        record = self.table.get(deployment_id)
        client = record.client(part)
        if client is None:
            raise NotFoundError(f"deployment {deployment_id} has no client part {part} (parts 0-{len(record.clients) - 1})")
        with self.table.lock:
            record = self.table.get(deployment_id)
            client = record.client(part)
            assert client is not None
            if record.state != "running":
                raise ConflictError(f"deployment {deployment_id} is {record.state}: only a running deployment's clients restart")
            if client.state not in ("lost", "failed"):
                raise ConflictError(f"client part {part} is {client.state}: only a lost or failed client restarts",
                                    hint="wait until the MLFO sees it lost (GET /deployments/ID)")
            if (deployment_id, part) in self._restarting:
                raise ConflictError(f"client part {part} is already being restarted")
            host = client.agent
            if agent == "spare":
                spare = next((c for c in record.clients if c.state == "spare"), None)
                if spare is None:
                    raise ConflictError(f"deployment {deployment_id} has no spare client host")
                host = spare.agent
            self._restarting.add((deployment_id, part))
        requested = time.time()
        assert record.server is not None  # a running deployment has its server
        try:
            if client.node_id is not None:
                # Flower would go on sampling the lost SuperNode until its heartbeat expires (60 s).
                try:
                    self.control(deployment_id, {"exclude_nodes": [client.node_id]}, part=part)
                except MlfoError as err:  # the restart helps even so; the run waits out that node's replies
                    log.warning("deployment %s: could not exclude the lost SuperNode %s: %s", deployment_id, client.node_id, err.message)
            answer = self._start_client(host, record, part, record.server_for(part) or record.server.server)
            with self.table.edit(deployment_id) as live:
                entry = live.clients[part]
                ended = live.ended
                if not ended:
                    earlier = ClientRestart(restarted_at=requested, agent=entry.agent if host != entry.agent else None,
                                            node_id=entry.node_id, name=entry.name, pid=entry.pid, lost_at=entry.lost_at,
                                            lost_reason=entry.lost_reason, error=entry.error)
                    _started(entry, answer)
                    entry.agent, entry.node_id, entry.silent_since = host, None, None
                    entry.error = entry.lost_at = entry.lost_reason = None
                    entry.restarts.append(earlier)
                restarted = entry.model_copy()
        finally:
            with self.table.lock:
                self._restarting.discard((deployment_id, part))
        if ended:
            # Stopped while the client started: the stop did not see the new SuperNode, so stop it here.
            self._stop_clients(deployment_id, [restarted])
            raise ConflictError(f"deployment {deployment_id} ended while client part {part} restarted; it was stopped again")
        log.info("client part %d of %s restarted on %s", part, deployment_id, restarted.agent)
        return {"deployment": deployment_id, "part": part, "agent": restarted.agent, "client": restarted.name,
                "pid": restarted.pid, "seconds": round(time.time() - requested, 3)}

    # --- what the closed loop can have done (orchestrator.loop.Actuator) -------------------------
    def start_part(self, deployment_id: str, part: int) -> dict[str, Any]:
        """Start a spare client part of a running deployment on its own host."""
        record = self.table.get(deployment_id)
        client = record.client(part)
        if client is None or client.state != "spare" or record.server is None:
            raise ConflictError(f"client part {part} of {deployment_id} is not a spare part of a running deployment")
        started = time.monotonic()
        answer = self._start_client(client.agent, record, part, record.server_for(part) or record.server.server)
        with self.table.edit(deployment_id) as live:
            entry = live.clients[part]
            _started(entry, answer)
            entry.ready_seconds = round(time.monotonic() - started, 3)
        return {"part": part, "agent": client.agent}

    def remove_part(self, deployment_id: str, part: int) -> dict[str, Any]:
        """Take a running client out: its SuperNode stops and is never sampled again; its part becomes spare."""
        record = self.table.get(deployment_id)
        client = record.client(part)
        if client is None or client.state != "running":
            raise ConflictError(f"client part {part} of {deployment_id} is not running")
        if client.node_id is not None:
            self.control(deployment_id, {"exclude_nodes": [client.node_id]}, part=part)
        with southbound(AgentClient, client.agent, self.config) as agent:
            agent.stop(deployment_id, part)
        self.table.update_client(deployment_id, part, state="spare", node_id=None)
        return {"part": part}

    def control(self, deployment_id: str, changes: dict[str, Any], part: int | None = None) -> dict[str, Any]:
        """Change the running FL run through its server's agent (read by the ServerApp before the next round); with
        `part`, the run that client trains in: its edge's, if it is under an edge aggregator."""
        record = self.table.get(deployment_id)
        if record.server is None:
            raise ConflictError(f"deployment {deployment_id} has no FL server")
        tier = record.tier_of(part) if part is not None else None
        if tier is not None:
            with southbound(AgentClient, tier.agent, self.config) as agent:
                return agent.control({"deployment": deployment_id, **changes})
        with southbound(AgentClient, record.server.agent, self.config) as agent:
            answer = agent.control({"deployment": deployment_id, **changes})
        with contextlib.suppress(StorageError):
            self.table.update(deployment_id, control=answer.get("control"))
        return answer

    def meter(self, deployment_id: str, rate_mbit: float | None) -> dict[str, Any]:
        return self.cohort_meter.set(self.table.get(deployment_id), rate_mbit)

    def meter_rate(self, deployment_id: str) -> float | None:
        return self.cohort_meter.rate(self.table.get(deployment_id))

    # --- the deployment itself -----------------------------------------------------------------
    def _spawn(self, target: Callable[[str], None], deployment_id: str) -> None:
        thread = threading.Thread(target=target, args=(deployment_id,), daemon=True, name=f"{target.__name__}-{deployment_id}")
        self._threads.append(thread)
        thread.start()

    def _recover(self) -> None:
        """After a restart: resume watching running deployments, abandon the half-deployed ones."""
        for record in self.table.all():
            if record.state == "running":
                self.recovery["resumed"].append(record.id)
                self._spawn(self.watch.follow, record.id)
            elif record.state in ("planned", "queued", "deploying"):
                self.recovery["abandoned"].append(record.id)
                self.metrics.recovered.labels("campus", "abandoned").inc()
                with contextlib.suppress(StorageError):  # kept in memory; the janitor writes it later
                    self.table.update(record.id, state="failed", reason="the MLFO restarted while deploying; send the intent again",
                                      finished=time.time(), queue=None)
                # What the half-made deployment holds (a cloud allocation, SuperLink, SuperNodes) is freed.
                self._spawn(self._abandon, record.id)
        if self.recovery["resumed"] or self.recovery["abandoned"] or self.recovery["moved_aside"] or self.recovery["skipped"]:
            log.info("recovered: resumed %s, abandoned %s, store moved aside: %s, records skipped: %d",
                     self.recovery["resumed"], self.recovery["abandoned"], self.recovery["moved_aside"], len(self.recovery["skipped"]))

    def _deploy(self, deployment_id: str) -> None:
        started = time.monotonic()
        try:
            record = self.table.update(deployment_id, state="deploying")
            params, pipeline = record.params, record.pipeline
            tiers = plan_tiers(record, self.config) if params.aggregation != "flat" else []
            if tiers:
                record = self.table.update(deployment_id, tiers=tiers)
            # A hierarchical cohort's global server has one client per edge (and every client on no edge), and
            # samples all of them. With auto, how many is known after the placement: it is set then (control).
            auto = params.aggregation == "auto"
            members = global_members(record) if tiers else 0
            constraints = MomoConstraints(
                sourcekind=pipeline["source"], modelkind=pipeline["model"], avgalgo=params.strategy,
                fracfit=1.0 if tiers else params.fraction_fit, minfit=1 if auto else members or params.min_fit,
                minav=1 if auto else members or params.min_available, numround=params.rounds,
                sameserv=params.sameserver, deployment=deployment_id, cohort=record.name, seed=params.seed,
                roundtimeout=params.round_timeout,
            )
            momo = build_momo_intent(record.intent_id, Pipeline(**pipeline), constraints)
            if params.sameserver:
                self._await_previous(deployment_id)
            answer = self._server_for(deployment_id, momo.model_dump(exclude_none=True))
            started = time.monotonic()  # orchestration counts from the server given, not from the queue
            server = ServerRecord(server=answer["server"], agent=answer["agent"], shared_with=answer.get("shared_with"),
                                  pid=answer.get("pid"))
            record = self.table.update(deployment_id, server=server, released=False)
            if auto:
                self._place(deployment_id)
                record = self.table.get(deployment_id)
            if record.tiers:
                self._start_tiers(record, started)
            else:
                self._start_clients(record, started)
            record = self.table.get(deployment_id)
            failed = [c for c in record.clients if c.state == "failed"]
            usable = sum(1 for c in record.clients if c.state == "running")
            elapsed = time.monotonic() - started
            log.info("HTTP Intent took %.3f s (deployment %s)", elapsed, deployment_id)
            broken = [t for t in record.tiers if t.state != "running"]
            if broken:
                raise MlfoError("edge aggregators did not start: " + "; ".join(f"edge {t.edge} on {t.agent}: {t.error}" for t in broken))
            if usable < params.min_available:
                raise MlfoError(
                    f"only {usable} of {len(record.clients)} clients started, the run needs {params.min_available}: "
                    + "; ".join(f"{c.agent}: {c.error}" for c in failed)
                )
            self.metrics.orchestration.labels("campus").observe(elapsed)
            ready = [c.ready_seconds for c in record.clients if c.ready_seconds is not None]
            self.table.update(deployment_id, state="running", orchestration_seconds=elapsed, client_ready_seconds=spread(ready))
        except MlfoError as err:
            self._finish(deployment_id, "failed", err.message)
            return
        except Exception as err:  # never let a deployment thread die silently
            log.exception("deployment %s failed", deployment_id)
            self._finish(deployment_id, "failed", f"internal error: {err}")
            return
        self.watch.follow(deployment_id)

    def _await_previous(self, deployment_id: str) -> None:
        """A sameserver deployment shares the server of the cohort sent before it: wait until that one has its
        server (or has ended). Deployments run at once, and two sent back to back reached the cloud MLFO in either
        order: the second was refused, no server being active yet."""
        deadline = time.monotonic() + self.config.mlfo.queue_wait_seconds
        while not self._stopping.is_set() and time.monotonic() < deadline:
            earlier = self.table.sent_before(deployment_id)
            if earlier is None or earlier.server is not None:
                return
            self._stopping.wait(0.05)

    def _server_for(self, deployment_id: str, momo: dict[str, Any]) -> dict[str, Any]:
        """An FL server from the cloud MLFO; while every server is busy, wait in the queue (bounded, fair)."""
        queued_since: float | None = None
        busy = "every FL server is busy"
        try:
            if self.queue.waiting:
                # Others wait already: a newcomer queues behind them, it does not ask before they do.
                queued_since = self._enqueue(deployment_id)
            while True:
                # Only the first of the queue asks the cloud again: the others keep their places.
                if queued_since is None or self.queue.position(deployment_id) == 1:
                    try:
                        return self._momo_deploy(momo)
                    except PoolBusyError as err:
                        busy = err.message
                        if queued_since is None:
                            queued_since = self._enqueue(deployment_id)
                            log.info("deployment %s waits for a free FL server (%s)", deployment_id, busy)
                waited = time.time() - queued_since
                if waited >= self.config.mlfo.queue_wait_seconds:
                    raise MlfoError(f"waited {waited:.0f} s for a free FL server (mlfo.queue_wait_seconds): {busy}")
                if self._stopping.is_set():
                    raise MlfoError("the MLFO is stopping")
                self._show_queue()
                self.queue.wait(timeout=1.0)
        finally:
            if queued_since is not None:
                self.queue.leave(deployment_id)
                self.metrics.queued.labels("campus").set(len(self.queue.waiting))
                with contextlib.suppress(StorageError, NotFoundError):
                    self.table.update(deployment_id, state="deploying", queue=None)
                self._show_queue()

    def _enqueue(self, deployment_id: str) -> float:
        """Join the queue for a free FL server (CapacityError when it is full); when it joined."""
        self.queue.join(deployment_id)
        self.metrics.queued.labels("campus").set(len(self.queue.waiting))
        return time.time()

    def _show_queue(self) -> None:
        """Each queued deployment's position and an estimate of its wait (from the runs that finished here)."""
        durations = sorted(r.finished - r.created for r in self.table.all() if r.state == "done" and r.finished)
        typical = durations[len(durations) // 2] if durations else None
        servers = max(1, len(self.config.server_agents()))
        for deployment_id in list(self.queue.waiting):
            position = self.queue.position(deployment_id)
            if position is None:
                continue
            with contextlib.suppress(StorageError, NotFoundError), self.table.edit(deployment_id) as record:
                if record.ended:
                    continue
                since = (record.queue or {}).get("since") or time.time()
                record.state = "queued"
                record.queue = {"position": position, "since": since, "length": len(self.queue.waiting),
                                "estimated_wait_seconds": round(typical * position / servers, 1) if typical else None}

    def _momo_deploy(self, momo: dict[str, Any]) -> dict[str, Any]:
        """Ask the cloud MLFO for an FL server; a lost answer is asked again (deploy is idempotent per deployment)."""
        timeout = max(self.config.api.timeout_seconds, MOMO_DEPLOY_TIMEOUT)
        with southbound(MomoClient, self.config.mlfo.cloud, self.config, timeout=timeout) as cloud:
            for attempt in range(1, MOMO_ATTEMPTS + 1):
                try:
                    server: dict[str, Any] = cloud.deploy(momo)
                    self.metrics.momo.labels("campus", "ok").inc()
                    return server
                except UnreachableError as err:
                    self.metrics.momo.labels("campus", "error").inc()
                    if attempt == MOMO_ATTEMPTS or self._stopping.is_set():
                        raise
                    log.warning("Mo-Mo deploy attempt %d: %s; asking again", attempt, err.message)
                    time.sleep(2.0 * attempt)
                except MlfoError:
                    self.metrics.momo.labels("campus", "error").inc()
                    raise
        raise AssertionError("unreachable")

    def _start_client(self, host: str, record: Deployment, part: int, server: str) -> dict[str, Any]:
        """Ask the agent on `host` to start client `part` of a deployment; it answers once the SuperNode is up."""
        with southbound(AgentClient, host, self.config, timeout=max(self.config.api.timeout_seconds, CLIENT_START_TIMEOUT)) as agent:
            return agent.start_client(client_fields(record, part, server))

    def _place(self, deployment_id: str) -> None:
        """`aggregation: auto`: measure each edge, let the placement policy decide where to aggregate, keep the
        decision with its numbers, and set the global run's sampling to the members it now has."""
        record = self.table.get(deployment_id)
        assert record.server is not None
        settings = self.config.placement
        target = record.server.agent
        pipeline = record.pipeline

        def agent_of(tier: EdgeTier) -> AgentClient:
            return southbound(AgentClient, tier.agent, self.config, timeout=max(self.config.api.timeout_seconds, 60.0), retries=0)

        def capacity(tier: EdgeTier) -> dict[str, Any]:
            seen: dict[str, Any] = {"edge": tier.edge, "name": tier.name, "kind": tier.kind, "agent": tier.agent,
                                    "clients": len(tier.parts), "rate_mbit": None, "rtt_ms": None, "link_source": None,
                                    "cpus_free": None, "declared": tier.link, "errors": []}
            try:
                with agent_of(tier) as agent:
                    seen["cpus_free"] = agent.capacity().get("cpus_free")
            except MlfoError as err:
                seen["errors"].append(f"capacity: {err.message}")
            return seen

        def path(tier: EdgeTier, seen: dict[str, Any]) -> dict[str, Any]:
            try:
                with agent_of(tier) as agent:
                    found = agent.probe(target, settings.probe_bytes)
                seen.update(rate_mbit=found.get("rate_mbit"), rtt_ms=found.get("rtt_ms"), link_source="measured")
            except MlfoError as err:
                seen["errors"].append(f"probe: {err.message}")
                declared = tier.link or {}
                if declared.get("bandwidth_mbit"):  # the network's declared backhaul instead
                    delay = declared.get("delay_ms")
                    seen.update(rate_mbit=declared["bandwidth_mbit"], rtt_ms=2 * delay if delay is not None else None,
                                link_source="declared")
            return seen

        # The CPU first, for every edge at once, then the paths one at a time: a probe's download would count as
        # busy CPU, and probes at once would share the cloud's side of every path (and, emulated, the machine).
        with ThreadPoolExecutor(max_workers=max(1, len(record.tiers)), thread_name_prefix="probe") as pool:
            seen = list(pool.map(capacity, record.tiers))
        edges = [path(tier, found) for tier, found in zip(record.tiers, seen)]
        shape = SHAPES.get(str(pipeline.get("source")))
        observation: dict[str, Any] = {
            "model_bytes": update_bytes(str(pipeline.get("model")), *shape) if shape and not is_app(str(pipeline.get("model"))) else None,
            "local_rounds": record.params.local_rounds, "target": target, "edges": edges}
        error = None
        try:
            policy = load_placement(settings.policy, settings)
            placed = check_placement(policy.place(observation), [t.edge for t in record.tiers])
        except Exception as err:  # a policy that fails or answers nonsense: every edge goes flat, and the record says why
            error = f"{type(err).__name__}: {err}"
            placed = {t.edge: {"edge": t.edge, "aggregate": False, "reason": "the placement policy failed"} for t in record.tiers}
        chosen = [t for t in record.tiers if placed[t.edge]["aggregate"]]
        actions = [{"kind": "aggregate_at_edge" if placed[t.edge]["aggregate"] else "flat", "edge": t.name or t.edge,
                    "status": "done", "detail": placed[t.edge]["reason"]} for t in record.tiers]
        decision = Decision(at=time.time(), round=0, trigger="placement", policy=settings.policy, observed=observation,
                            rules=[f"{t.name or t.edge}: {placed[t.edge]['reason']}" for t in record.tiers], actions=actions, error=error)
        with self.table.edit(deployment_id) as live:
            live.tiers = [t.model_copy(update={"edge": i}) for i, t in enumerate(chosen)]
            live.decisions.append(decision)
        record = self.table.get(deployment_id)
        members = global_members(record)
        params = record.params
        self.control(deployment_id, {"fraction_fit": 1.0 if record.tiers else params.fraction_fit,
                                     "min_fit": members if record.tiers else params.min_fit,
                                     "min_available": members if record.tiers else params.min_available})
        log.info("deployment %s: aggregators placed on %s", deployment_id, [t.name or t.agent for t in record.tiers] or "no edge")

    def _edge_lost(self, deployment_id: str, edge: int) -> None:
        """An edge aggregator died mid-run (seen by the watch): the run goes on. Its relay is excluded at the
        global server; its clients start again towards the global server (placement.on_edge_lost: rehome),
        or are stopped and the edge leaves the run (drop). The global run's sampling follows its members."""
        how = self.config.placement.on_edge_lost
        record = self.table.get(deployment_id)
        tier = record.tiers[edge]
        parts = list(tier.parts)
        with self.table.edit(deployment_id) as live:
            gone = live.tiers[edge]
            gone.handled, gone.parts_before, gone.parts = how, parts, []
            for part in parts:
                client = live.clients[part]
                if client.state in ("running", "starting", "lost"):
                    client.state, client.error = ("lost" if how == "rehome" else "spare"), f"its edge aggregator ({tier.name or edge}) was lost"
        # What is left of the aggregator on its host (a relay or edge run still alive) is stopped, and so are its
        # clients' SuperNodes, which would wait for the dead edge SuperLink.
        for host in dict.fromkeys([tier.agent, *(record.clients[p].agent for p in parts)]):
            try:
                with southbound(AgentClient, host, self.config, retries=0) as agent:
                    if host == tier.agent:
                        agent.stop(deployment_id, edge_run=True)
                    for part in parts:
                        if record.clients[part].agent == host:
                            agent.stop(deployment_id, part)
            except MlfoError as err:
                log.warning("deployment %s: could not stop what edge %s left on %s: %s", deployment_id, tier.name or edge, host, err.message)
        record = self.table.get(deployment_id)
        members = global_members(record)
        changes: dict[str, Any] = {"min_fit": max(1, members), "min_available": max(1, members)}
        if tier.relay_node_id is not None:
            changes["exclude_nodes"] = [tier.relay_node_id]
        try:
            self.control(deployment_id, changes)
        except MlfoError as err:
            log.warning("deployment %s: could not change the global run after edge %s was lost: %s", deployment_id, edge, err.message)
        actions: list[dict[str, Any]] = [{"kind": "exclude_relay", "edge": tier.name or edge, "status": "done", "detail": str(changes)}]
        if how == "rehome":
            for part in parts:
                try:
                    self.restart(deployment_id, part)
                    actions.append({"kind": "rehome_client", "part": part, "status": "done"})
                except MlfoError as err:
                    actions.append({"kind": "rehome_client", "part": part, "status": "failed", "detail": err.message})
        else:
            actions.append({"kind": "drop_edge", "edge": tier.name or edge, "parts": parts, "status": "done"})
        decision = Decision(at=time.time(), round=len(record.rounds), trigger="edge_lost", policy=f"placement.on_edge_lost: {how}",
                            observed={"edge": tier.name or edge, "agent": tier.agent, "reason": tier.error, "parts": parts},
                            rules=[f"edge {tier.name or edge} lost: {tier.error}"], actions=actions)
        with contextlib.suppress(StorageError), self.table.edit(deployment_id) as live:
            live.decisions.append(decision)
        log.info("deployment %s: edge %s lost (%s); %s", deployment_id, tier.name or edge, tier.error, how)

    def _start_tiers(self, record: Deployment, started: float) -> None:
        """A hierarchical deployment: every edge's run first (its clients need its address), then every client
        under its edge, then each edge's relay to the global server (the global run starts once all are in)."""
        assert record.server is not None
        with self.table.edit(record.id) as live:
            for tier in live.tiers:
                tier.state = "starting"  # a campus killed meanwhile stops them after its restart

        def edge_run(agent: AgentClient, tier: EdgeTier) -> dict[str, Any]:
            answer = agent.start_server(edge_server_fields(record, tier))
            return {"server": _text(answer.get("server")), "pid": _number(answer.get("pid"))}

        self._each_tier(record, "edge run", MOMO_DEPLOY_TIMEOUT, edge_run)
        record = self.table.get(record.id)
        for tier in record.tiers:  # an edge without its run: its clients have nothing to connect to
            if tier.state == "failed":
                with self.table.edit(record.id) as live:
                    for part in tier.parts:
                        live.clients[part].state, live.clients[part].error = "failed", tier.error
        self._start_clients(self.table.get(record.id), started)
        record = self.table.get(record.id)
        global_server = record.server.server if record.server else ""

        def relay(agent: AgentClient, tier: EdgeTier) -> dict[str, Any]:
            answer = agent.start_client(relay_fields(record, tier, global_server))
            return {"state": "running", "relay": _text(answer.get("client")), "relay_pid": _number(answer.get("pid"))}

        self._each_tier(record, "relay to the global server", CLIENT_START_TIMEOUT, relay)

    def _each_tier(self, record: Deployment, step: str, timeout: float, ask: Callable[[AgentClient, EdgeTier], dict[str, Any]]) -> None:
        """Ask each edge's agent (but a failed edge's) to start one part of its aggregator, a few at a time (the start
        pool); the answer's changes go on the edge's record, or it fails with the reason."""

        def one(tier: EdgeTier) -> None:
            if tier.state == "failed":
                return
            changes: dict[str, Any]
            with self._start_slots:
                try:
                    with southbound(AgentClient, tier.agent, self.config, timeout=max(self.config.api.timeout_seconds, timeout)) as agent:
                        changes = ask(agent, tier)
                except MlfoError as err:
                    changes = {"state": "failed", "error": f"its {step} did not start: {err.message}"}
            with self.table.edit(record.id) as live:
                for key, value in changes.items():
                    setattr(live.tiers[tier.edge], key, value)

        with ThreadPoolExecutor(max_workers=self.config.mlfo.start_concurrency, thread_name_prefix="edge") as pool:
            list(pool.map(one, record.tiers))

    def _start_clients(self, record: Deployment, started: float) -> None:
        """Start the cohort's clients through a machine-wide pool, each to its FL server (its edge's, if it has
        one); record when each one was up.

        A client is recorded `starting` (in the store) before its agent is asked, so that a campus killed
        meanwhile knows, after its restart, to stop it."""
        cap = (record.target or {}).get("max_clients")

        def start_one(client: ClientRecord) -> None:
            changes: dict[str, Any]
            answer: dict[str, Any] | None = None
            with self._start_slots:
                server = record.server_for(client.part)
                if client.state == "failed":
                    return  # its edge did not start
                if cap is not None and client.part >= cap:
                    changes = {"state": "spare"}  # beyond the intent's cap: its host waits for the closed loop
                elif self._stopping.is_set():
                    changes = {"state": "failed", "error": "the MLFO is stopping"}
                else:
                    with self.table.edit(record.id) as live:
                        live.clients[client.part].state = "starting"
                    try:
                        answer = self._start_client(client.agent, record, client.part, server or "")
                        changes = {"ready_seconds": round(time.monotonic() - started, 3)}
                    except MlfoError as err:
                        changes = {"state": "failed", "error": err.message}
            with self.table.edit(record.id) as live:
                entry = live.clients[client.part]
                if answer is not None:
                    _started(entry, answer)
                for key, value in changes.items():
                    setattr(entry, key, value)

        with ThreadPoolExecutor(max_workers=self.config.mlfo.start_concurrency, thread_name_prefix="start") as pool:
            list(pool.map(start_one, record.clients))

    def _finish(self, deployment_id: str, state: str, reason: str | None) -> None:
        """End a deployment (the first end stands), stop its clients, give its server back; each step is tried
        even when an earlier one failed, and what failed is retried by the janitor."""
        with self.table.lock:
            record = self.table.get(deployment_id)
            if record.ended:
                return  # ended already (stopped on request while its watcher looked): the first end stands
            try:
                record = self.table.update(deployment_id, state=state, reason=reason, finished=time.time(), queue=None)
            except StorageError:
                record = self.table.get(deployment_id)  # ended in memory; written again by the janitor
        log.info("deployment %s %s%s", deployment_id, state, f": {reason}" if reason else "")
        self.loop.forget(deployment_id)
        self._stop_tiers(deployment_id)  # first: an edge run holds its host's one FL server slot
        self._stop_clients(deployment_id, record.clients)
        self._release(deployment_id)

    def _stop_clients(self, deployment_id: str, clients: list[ClientRecord]) -> None:
        """Stop a deployment's FL clients on their agents; each shows `stopped` once its agent confirmed."""
        for client in clients:
            if client.state not in ("running", "lost", "starting"):
                continue
            try:
                with southbound(AgentClient, client.agent, self.config, retries=0) as agent:
                    agent.stop(deployment_id)
            except MlfoError as err:
                log.warning("could not stop client %s of %s: %s", client.agent, deployment_id, err.message)
                continue
            with contextlib.suppress(StorageError), self.table.edit(deployment_id) as live:
                entry = live.clients[client.part]
                if entry.state in ("running", "starting"):
                    entry.state = "stopped"

    def _stop_tiers(self, deployment_id: str) -> None:
        """Stop the edge aggregators of a deployment (their edge run and relay) on their agents."""
        for tier in self.table.get(deployment_id).tiers:
            if tier.state not in ("running", "starting"):
                continue
            traffic = tier.traffic
            try:
                with southbound(AgentClient, tier.agent, self.config, retries=0) as agent:
                    with contextlib.suppress(MlfoError):  # its edge SuperLink's bytes to the end, for the record
                        traffic = edge_traffic(agent.status(), tier) or traffic
                    agent.stop(deployment_id)
            except MlfoError as err:
                log.warning("could not stop edge %d of %s on %s: %s", tier.edge, deployment_id, tier.agent, err.message)
                continue
            with contextlib.suppress(StorageError), self.table.edit(deployment_id) as live:
                live.tiers[tier.edge].state, live.tiers[tier.edge].traffic = "stopped", traffic

    def _release(self, deployment_id: str) -> None:
        """Give the deployment's FL server back to the cloud MLFO (released stays false until it confirmed)."""
        record = self.table.get(deployment_id)
        if record.server is None or record.released:
            return
        try:
            with southbound(MomoClient, self.config.mlfo.cloud, self.config, retries=0) as cloud:
                cloud.release(deployment_id)
        except NotFoundError:
            pass  # the cloud holds no allocation for it (it recovered without one): nothing to give back
        except MlfoError as err:
            log.warning("could not release the FL server of %s: %s (the janitor asks again)", deployment_id, err.message)
            return
        with contextlib.suppress(StorageError):
            self.table.update(deployment_id, released=True)
        self.queue.server_freed()

    def _abandon(self, deployment_id: str) -> None:
        """Stop whatever a deployment interrupted by a restart may have started, and free its server."""
        record = self.table.get(deployment_id)
        asked = [c.agent for c in record.clients if c.state != "planned"]  # `starting` is written before the agent is called
        asked += [t.agent for t in record.tiers if t.state != "planned"]
        for host in dict.fromkeys(asked):
            try:
                with southbound(AgentClient, host, self.config, retries=0) as agent:
                    agent.stop(deployment_id)
            except MlfoError as err:
                log.warning("could not stop what %s ran of %s: %s", host, deployment_id, err.message)
        try:
            with southbound(MomoClient, self.config.mlfo.cloud, self.config) as cloud:
                cloud.release(deployment_id)
        except NotFoundError:
            pass  # the cloud never allocated a server for it
        except MlfoError as err:
            log.warning("could not release the FL server of %s: %s", deployment_id, err.message)
            return
        with contextlib.suppress(StorageError):
            self.table.update(deployment_id, released=True)
        self.queue.server_freed()

    def _janitor(self, _: str) -> None:
        """Retry what failed: store writes, releases the cloud did not confirm, stops agents did not answer."""
        while not self._stopping.wait(self.config.mlfo.janitor_seconds):
            try:
                self.table.flush()
                for record in self.table.all():
                    if not record.ended:
                        continue
                    if record.server is not None and record.released is False:
                        self._release(record.id)
                    leftover = [c for c in record.clients if c.state in ("running", "starting")]
                    tiers = [t for t in record.tiers if t.state in ("running", "starting")]
                    if (leftover or tiers) and record.finished and time.time() - record.finished > self.config.mlfo.janitor_seconds:
                        self._stop_clients(record.id, leftover)
                        self._stop_tiers(record.id)
            except Exception:  # the janitor must outlive whatever it tidies up
                log.exception("janitor")

    def close(self) -> None:
        self._stopping.set()
        self.watch.stop()
        self.queue.server_freed()
        for thread in self._threads:
            thread.join(timeout=10)
        self.watch.close()


def client_fields(record: Deployment, part: int, server: str) -> dict[str, Any]:
    """The agent's /cli fields for client `part` of a deployment."""
    return {"source": record.pipeline["source"], "model": record.pipeline["model"], "server": server,
            "cohsize": record.params.cohortsize, "part": part, "deployment": record.id, "cohort": record.name,
            "seed": record.params.seed,
            "partition": json.dumps(record.params.partition) if record.params.partition else None,
            "tier": "edge" if record.tier_of(part) is not None else None}


def _partition(text: str | None) -> dict[str, Any] | None:
    """The /receive form's `partition` (JSON), checked; ValidationError naming the field."""
    if not text:
        return None
    try:
        return PartitionSpec.model_validate_json(text).model_dump(exclude_none=True)
    except pydantic.ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ValidationError(f"{where + ': ' if where else ''}{problem['msg']}", field="partition",
                              hint=f"kind is one of {', '.join(KINDS)}; e.g. {{\"kind\": \"dirichlet\", \"alpha\": 0.1}}") from None


def _started(entry: ClientRecord, answer: dict[str, Any]) -> None:
    """A client record as its agent's answer to /cli leaves it: running, with its name and SuperNode's PID."""
    entry.state, entry.name, entry.pid, entry.since = "running", _text(answer.get("client")), _number(answer.get("pid")), time.time()


def _text(value: Any) -> str | None:
    """A name an agent answered, as text whatever it sent."""
    return None if value is None else str(value)


def _number(value: Any) -> int | None:
    """A PID an agent answered, or None if it is not a whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
