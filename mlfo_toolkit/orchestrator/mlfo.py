"""The ML Function Orchestrator: campus (intents -> FL clients) and cloud (Mo-Mo -> FL servers)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import CapacityError, ConflictError, MlfoError, NotFoundError, RemoteError, UnreachableError, ValidationError
from mlfo_toolkit.fl.strategies import canonical_strategy
from mlfo_toolkit.monitoring.metrics import DeploymentStates, MlfoMetrics
from mlfo_toolkit.names import NAME_MAX, NAME_PATTERN, SEED_MAX, safe_name
from mlfo_toolkit.orchestrator.clients import AgentClient, MomoClient
from mlfo_toolkit.orchestrator.cohorts import client_range, free_server
from mlfo_toolkit.orchestrator.intents import (
    Catalog,
    Intent,
    MomoConstraints,
    Pipeline,
    build_momo_intent,
    parse_momo_intent,
)
from mlfo_toolkit.orchestrator.store import Store
from mlfo_toolkit.stats import spread

log = logging.getLogger(__name__)

TERMINAL_STATES = ("done", "failed")
# An agent answers /cli once its SuperNode is up, the cloud answers /momo/deploy once the SuperLink
# is: under load (50 clients starting on 2 cores) both take a while.
CLIENT_START_TIMEOUT = 130.0
MOMO_DEPLOY_TIMEOUT = 90.0
MOMO_ATTEMPTS = 3
DEPLOYMENT = "deployment"
ALLOCATION = "allocation"


class ReceiveParams(BaseModel):
    """The prototype's /receive form fields, typed; `name` is mlfo's addition."""

    model_config = ConfigDict(extra="forbid")

    ipstart: int | None = Field(None, ge=0, le=255)
    cohortsize: int = Field(1, ge=1, le=10_000)
    sameserver: StrictBool = False
    avgalgo: str | None = None
    fracfit: float | None = Field(None, gt=0, le=1)
    minfit: int | None = Field(None, ge=1, le=10_000)
    minav: int | None = Field(None, ge=1, le=10_000)
    numround: int | None = Field(None, ge=1, le=10_000)
    name: str | None = Field(None, max_length=NAME_MAX, pattern=NAME_PATTERN)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    roundtimeout: float | None = Field(None, gt=0, le=86_400)

    @field_validator("minfit", "minav")
    @classmethod
    def _fits_the_cohort(cls, value: int | None, info: ValidationInfo) -> int | None:
        # A shared server also counts the previous cohort's clients, so only a cohort of its own is bounded.
        size, shared = info.data.get("cohortsize"), info.data.get("sameserver")
        if value is not None and size is not None and not shared and value > size:
            raise ValueError(f"{value} exceeds cohortsize={size}: the run could never start")
        return value

    @field_validator("sameserver", mode="before")
    @classmethod
    def _form_bool(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        return value


def _client(cls: type, address: str, config: Config, *, timeout: float | None = None, retries: int = 2) -> Any:
    """A southbound client with the southbound token; `timeout` defaults to api.timeout_seconds."""
    return cls(address, token=config.southbound_token, timeout=timeout or config.api.timeout_seconds, retries=retries)


class CampusMlfo:
    """Receives user intents, asks the cloud MLFO for an FL server, starts the cohort's clients."""

    def __init__(self, config: Config, store: Store, catalog: Catalog | None = None) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog or Catalog.load(config.mlfo.catalog)
        self.metrics = MlfoMetrics("campus")
        self.metrics.add(DeploymentStates(self.deployments))
        self._lock = threading.Lock()
        self._admission = threading.Lock()
        # Starting a client starts a Python process that imports Flower: a few at a time, machine-wide.
        self._start_slots = threading.BoundedSemaphore(config.mlfo.start_concurrency)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._restarting: set[tuple[str, int]] = set()
        self._recover()

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
        deployment_id = uuid.uuid4().hex[:12]
        name = params.name or safe_name(intent.intentID)
        memory_mb = self._memory_estimate(params.cohortsize, params.sameserver)
        now = time.time()
        record = {
            "id": deployment_id,
            "name": name,
            "intent_id": intent.intentID,
            "intent": intent.model_dump(),
            "pipeline": pipeline.to_dict(),
            "params": {
                "ipstart": ipstart,
                "cohortsize": params.cohortsize,
                "sameserver": params.sameserver,
                "strategy": strategy,
                "fraction_fit": params.fracfit or fl.fraction_fit,
                "min_fit": params.minfit or fl.min_fit,
                "min_available": params.minav or fl.min_available,
                "rounds": params.numround or fl.rounds,
                # None: the agents use their own fl.seed / fl.round_timeout.
                "seed": params.seed,
                "round_timeout": params.roundtimeout,
            },
            "state": "planned",
            "reason": None,
            "created": now,
            "updated": now,
            "server": None,
            "clients": [{"agent": a, "part": i, "state": "planned", "error": None} for i, a in enumerate(clients)],
            "rounds": [],
            "orchestration_seconds": None,
            "finished": None,
            "memory_mb": memory_mb,
        }
        with self._admission:
            self._admit(name, memory_mb, params.cohortsize, params.sameserver)
            self._save(record)
        self._spawn(self._deploy, deployment_id)
        return {"id": deployment_id, "state": "planned", "name": record["name"]}

    # --- a running deployment stopped ----------------------------------------------------------
    def stop_deployment(self, deployment_id: str) -> dict[str, Any]:
        """End a running deployment now: its clients and server stop, it shows failed, 'stopped on request'."""
        record = self.deployment(deployment_id)
        if record["state"] != "running":
            raise ConflictError(f"deployment {deployment_id} is {record['state']}: only a running deployment stops",
                                hint="a deploying one can be stopped once it runs")
        self._finish(deployment_id, "failed", "stopped on request")
        return {"deployment": deployment_id, "state": self.deployment(deployment_id)["state"]}

    # --- a lost client started again ---------------------------------------------------------
    def restart_client(self, deployment_id: str, part: int) -> dict[str, Any]:
        """Start a new SuperNode for client `part` of a running deployment whose SuperNode is gone (lost).

        It joins the running FL server; Flower samples it from the next round on."""
        record = self.deployment(deployment_id)
        client = next((c for c in record["clients"] if c["part"] == part), None)
        if client is None:
            raise NotFoundError(f"deployment {deployment_id} has no client part {part} (parts 0-{len(record['clients']) - 1})")
        if record["state"] != "running":
            raise ConflictError(f"deployment {deployment_id} is {record['state']}: only a running deployment's clients restart")
        with self._lock:
            if client["state"] != "lost" and client["state"] != "failed":
                raise ConflictError(f"client part {part} is {client['state']}: only a lost or failed client restarts",
                                    hint="wait until the MLFO sees it lost (GET /deployments/ID)")
            if (deployment_id, part) in self._restarting:
                raise ConflictError(f"client part {part} is already being restarted")
            self._restarting.add((deployment_id, part))
        requested = time.time()
        agent = _client(AgentClient, client["agent"], self.config, timeout=max(self.config.api.timeout_seconds, CLIENT_START_TIMEOUT))
        try:
            answer = agent.start_client(_client_fields(record, part, record["server"]["server"]))
        finally:
            agent.close()
            with self._lock:
                self._restarting.discard((deployment_id, part))
        with self._lock:
            record = self.deployment(deployment_id)
            client = record["clients"][part]
            earlier = {k: client.get(k) for k in ("name", "pid", "lost_at", "lost_reason", "error")}
            client.update(state="running", name=answer.get("client"), pid=answer.get("pid"), since=time.time(),
                          error=None, lost_at=None, lost_reason=None,
                          restarts=[*client.get("restarts", []), {**earlier, "restarted_at": requested}])
            self._save(record)
        log.info("client part %d of %s restarted on %s", part, deployment_id, client["agent"])
        return {"deployment": deployment_id, "part": part, "agent": client["agent"], "client": client["name"],
                "pid": client["pid"], "seconds": round(time.time() - requested, 3)}

    # --- admission: refuse what the machine cannot hold -------------------------------------
    def _memory_estimate(self, cohortsize: int, sameserver: bool) -> int:
        cfg = self.config.mlfo
        return cohortsize * cfg.client_memory_mb + (0 if sameserver else cfg.server_memory_mb)

    def _admit(self, name: str, need_mb: int, cohortsize: int, sameserver: bool) -> None:
        """Refuse a cohort whose estimated memory exceeds what is left (measured per-client costs)."""
        cfg = self.config.mlfo
        if cfg.client_memory_mb == 0:
            return
        starting = [r for r in self.deployments() if r["state"] in ("planned", "deploying")]
        promised = sum(int(r.get("memory_mb") or 0) for r in starting)
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

    # --- deployments -------------------------------------------------------------------------
    def deployments(self) -> list[dict[str, Any]]:
        return self.store.all(DEPLOYMENT)

    def deployment_page(self, *, limit: int = 100, offset: int = 0, state: str | None = None,
                        summary: bool = False) -> dict[str, Any]:
        """The newest `limit` deployments (after skipping `offset` newer ones), oldest first, of one state if given."""
        records = [r for r in self.store.all(DEPLOYMENT) if state is None or r["state"] == state]
        end = len(records) - offset
        page = records[max(0, end - limit): max(0, end)]
        if summary:
            page = [_summary(r) for r in page]
        return {"deployments": page, "total": len(records), "limit": limit, "offset": offset}

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        record = self.store.get(DEPLOYMENT, deployment_id)
        if record is None:
            raise NotFoundError(f"no deployment '{deployment_id}'")
        return record

    def _save(self, record: dict[str, Any]) -> None:
        record["updated"] = time.time()
        self.store.put(DEPLOYMENT, record["id"], record, record["created"])

    def _update(self, deployment_id: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            record = self.deployment(deployment_id)
            record.update(changes)
            self._save(record)
            return record

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"{target.__name__}-{args[0]}")
        self._threads.append(thread)
        thread.start()

    def _recover(self) -> None:
        """After a restart: resume watching running deployments, fail the half-deployed ones."""
        for record in self.store.all(DEPLOYMENT):
            if record["state"] == "running":
                self._spawn(self._watch, record["id"])
            elif record["state"] in ("planned", "deploying"):
                record.update(state="failed", reason="the MLFO restarted while deploying; send the intent again")
                self._save(record)
                # What the half-made deployment holds (a cloud allocation, SuperLink, SuperNodes) is freed.
                self._spawn(self._abandon, record["id"])

    # --- the deployment itself -----------------------------------------------------------------
    def _deploy(self, deployment_id: str) -> None:
        started = time.monotonic()
        record = self._update(deployment_id, state="deploying")
        params, pipeline = record["params"], record["pipeline"]
        try:
            constraints = MomoConstraints(
                sourcekind=pipeline["source"],
                modelkind=pipeline["model"],
                avgalgo=params["strategy"],
                fracfit=params["fraction_fit"],
                minfit=params["min_fit"],
                minav=params["min_available"],
                numround=params["rounds"],
                sameserv=params["sameserver"],
                deployment=deployment_id,
                cohort=record["name"],
                seed=params.get("seed"),
                roundtimeout=params.get("round_timeout"),
            )
            momo = build_momo_intent(record["intent_id"], _pipeline(pipeline), constraints)
            server = self._momo_deploy(momo.model_dump())
            self._update(deployment_id, server=server)
            clients = record["clients"]
            self._start_clients(deployment_id, record, server["server"], started)
            failed = [c for c in clients if c["state"] == "failed"]
            usable = len(clients) - len(failed)
            elapsed = time.monotonic() - started
            log.info("HTTP Intent took %.3f s (deployment %s)", elapsed, deployment_id)
            if usable < params["min_available"]:
                raise MlfoError(
                    f"only {usable} of {len(clients)} clients started, the run needs {params['min_available']}: "
                    + "; ".join(f"{c['agent']}: {c['error']}" for c in failed)
                )
            self.metrics.orchestration.labels("campus").observe(elapsed)
            ready = [c["ready_seconds"] for c in clients if c.get("ready_seconds") is not None]
            self._update(deployment_id, state="running", orchestration_seconds=elapsed, client_ready_seconds=spread(ready))
        except MlfoError as err:
            self._finish(deployment_id, "failed", err.message)
            return
        except Exception as err:  # never let a deployment thread die silently
            log.exception("deployment %s failed", deployment_id)
            self._finish(deployment_id, "failed", f"internal error: {err}")
            return
        self._watch(deployment_id)

    def _momo_deploy(self, momo: dict[str, Any]) -> dict[str, Any]:
        """Ask the cloud MLFO for an FL server; a lost answer is asked again (deploy is idempotent per deployment)."""
        cloud = _client(MomoClient, self.config.mlfo.cloud, self.config,
                        timeout=max(self.config.api.timeout_seconds, MOMO_DEPLOY_TIMEOUT))
        try:
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
        finally:
            cloud.close()
        raise AssertionError("unreachable")

    def _start_clients(self, deployment_id: str, record: dict[str, Any], server: str, started: float) -> None:
        """Start the cohort's clients through a machine-wide pool; record when each one was up."""
        clients = record["clients"]
        timeout = max(self.config.api.timeout_seconds, CLIENT_START_TIMEOUT)

        def start_one(client: dict[str, Any]) -> None:
            with self._start_slots:
                if self._stopping.is_set():
                    client["state"], client["error"] = "failed", "the MLFO is stopping"
                    return
                agent = _client(AgentClient, client["agent"], self.config, timeout=timeout)
                try:
                    answer = agent.start_client(_client_fields(record, client["part"], server))
                    client.update(state="running", name=answer.get("client"), pid=answer.get("pid"), since=time.time(),
                                  ready_seconds=round(time.monotonic() - started, 3))
                except MlfoError as err:
                    client["state"], client["error"] = "failed", err.message
                finally:
                    agent.close()
            self._update(deployment_id, clients=clients)

        with ThreadPoolExecutor(max_workers=self.config.mlfo.start_concurrency, thread_name_prefix="start") as pool:
            list(pool.map(start_one, clients))

    def _check_clients(self, deployment_id: str) -> None:
        """Ask each client's agent about its SuperNode; a gone one (or a silent agent) shows `lost`."""
        clients = self.deployment(deployment_id)["clients"]
        timeout = min(self.config.api.timeout_seconds, self.config.mlfo.lost_after_seconds / 2)

        def check(client: dict[str, Any]) -> None:
            if client["state"] not in ("running", "lost") or client.get("lost_reason") == "exited":
                return
            agent = _client(AgentClient, client["agent"], self.config, timeout=timeout, retries=0)
            try:
                status = agent.status()
            except MlfoError as err:
                silent_since = client.setdefault("silent_since", time.time())
                if time.time() - silent_since >= self.config.mlfo.lost_after_seconds and client["state"] != "lost":
                    client.update(state="lost", lost_at=time.time(), lost_reason="unreachable",
                                  error=f"its agent has not answered for {time.time() - silent_since:.0f} s: {err.message}")
                return
            finally:
                agent.close()
            client.pop("silent_since", None)
            mine = next((c for c in status.get("clients", []) if c.get("name") == client.get("name")), None)
            if mine is None:
                client.update(state="lost", lost_at=time.time(), lost_reason="exited",
                              error="its agent no longer runs this client (agent restarted?)")
            elif mine.get("state") != "running":
                client.update(state="lost", lost_at=time.time(), lost_reason="exited",
                              error=f"its SuperNode exited with code {mine.get('returncode')}: {mine.get('log_tail') or ''}".strip())
            elif client["state"] == "lost":
                client.update(state="running", error=None, lost_at=None, lost_reason=None)

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="check") as pool:
            list(pool.map(check, clients))
        with self._lock:
            record = self.deployment(deployment_id)
            if record["state"] in TERMINAL_STATES:
                return
            # A client restarted while the agents were asked keeps its new record.
            record["clients"] = [checked if checked.get("name") == fresh.get("name") else fresh
                                 for checked, fresh in zip(clients, record["clients"])]
            self._save(record)

    def _watch(self, deployment_id: str) -> None:
        """Follow the FL run on the server's agent until it ends; record rounds and lost clients as they come."""
        cfg = self.config.mlfo
        last_contact = time.monotonic()
        next_client_check = time.monotonic() + cfg.client_check_seconds
        timeout = min(self.config.api.timeout_seconds, cfg.lost_after_seconds / 2)
        while not self._stopping.wait(cfg.poll_seconds):
            record = self.deployment(deployment_id)
            if record["state"] in TERMINAL_STATES:
                return
            agent = _client(AgentClient, record["server"]["agent"], self.config, timeout=timeout, retries=0)
            try:
                status = agent.status()
                last_contact = time.monotonic()
            except MlfoError as err:
                silent = time.monotonic() - last_contact
                if silent >= cfg.lost_after_seconds:
                    self._finish(deployment_id, "failed",
                                 f"lost contact with the FL server's agent {record['server']['agent']} for {silent:.0f} s: {err.message}")
                    return
                continue
            finally:
                agent.close()
            server = status.get("server") or {}
            if server.get("address") != record["server"]["server"]:
                self._finish(deployment_id, "failed", "the FL server is no longer running on its agent")
                return
            rounds = server.get("rounds", [])
            short = [r["round"] for r in rounds if r.get("sampled") is not None and r.get("results", 0) < r["sampled"]]
            self._update(deployment_id, rounds=rounds, initial=server.get("initial"), traffic=server.get("traffic"),
                         short_rounds=short)
            if time.monotonic() >= next_client_check:
                self._check_clients(deployment_id)
                next_client_check = time.monotonic() + cfg.client_check_seconds
            if server.get("state") in TERMINAL_STATES:
                self._finish(deployment_id, server["state"], server.get("reason"))
                return

    def _finish(self, deployment_id: str, state: str, reason: str | None) -> None:
        with self._lock:
            record = self.deployment(deployment_id)
            if record["state"] in TERMINAL_STATES:
                return  # ended already (stopped on request while its watcher looked): the first end stands
            record.update(state=state, reason=reason, finished=time.time())
            self._save(record)
        log.info("deployment %s %s%s", deployment_id, state, f": {reason}" if reason else "")
        # Stop this deployment's FL processes and free the server (best effort).
        for client in record["clients"]:
            if client["state"] in ("running", "lost"):
                agent = _client(AgentClient, client["agent"], self.config)
                try:
                    agent.stop(deployment_id)
                except MlfoError as err:
                    log.warning("could not stop client %s: %s", client["agent"], err.message)
                finally:
                    agent.close()
        if record.get("server"):
            cloud = _client(MomoClient, self.config.mlfo.cloud, self.config)
            try:
                cloud.release(deployment_id)
            except MlfoError as err:
                log.warning("could not release the FL server of %s: %s", deployment_id, err.message)
            finally:
                cloud.close()

    def _abandon(self, deployment_id: str) -> None:
        """Stop whatever a deployment interrupted by a restart may have started, and free its server."""
        record = self.deployment(deployment_id)
        for client in record["clients"]:
            if client["state"] == "planned":
                continue
            agent = _client(AgentClient, client["agent"], self.config, retries=0)
            try:
                agent.stop(deployment_id)
            except MlfoError as err:
                log.warning("could not stop client %s of %s: %s", client["agent"], deployment_id, err.message)
            finally:
                agent.close()
        cloud = _client(MomoClient, self.config.mlfo.cloud, self.config)
        try:
            cloud.release(deployment_id)
        except NotFoundError:
            pass  # the cloud never allocated a server for it
        except MlfoError as err:
            log.warning("could not release the FL server of %s: %s", deployment_id, err.message)
        finally:
            cloud.close()

    def close(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=10)


def _client_fields(record: dict[str, Any], part: int, server: str) -> dict[str, Any]:
    """The agent's /cli fields for client `part` of a deployment."""
    params, pipeline = record["params"], record["pipeline"]
    return {"source": pipeline["source"], "model": pipeline["model"], "server": server, "cohsize": params["cohortsize"],
            "part": part, "deployment": record["id"], "cohort": record["name"], "seed": params.get("seed")}


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    rounds = record.get("rounds") or []
    return {
        **{k: record.get(k) for k in ("id", "name", "intent_id", "state", "reason", "created", "updated", "finished")},
        "clients": len(record.get("clients", [])),
        "rounds": len(rounds),
        "accuracy": rounds[-1].get("accuracy") if rounds else None,
    }


def _pipeline(data: dict[str, Any]) -> Pipeline:
    return Pipeline(**data)


class CloudMlfo:
    """Allocates FL servers from the configured pool for Mo-Mo intents and starts them."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self._lock = threading.Lock()
        self.metrics = MlfoMetrics("cloud")

    def allocations(self) -> list[dict[str, Any]]:
        return self.store.all(ALLOCATION)

    def deploy(self, momo: Any) -> dict[str, Any]:
        """Pick a free server (or the previous cohort's with sameserv), start it, return its address."""
        intent, constraints = parse_momo_intent(momo)
        deployment = constraints.deployment or uuid.uuid4().hex[:12]
        if constraints.sameserv:
            return self._share(deployment)
        with self._lock:
            earlier = self.store.get(ALLOCATION, deployment)
        if earlier is not None and earlier["active"]:
            # The same deployment asked again (its first answer was lost): the same server, never a second one.
            return {"server": self._server_of(deployment), "agent": earlier["agent"], "shared_with": earlier.get("shares")}
        with self._lock:
            busy = {a["agent"] for a in self.allocations() if a["active"]}
            picked = free_server(self.config.server_agents(), busy)
            if picked is None:
                raise ConflictError(f"all {len(self.config.server_agents())} FL servers of the pool are busy",
                                    hint="wait for a cohort to finish or add servers to ip_plan.servers")
            agent_address = picked
            record: dict[str, Any] = {"deployment": deployment, "agent": agent_address, "server": None, "active": True,
                      "intent_id": intent.intentID, "created": time.time(), "shares": None}
            self.store.put(ALLOCATION, deployment, record, record["created"])
        agent = _client(AgentClient, agent_address, self.config)
        started = time.monotonic()
        try:
            answer = agent.start_server(
                {
                    "algo": constraints.avgalgo,
                    "fracfit": constraints.fracfit,
                    "minfit": constraints.minfit,
                    "minav": constraints.minav,
                    "numround": constraints.numround,
                    "source": constraints.sourcekind,
                    "model": constraints.modelkind,
                    "deployment": deployment,
                    "cohort": constraints.cohort,
                    "seed": constraints.seed,
                    "roundtimeout": constraints.roundtimeout,
                }
            )
        except BaseException as err:
            # Whatever went wrong, the server is not this deployment's: free the allocation.
            record["active"] = False
            self.store.put(ALLOCATION, deployment, record, record["created"])
            if isinstance(err, ValidationError):
                raise
            if isinstance(err, MlfoError):
                raise RemoteError(f"FL server agent {agent_address} failed: {err.message}", status=502) from None
            raise
        finally:
            agent.close()
        log.info("MoMo Intent took %.3f s (deployment %s -> %s)", time.monotonic() - started, deployment, answer["server"])
        record["server"] = answer["server"]
        self.store.put(ALLOCATION, deployment, record, record["created"])
        return {"server": answer["server"], "agent": agent_address, "shared_with": None, "pid": answer.get("pid")}

    def _share(self, deployment: str) -> dict[str, Any]:
        """Give `deployment` the server of the most recent active allocation (sameserver)."""
        with self._lock:
            previous = [a for a in self.allocations() if a["active"]]
            if not previous:
                raise ConflictError("sameserver asked to share the previous cohort's server, but none is active")
            shared = previous[-1]
            record = {**shared, "deployment": deployment, "shares": shared["deployment"], "created": time.time()}
            self.store.put(ALLOCATION, deployment, record, record["created"])
        # The shared server may still be starting: its address comes when its agent answers.
        record["server"] = self._server_of(shared["deployment"])
        self.store.put(ALLOCATION, deployment, record, record["created"])
        return {"server": record["server"], "agent": shared["agent"], "shared_with": shared["deployment"]}

    def _server_of(self, deployment: str, timeout: float = 120.0) -> str:
        """The server address of an allocation, waiting while its agent is still starting it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.store.get(ALLOCATION, deployment) or {}
            if record.get("server"):
                return str(record["server"])
            if not record.get("active"):
                break
            time.sleep(0.2)
        raise ConflictError(f"the server of deployment {deployment} to share did not start")

    def release(self, deployment: str) -> dict[str, Any]:
        """Mark a deployment's server free; stop it when no other active deployment shares it."""
        with self._lock:
            record = self.store.get(ALLOCATION, deployment)
            if record is None:
                raise NotFoundError(f"no allocation for deployment '{deployment}'")
            record["active"] = False
            self.store.put(ALLOCATION, deployment, record, record["created"])
            still_used = [a for a in self.allocations() if a["active"] and a["agent"] == record["agent"]]
            owner = record  # a shared server runs under the deployment that asked for it first
            while owner.get("shares"):
                owner = self.store.get(ALLOCATION, owner["shares"]) or {}
        stopped = False
        if not still_used:
            agent = _client(AgentClient, record["agent"], self.config)
            try:
                # Only this deployment's server: once the allocation is free the agent may already run the
                # next deployment's, which a bare /stop would kill (seen as "no longer running on its agent").
                agent.stop(owner.get("deployment") or deployment)
                stopped = True
            except MlfoError as err:
                log.warning("could not stop FL server on %s: %s", record["agent"], err.message)
            finally:
                agent.close()
        return {"released": deployment, "stopped": stopped}

    def close(self) -> None:
        pass


def open_store(config: Config, role: str) -> Store:
    """The SQLite file of an MLFO role under paths.state_dir."""
    return Store(Path(config.paths.state_dir) / f"mlfo-{role}.sqlite3")

