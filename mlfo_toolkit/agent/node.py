"""The node agent: starts Flower SuperLinks (FL servers) and SuperNodes (FL clients) on request."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from mlfo_toolkit.agent.probes import probe_path
from mlfo_toolkit.config import Config, FlowerApp
from mlfo_toolkit.errors import CapacityError, ConflictError, MlfoError, ValidationError
from mlfo_toolkit.fl.control import RunControl, update_control
from mlfo_toolkit.fl.data import LOADERS
from mlfo_toolkit.fl.edge import edge_socket
from mlfo_toolkit.fl.executor import REGISTRATION_SUFFIX, Registration, Spawned, register, start_executor, unregister
from mlfo_toolkit.fl.models import MODEL_KINDS
from mlfo_toolkit.fl.partitions import KINDS, PartitionSpec
from mlfo_toolkit.fl.polls import tested_flower
from mlfo_toolkit.fl.strategies import canonical_strategy
from mlfo_toolkit.fl.userapps import app_name, app_run_config, check_model_form, is_app, prepare_app
from mlfo_toolkit.fl.wake import wake_dir
from mlfo_toolkit.monitoring.metrics import FlowTraffic, process_tree
from mlfo_toolkit.monitoring.sockets import SS_REUSE_SECONDS, ByteTotals, TcpConnection, socket_inodes, tcp_connections
from mlfo_toolkit.util.linux import FolderChanges
from mlfo_toolkit.util.names import NAME_MAX, OPTIONAL_NAME, SEED_MAX
from mlfo_toolkit.util.processes import ManagedProcess, find_tool, free_port, port_in_use, tool_env, wait_for_port
from mlfo_toolkit.util.resources import resource_path
from mlfo_toolkit.util.yamlfiles import Float, Int

log = logging.getLogger(__name__)

FEDERATION = "mlfo"
SUPERLINK_START_SECONDS = 60.0
# A SuperNode gives up when its SuperLink stays unreachable this long.
SUPERNODE_MAX_WAIT_SECONDS = 300
SUPERNODE_START_SECONDS = 120.0
SUPERNODE_SPAWN_SECONDS = 30.0
# How long a stopped FL server's last round stays in /metrics (Prometheus scrapes every few seconds).
ENDED_METRICS_SECONDS = 60.0
# A `/status` that waits for the next round (the MLFO's watch) is woken by inotify when the run's events file
# changes (or, without inotify, stats it every STATUS_LOOK_SECONDS), and looks at the server's processes every
# PROCESS_LOOK_SECONDS (a dead server is answered within it). Looking at the processes at every 50 ms stat made five
# waiting asks cost 0.06 cores of the agents' process; polling the file at all, 0.014.
STATUS_LOOK_SECONDS = 0.1
PROCESS_LOOK_SECONDS = 1.0
STATUS_MAX_WAIT_SECONDS = 30.0
# How long a stopped FL server's `flwr run` may take to end by itself when its run has finished (it streams the last logs).
SUBMITTER_FINISH_SECONDS = 5.0


class ServerStartParams(BaseModel):
    """What starts an FL server: the POST /serv form fields (the prototype's names; source/model/deployment added)."""

    model_config = ConfigDict(extra="forbid")

    # The prototype's five fields are required: a body that carries none of them (an empty or
    # truncated form) is refused, not run with defaults.
    algo: str = Field(max_length=64)
    fracfit: Float = Field(gt=0, le=1)
    minfit: Int = Field(ge=1, le=10_000)
    minav: Int = Field(ge=1, le=10_000)
    numround: Int = Field(ge=1, le=10_000)
    source: str = "handmnist"
    model: str = "complex"
    deployment: str = Field("", max_length=NAME_MAX, pattern=OPTIONAL_NAME)
    cohort: str = Field("", max_length=NAME_MAX, pattern=OPTIONAL_NAME)
    seed: Int | None = Field(None, ge=0, le=SEED_MAX, description="default: fl.seed")
    roundtimeout: Float | None = Field(None, gt=0, le=86_400, description="default: fl.round_timeout")
    tier: Literal["global", "edge"] = Field("global", description="edge: an edge aggregator's run (mlfo_toolkit.fl.edge)")
    localrounds: Int = Field(1, ge=1, le=1000, description="an edge run's local rounds per global round")


class ControlParams(BaseModel):
    """POST /control: changes to the running FL run of `deployment` (see mlfo_toolkit.fl.control)."""

    model_config = ConfigDict(extra="forbid")

    deployment: str = Field(max_length=NAME_MAX, pattern=OPTIONAL_NAME)
    exclude_nodes: list[Int] = Field(default_factory=list, max_length=10_000)
    fraction_fit: Float | None = Field(None, gt=0, le=1)
    min_fit: Int | None = Field(None, ge=1, le=10_000)
    min_available: Int | None = Field(None, ge=1, le=10_000)
    rounds: Int | None = Field(None, ge=1, le=10_000)
    stop: str | None = Field(None, min_length=1, max_length=300)
    hold: Int | None = Field(None, ge=0, le=10_000, description="rounds from this one on wait; 0: none")


class ClientStartParams(BaseModel):
    """What starts an FL client: the POST /cli form fields (the prototype's names; deployment and partitioning added)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    model: str
    server: str = Field(max_length=300)
    cohsize: Int = Field(ge=1, le=10_000)
    part: Int = Field(ge=0, le=10_000)
    deployment: str = Field("", max_length=NAME_MAX, pattern=OPTIONAL_NAME)
    cohort: str = Field("", max_length=NAME_MAX, pattern=OPTIONAL_NAME)
    partitioning: str | None = None
    seed: Int | None = Field(None, ge=0, le=SEED_MAX, description="default: fl.seed")
    partition: str | None = Field(None, max_length=1024, description="JSON PartitionSpec; default: fl.partitioning")
    relay: StrictBool = Field(False, description="the relay of this agent's edge run (mlfo_toolkit.fl.edge) to the global server")
    tier: Literal["global", "edge"] = Field("global", description="edge: a client of an edge aggregator (its traffic is counted so)")

    @field_validator("server")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("relay", mode="before")
    @classmethod
    def _form_bool(cls, value: Any) -> Any:
        # A form sends text: "true"/"false" (what requests makes of True/False too); anything else is refused.
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value


class ProbeParams(BaseModel):
    """POST /probe: measure the path from this agent to the agent of an FL server of the pool."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(max_length=300, description="HOST:PORT of an FL server's agent (ip_plan.servers)")
    bytes: Int = Field(4_000_000, ge=10_000, le=64 * 1024 * 1024, description="how much to download for the rate")

    @field_validator("target")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)


_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def check_address(value: str) -> str:
    """HOST:PORT with HOST an IP address ([v6] in brackets) or a hostname, PORT 1..65535 in ASCII digits
    (ValueError otherwise): a value like '--help:1' would reach Flower's command line as an option, and an
    unspecified, broadcast or multicast address is no server to connect to."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT with a port from 1 to 65535")
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        if literal is not host or not _HOSTNAME.match(host):
            raise ValueError(f"'{host[:64]}' is not an IP address or host name") from None
        return value
    if address.is_unspecified or address.is_multicast or (address.version == 4 and address == ipaddress.IPv4Address("255.255.255.255")):
        raise ValueError(f"'{host}' is not an address a client can connect to")
    if address.version == 6 and literal is host:
        raise ValueError("an IPv6 address is written in brackets: [ADDRESS]:PORT")
    return value


def reachable_host(bind: str) -> str:
    """The address to reach a service bound to `bind` at: all addresses (0.0.0.0 or empty) means loopback here."""
    return "127.0.0.1" if bind in ("0.0.0.0", "") else bind


def _check_pipeline(source: str, model: str, apps: dict[str, FlowerApp]) -> FlowerApp | None:
    """The registered Flower app the model names (None for a built-in model); ValidationError naming the field."""
    if source not in LOADERS:
        raise ValidationError(f"unknown dataset '{source}'", field="source", hint=f"known: {', '.join(LOADERS)}")
    check_model_form(model, MODEL_KINDS)
    if not is_app(model):
        return None
    name = app_name(model)
    if name not in apps:
        raise ValidationError(f"no Flower app '{name}' is registered on this agent", field="model",
                              hint=f"registered: {', '.join(apps) or 'none'}; add it under fl.apps in the agent's config")
    return apps[name]


def _last_number(work_dir: Path, prefix: str) -> int:
    numbers = [int(p.name.rsplit("-", 1)[1]) for p in work_dir.glob(f"{prefix}-*") if p.name.rsplit("-", 1)[1].isdigit()]
    return max(numbers, default=0)


@dataclass
class FlServer:
    """One SuperLink and the `flwr run` that submitted its FL run."""

    params: ServerStartParams
    address: str
    superlink: ManagedProcess | Spawned
    submitter: ManagedProcess | Spawned | None
    metrics_file: Path
    started: float = field(default_factory=time.time)
    wake_dir: Path | None = None  # the cohort's wake-up folder (mlfo_toolkit.fl.wake), removed with the server
    edge_inbox: Path | None = None  # an edge run's socket for its relay (mlfo_toolkit.fl.edge)
    registrations: list[Path] = field(default_factory=list)  # the shared executor's of what it forked for this server

    @property
    def control_file(self) -> Path:
        """Where the MLFO's changes to the running run go (read by mlfo's ServerApp between rounds)."""
        return self.metrics_file.with_name("control.json")

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.metrics_file.read_text().splitlines()
        except OSError:
            return []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line being written right now
        return events

    def status(self) -> dict[str, Any]:
        events = self.events()
        kept = ("round", "global_round", "loss", "accuracy", "time", "sampled", "results", "failures", "excluded", "held_seconds", "phases", "client_train_seconds",
                "settings")
        rounds = [{k: e[k] for k in kept if k in e} for e in events if e.get("event") == "round"]
        kinds = {e.get("event") for e in events}
        failure = next((e.get("reason") for e in events if e.get("event") == "failed"), None)
        state, reason = "running", None
        if "finished" in kinds:
            state = "done"
            reason = next((e.get("reason") for e in events if e.get("event") == "finished"), None)
        elif failure:
            state, reason = "failed", failure
        elif self.submitter is not None and self.submitter.returncode() not in (None, 0):
            state, reason = "failed", f"flwr run exited with {self.submitter.returncode()}: {self.submitter.tail(5)}"
        elif not self.superlink.running():
            state, reason = "failed", f"SuperLink exited with {self.superlink.returncode()}: {self.superlink.tail(5)}"
        elif "started" not in kinds:
            state = "starting"
        control = RunControl(self.control_file).read()
        return {
            "address": self.address,
            "deployment": self.params.deployment,
            "tier": self.params.tier,
            "strategy": self.params.algo,
            "rounds_total": control.rounds or self.params.numround,
            "state": state,
            "reason": reason,
            "rounds": [r for r in rounds if r["round"] > 0],
            "initial": next(({k: r[k] for k in ("loss", "accuracy", "time")} for r in rounds if r["round"] == 0), None),
            "pids": [self.superlink.pid] + ([self.submitter.pid] if self.submitter else []),
            "control": control.to_dict(),
        }

    def events_mark(self) -> tuple[int, int]:
        """Changes when the run's events file does (a round, the run's end): one stat."""
        try:
            seen = self.metrics_file.stat()
        except OSError:
            return (-1, 0)
        return (seen.st_size, seen.st_mtime_ns)

    def processes_mark(self) -> tuple[bool, int | None]:
        """Changes when the SuperLink or `flwr run` ends."""
        return (self.superlink.running(), self.submitter.returncode() if self.submitter else None)

    def stop(self) -> None:
        if self.submitter is not None:
            if any(e.get("event") == "finished" for e in self.events()):
                # The run is over: `flwr run` is streaming the ServerApp's last log lines (the app's own result among
                # them) and ends by itself; a stop right away cut them from flwr-run.log.
                deadline = time.monotonic() + SUBMITTER_FINISH_SECONDS
                while self.submitter.running() and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.submitter.stop()
        self.superlink.stop()
        for registration in self.registrations:
            unregister(registration.parent, registration.name.removesuffix(REGISTRATION_SUFFIX))
        if self.wake_dir is not None:
            shutil.rmtree(self.wake_dir, ignore_errors=True)


@dataclass
class FlClient:
    """One SuperNode serving partition `part` of a cohort."""

    params: ClientStartParams
    process: ManagedProcess | Spawned
    name: str
    runtime_port: int | None = None  # the Runtime API a shared executor polls (isolation: shared)
    started: float = field(default_factory=time.time)
    ready_seconds: float | None = None
    node_id: int | None = None  # its SuperNode's id at the SuperLink, once the SuperNode logged it

    def find_node_id(self) -> int | None:
        """The SuperNode's id (Flower logs "SuperNode ID: N" once it registered with its SuperLink)."""
        if self.node_id is None:
            match = _NODE_ID.search(self.process.tail(400))
            self.node_id = int(match.group(1)) if match else None
        return self.node_id

    def status(self) -> dict[str, Any]:
        running = self.process.running()
        return {
            "name": self.name,
            "node_id": self.find_node_id(),
            "deployment": self.params.deployment,
            "server": self.params.server,
            "part": self.params.part,
            "cohsize": self.params.cohsize,
            "state": "running" if running else "exited",
            "returncode": self.process.returncode(),
            "pid": self.process.pid,
            "ready_seconds": self.ready_seconds,
            "log_tail": None if running else self.process.tail(5),
        }


class NodeAgent:
    """The agent's core, callable from Python; `api()` wraps it in HTTP."""

    def __init__(self, config: Config, *, work_dir: Path, advertise_host: str | None = None) -> None:
        self.config = config
        self.work_dir = work_dir.resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        bind = config.agent.host
        self.advertise_host = advertise_host or reachable_host(bind)
        self._lock = threading.Lock()
        self.server: FlServer | None = None
        self.clients: list[FlClient] = []
        # Numbered after the folders an earlier agent in this work dir left: a restarted agent never
        # reuses a run folder, nor a client name the shared executor may still serve.
        self._runs = _last_number(self.work_dir, "server")
        self._client_runs = _last_number(self.work_dir, "client")
        self._executor: ManagedProcess | None = None
        self._starting = 0  # clients being started right now (not in self.clients yet)
        self._byte_totals: dict[tuple[str, str, int], ByteTotals] = {}
        # The last answer a waiting `status_after` gave: (its status_mark, loop time, answer).
        self._last_answer: tuple[tuple[Any, ...], float, dict[str, Any]] | None = None
        self._ended: list[tuple[float, str, str, dict[str, Any]]] = []  # stopped FL servers' last status, for /metrics
        # Unique among every agent that registers with one shared executor (host and folder).
        self._label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.advertise_host}-{self.work_dir.parent.name}-{self.work_dir.name}")
        self.app_dir = self.work_dir / "flwr-app"
        # Copied afresh each start: an agent of a newer mlfo must not submit an older app's run-config keys.
        shutil.copytree(resource_path("mlfo_toolkit/fl/app_template"), self.app_dir, dirs_exist_ok=True)

    # --- FL server ---------------------------------------------------------------------------
    def start_server(self, params: ServerStartParams) -> dict[str, Any]:
        """Start a SuperLink and submit the FL run; answer the address clients connect to."""
        params.algo = canonical_strategy(params.algo, "algo")
        app = _check_pipeline(params.source, params.model, self.config.fl.apps)
        if app is not None and params.tier == "edge":
            raise ValidationError("an edge aggregator runs mlfo's built-in models only", field="tier",
                                  hint="aggregate a registered Flower app flat (aggregation: flat)")
        with self._lock:
            if self.server is not None:
                current = self.server.status()
                if current["state"] in ("starting", "running"):
                    raise ConflictError(
                        f"an FL server is already running here ({current['address']}, deployment "
                        f"'{current['deployment']}')",
                        hint="POST /stop first, or ask the cloud MLFO for another server",
                    )
                self.server.stop()
                self.server = None
            self._runs += 1
            run_dir = self.work_dir / f"server-{self._runs}"
            run_dir.mkdir(parents=True, exist_ok=True)
            bind = self.config.agent.host
            connect = reachable_host(bind)
            # Picked now (agent.fl_server_port 0), not when the agent started: a port reserved early can be taken by any
            # listener bound to port 0 in between. One in use anyway is refused just below.
            port = self.config.agent.fl_server_port or free_port(bind)
            flwr_home = run_dir / "flwr-home"
            flwr_home.mkdir(exist_ok=True)
            (flwr_home / "config.toml").write_text(
                tomli_w.dumps(
                    {"superlink": {"default": FEDERATION, FEDERATION: {"address": f"{connect}:{port}", "insecure": True}}}
                )
            )
            env = tool_env({"FLWR_HOME": str(flwr_home)})
            if port_in_use(connect, port):
                # Not ours (ours were stopped above): never hand clients a SuperLink someone else runs.
                raise ConflictError(f"port {port} on {connect} is already in use by a process this agent did not start",
                                    hint="stop that process, or give this agent another --fl-port")
            # No --database: Flower keeps the SuperLink's state in memory, which rules out the
            # "database is locked" errors that lost messages at 50 clients.
            arguments = ["--insecure", "--host", bind, "--port", str(port), "--disable-runtime-dependency-installation"]
            # A registered app that misbehaves after a fork says so (isolation: subprocess): its ServerApp gets Flower's own processes.
            forked = ((app.isolation if app is not None else None) or self.config.fl.isolation) == "shared"
            superlink, registration = self._start_flower("superlink", f"{self._label}-server-{self._runs}", arguments,
                                                         f"{connect}:{port}", run_dir, run_dir / "superlink.log", env, forked)
            metrics_file = run_dir / "metrics.jsonl"
            server = FlServer(params, f"{self.advertise_host}:{port}", superlink, None, metrics_file)
            server.registrations.extend([registration] if registration else [])
            server.wake_dir = self._wake_dir(server.address)
            server.edge_inbox = edge_socket(run_dir) if params.tier == "edge" else None
            self.server = server
            try:
                wait_for_port(connect, port, SUPERLINK_START_SECONDS, superlink)
                app_dir, overrides = self._run_config(params, app, run_dir, metrics_file, server.control_file, server.wake_dir,
                                                      server.edge_inbox)
            except (MlfoError, OSError):  # a SuperLink that never got its run is no server to hand out
                server.stop()
                self.server = None
                raise
            run_config = run_dir / "run-config.toml"
            run_config.write_text(tomli_w.dumps(overrides))
            try:
                server.submitter, registration = self._start_flower(
                    "flwr-run", f"{self._label}-run-{self._runs}",
                    ["run", str(app_dir), FEDERATION, "--run-config", str(run_config), "--stream"], "", run_dir,
                    run_dir / "flwr-run.log", env, forked)
            except MlfoError:
                server.stop()
                self.server = None
                raise
            server.registrations.extend([registration] if registration else [])
            log.info("FL server %s started for deployment '%s'", server.address, params.deployment)
            return {"server": server.address, "deployment": params.deployment, "pid": superlink.pid}

    def _start_flower(self, kind: str, name: str, arguments: list[str], runtime: str, run_dir: Path, log_path: Path,
                      env: dict[str, str], forked: bool) -> tuple[ManagedProcess | Spawned, Path | None]:
        """Flower's SuperLink (kind "superlink", Runtime API at `runtime`) or `flwr ARGUMENTS` (kind "flwr-run"): forked by
        the network's shared executor into this host (Flower is imported there once; a SuperLink runs its ServerApp
        itself, mlfo_toolkit.fl.link) when `forked`, else a process of its own (a SuperLink with Flower's SuperExec)."""
        tool = "flower-superlink" if kind == "superlink" else "flwr"
        flwr_home = env["FLWR_HOME"]
        # Forked only on the Flower mlfo pins (its FL server reaches into Flower's SuperLink and ServerApp runtime);
        # on another, Flower's own processes run, as with fl.isolation subprocess.
        if forked and self.config.fl.executor_dir is not None and tested_flower():
            registration = register(self.registration_dir(), Registration(
                name, runtime, os.getpid(), flwr_home, str(log_path), cwd=str(run_dir), kind=kind,
                spawn=[*arguments, "--isolation", "process"] if kind == "superlink" else arguments,
                env={"FLWR_HOME": flwr_home, "FLWR_TELEMETRY_ENABLED": "0"},
            ))
            try:
                return Spawned.wait_started(self.registration_dir(), name, log_path, SUPERNODE_SPAWN_SECONDS, tool), registration
            except MlfoError:
                unregister(self.registration_dir(), name)
                raise
        process = ManagedProcess(tool if kind == "superlink" else "flwr run", [find_tool(tool), *arguments],
                                 log_path=log_path, env=env, cwd=run_dir, tied=True)
        return process, None

    def _wake_dir(self, superlink: str) -> Path | None:
        """The wake-up folder of the cohort whose SuperLink is `superlink`: its SuperNodes (forked by the shared
        executor) and its ServerApp wake each other there. None: Flower's own polls."""
        if not self.config.fl.wakeups:
            return None
        return wake_dir(self.registration_dir(), superlink)

    def _run_config(self, params: ServerStartParams, app: FlowerApp | None, run_dir: Path, metrics_file: Path,
                    control_file: Path, wakes: Path | None = None, edge_inbox: Path | None = None) -> tuple[Path, dict[str, Any]]:
        """The app folder to submit and its run-config overrides: mlfo's own app, or a registered one behind mlfo's host."""
        fl = self.config.fl
        seed = fl.seed if params.seed is None else params.seed
        timeout = params.roundtimeout or fl.round_timeout
        if app is not None:
            app_dir, own = prepare_app(app.path.resolve(), run_dir / "app")
            settings = {"rounds": params.numround, "fraction_fit": params.fracfit, "min_fit": params.minfit,
                        "min_available": params.minav, "local_epochs": fl.local_epochs, "learning_rate": fl.learning_rate,
                        "batch_size": fl.batch_size, "seed": seed, "strategy": params.algo}
            return app_dir, {
                **app_run_config(own, settings, app.run_config),
                "mlfo-metrics-file": str(metrics_file),
                "mlfo-control-file": str(control_file),
                "mlfo-num-rounds": params.numround,
                "mlfo-min-available": params.minav,
                "mlfo-round-timeout": float(timeout),
                "mlfo-server-poll-seconds": fl.server_poll_seconds,
                "mlfo-wake-dir": str(wakes or ""),
                "mlfo-accuracy-keys": ",".join(app.accuracy_keys),
                "mlfo-loss-keys": ",".join(app.loss_keys),
            }
        return self.app_dir, {
            "strategy": params.algo,
            "num-rounds": params.numround,
            "fraction-fit": params.fracfit,
            "min-fit": params.minfit,
            "min-available": params.minav,
            "source": params.source,
            "model": params.model,
            "local-epochs": fl.local_epochs,
            "learning-rate": fl.learning_rate,
            "batch-size": fl.batch_size,
            "proximal-mu": fl.proximal_mu,
            "seed": seed,
            "data-dir": str(fl.data_dir.resolve()),
            "metrics-file": str(metrics_file),
            "control-file": str(control_file),
            "round-timeout": timeout,
            "server-poll-seconds": fl.server_poll_seconds,
            "wake-dir": str(wakes or ""),
            "edge-inbox": str(edge_inbox or ""),
            "edge-rounds": params.localrounds,
        }

    # --- FL client ---------------------------------------------------------------------------
    def registration_dir(self) -> Path:
        """Where this agent registers its SuperNodes: the shared executor's folder, or its own."""
        shared = self.config.fl.executor_dir
        return Path(shared).resolve() if shared is not None else self.work_dir / "executor"

    def _ensure_executor(self) -> None:
        """Without a shared executor, run a private one (it stops when this agent's process ends)."""
        if self.config.fl.executor_dir is not None or (self._executor is not None and self._executor.running()):
            return
        self._executor = start_executor(self.registration_dir(), self.work_dir / "executor.log", parent_pid=os.getpid())

    def start_client(self, params: ClientStartParams) -> dict[str, Any]:
        """Start a SuperNode for partition `part` of `cohsize` that connects to `server`.

        Answers once the SuperNode is up (its Runtime API listens), so a caller that limits how many
        starts run at once really limits how many Python processes start at once.
        """
        app = _check_pipeline(params.source, params.model, self.config.fl.apps)
        if params.part >= params.cohsize:
            raise ValidationError(f"part {params.part} must be below cohsize {params.cohsize}", field="part")
        spec = self._partition(params)
        inbox = self._relay_inbox(params) if params.relay else None
        shared = ((app.isolation if app is not None else None) or self.config.fl.isolation) == "shared"
        requested = time.time()
        with self._lock:
            active = [c for c in self.clients if c.process.running()]
            if len(active) >= self.config.agent.max_clients:
                raise CapacityError(f"this agent already runs {len(active)} FL clients (agent.max_clients)",
                                    hint="stop some (POST /stop?deployment=ID) or raise agent.max_clients")
            self._client_runs += 1  # never reused, so no run folder is ever written twice
            self._starting += 1  # a stop of another deployment meanwhile must not take the executor away
            name = f"{self._label}-client-{self._client_runs}"
            run_dir = self.work_dir / f"client-{self._client_runs}"
            run_dir.mkdir(parents=True, exist_ok=True)
            seed = self.config.fl.seed if params.seed is None else params.seed
            node_config = " ".join(
                [
                    f"partition-id={params.part}",
                    f"num-partitions={params.cohsize}",
                    f'source="{params.source}"',
                    f'model="{params.model}"',
                    f'data-dir="{self.config.fl.data_dir.resolve()}"',
                    f"seed={seed}",
                    spec.node_config(seed),
                    *([f'edge-inbox="{inbox}"'] if inbox else []),
                ]
            )
            runtime_port = free_port()
            arguments = [
                "--insecure",
                "--superlink",
                params.server,
                "--host",
                "127.0.0.1",
                "--port",
                str(runtime_port),
                "--max-wait-time",
                str(SUPERNODE_MAX_WAIT_SECONDS),
                "--node-config",
                node_config,
            ]
            flwr_home = run_dir / "flwr-home"
            log_path = run_dir / "supernode.log"
            process: ManagedProcess | Spawned
            if shared:
                # The shared executor forks the SuperNode into this agent's host (namespace, cgroup):
                # Flower is imported once for all of them, and a start takes a fraction of a second.
                self._ensure_executor()
                register(self.registration_dir(), Registration(
                    name, f"127.0.0.1:{runtime_port}", os.getpid(), str(flwr_home), str(run_dir / "clientapp.log"),
                    watch=str(log_path), spawn=[*arguments, "--isolation", "process"], cwd=str(run_dir),
                    env={"FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0"},
                    poll_seconds=self.config.fl.supernode_poll_seconds, poll_hot_seconds=self.config.fl.supernode_hot_seconds,
                    wake_dir=str(self._wake_dir(params.server) or ""), node_key=self.config.fl.node_key,
                    clientapp_processes=self.config.fl.clientapp_processes,
                    dataset=[params.source, str(self.config.fl.data_dir.resolve())] if app is None else [],
                ))
            else:
                process = ManagedProcess(
                    f"flower-supernode part {params.part}", [find_tool("flower-supernode"), *arguments],
                    log_path=log_path, env=tool_env({"FLWR_HOME": str(flwr_home)}), cwd=run_dir, tied=True,
                )
        try:
            if shared:
                try:
                    process = Spawned.wait_started(self.registration_dir(), name, log_path, SUPERNODE_SPAWN_SECONDS)
                except MlfoError:
                    unregister(self.registration_dir(), name)
                    raise
            client = FlClient(params, process, name, runtime_port if shared else None, started=requested)
            with self._lock:
                self.clients.append(client)
        finally:
            with self._lock:
                self._starting -= 1
        try:
            wait_for_port("127.0.0.1", runtime_port, SUPERNODE_START_SECONDS, process)
        except MlfoError:
            self._stop_client(client)
            with self._lock:
                self.clients = [c for c in self.clients if c is not client]
            raise
        client.ready_seconds = round(time.time() - client.started, 3)
        log.info("FL client part %d/%d -> %s started", params.part, params.cohsize, params.server)
        return {"client": name, "pid": process.pid, "server": params.server, "ready_seconds": client.ready_seconds}

    def _relay_inbox(self, params: ClientStartParams) -> Path:
        """The socket of this agent's edge run of the same deployment, which a relay hands its rounds to."""
        with self._lock:
            server = self.server
        if server is None or server.edge_inbox is None or server.params.deployment != params.deployment:
            raise ConflictError(f"this agent runs no edge aggregator of deployment '{params.deployment}'",
                                hint="start the edge run first (POST /serv with tier=edge), then its relay")
        return server.edge_inbox

    def _partition(self, params: ClientStartParams) -> PartitionSpec:
        """How this client's cohort splits the data: the request's spec, else the config's (ValidationError naming the field)."""
        fl = self.config.fl
        try:
            if params.partition:
                return PartitionSpec.model_validate_json(params.partition)
            return PartitionSpec.configured(fl, params.partitioning)
        except pydantic.ValidationError as err:
            raise ValidationError(f"{err.errors()[0]['msg']}", field="partition" if params.partition else "partitioning",
                                  hint=f"partitioners: {', '.join(KINDS)}") from None

    def _stop_client(self, client: FlClient) -> None:
        client.process.stop()
        if client.runtime_port is not None:
            unregister(self.registration_dir(), client.name)

    # --- the running run changed -------------------------------------------------------------
    def control(self, params: ControlParams) -> dict[str, Any]:
        """Change the running FL run of a deployment: its ServerApp reads it before the next round."""
        with self._lock:
            server = self.server
        if server is None or server.params.deployment != params.deployment:
            raise ConflictError(f"this agent runs no FL server of deployment '{params.deployment}'")
        settings = update_control(server.control_file, params.model_dump(exclude={"deployment"}))
        log.info("deployment %s: run changed: %s", params.deployment, params.model_dump(exclude_none=True, exclude={"deployment"}))
        return {"deployment": params.deployment, "control": settings.to_dict()}

    # --- placement measurements --------------------------------------------------------------
    def probe(self, params: ProbeParams) -> dict[str, Any]:
        """The path from here to an FL server's agent (mlfo_toolkit.agent.probes). Only the FL server pool of this
        agent's config is a target: an agent is no tool to scan the network with, nor to hand its southbound token
        (which the probe's download carries) to another service."""
        allowed = set(self.config.server_agents())
        if params.target not in allowed:
            raise ValidationError(f"{params.target} is not an FL server of this network's pool", field="target",
                                  hint=f"FL servers: {', '.join(sorted(allowed)) or 'none'}")
        return probe_path(params.target, params.bytes, self.config.southbound_token)

    # --- status and stop ---------------------------------------------------------------------
    def status_mark(self, processes: bool = True) -> tuple[Any, ...]:
        """Changes when the answer of `status()` about the FL server may have: a waiting `/status` looks at it every
        STATUS_LOOK_SECONDS without the processes (a stat), every PROCESS_LOOK_SECONDS with them, and asks
        `status()` again only when it changed."""
        server = self.server
        if server is None:
            return (None,)
        return (id(server), *server.events_mark(), *(server.processes_mark() if processes else ()))

    def events_changes(self) -> tuple[FolderChanges, str] | None:
        """An inotify watch on the FL server's run folder, and the name of its events file there (the folder's other
        files, the SuperLink's log among them, change all through a round: only this one's changes count), for a
        waiting `/status`; None if there is no server or inotify is unavailable (then it stats every
        STATUS_LOOK_SECONDS)."""
        server = self.server
        if server is None:
            return None
        try:
            return FolderChanges(server.metrics_file.parent), server.metrics_file.name
        except OSError as err:
            log.debug("no inotify on %s (%s): a waiting /status polls", server.metrics_file.parent, err)
            return None

    async def status_after(self, rounds_after: int, wait: float) -> dict[str, Any]:
        """`status()` once the FL server has more than `rounds_after` rounds, its run ended or it is gone, or after
        `wait` seconds with what it has. The MLFO's watch waits here for the next round, so that its closed loop acts on
        each round as it ends rather than at its next poll. Waiting holds no thread: it is woken when the run's events
        file changes (inotify; else it stats the file every STATUS_LOOK_SECONDS), looks at the server's processes
        every PROCESS_LOOK_SECONDS, and computes `status()` again only when one of them changed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        watched = self.events_changes()  # before the first look: a change after it wakes the wait
        woken = asyncio.Event()
        if watched is not None:
            folder, events_file = watched

            def changed() -> None:
                if events_file in folder.drain():
                    woken.set()

            loop.add_reader(folder.fd, changed)
        try:
            events, whole = self.status_mark(processes=False), self.status_mark()
            last = self._last_answer
            if last is not None and last[0] == whole and loop.time() - last[1] < PROCESS_LOOK_SECONDS:
                # The watch asks again at once after an answer (a round's end, when the next round starts): nothing
                # changed since, so that answer stands, without reading the run's files again.
                answer = last[2]
            else:
                answer = await asyncio.to_thread(self.status)
            while not round_news(answer, rounds_after) and loop.time() < deadline:
                next_whole = loop.time() + PROCESS_LOOK_SECONDS
                while loop.time() < deadline and self.status_mark(processes=False) == events:
                    if loop.time() >= next_whole:
                        if self.status_mark() != whole:
                            break
                        next_whole = loop.time() + PROCESS_LOOK_SECONDS
                    look = PROCESS_LOOK_SECONDS if watched is not None else STATUS_LOOK_SECONDS
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), max(0.0, min(look, deadline - loop.time(), next_whole - loop.time())))
                    woken.clear()
                events, whole = self.status_mark(processes=False), self.status_mark()
                answer = await asyncio.to_thread(self.status)
            self._last_answer = (whole, loop.time(), answer)
            return answer
        finally:
            if watched is not None:
                loop.remove_reader(watched[0].fd)
                watched[0].close()

    def status(self) -> dict[str, Any]:
        # Only the FL server's traffic goes into the answer: a client-only agent need not sample sockets. The answer
        # that says the run ended is the MLFO's last look at its bytes, so it is sampled now: a sample up to
        # SS_REUSE_SECONDS old could miss the last round's updates.
        with self._lock:
            server = self.server.status() if self.server else None
        traffic = {}
        if server is not None:
            ended = server.get("state") in ("done", "failed")
            traffic = {(t.side, t.deployment): t for t in self.traffic(0.0 if ended else SS_REUSE_SECONDS)}
        with self._lock:
            if server is not None and ("server", server["deployment"]) in traffic:
                sample = traffic[("server", server["deployment"])]
                server["traffic"] = {"bytes_sent": sample.bytes_sent, "bytes_received": sample.bytes_received}
            return {"node": self.advertise_host, "server": server, "clients": [c.status() for c in self.clients]}

    def stop(self, deployment: str | None = None, part: int | None = None, edge_run: bool = False) -> dict[str, Any]:
        """Stop every FL process here, or only those of one deployment (only its client `part`, if given; only its
        edge aggregator, the edge run and its relay, with `edge_run`)."""
        with self._lock:
            stopped = []
            server_too = part is None and (not edge_run or (self.server is not None and self.server.params.tier == "edge"))
            if self.server is not None and deployment in (None, self.server.params.deployment) and server_too:
                # Its final round stays in /metrics a while, so that Prometheus scrapes it after the stop.
                self._ended.append((time.time(), self.server.params.deployment, self.server.params.cohort, self.server.status()))
                log.info("stopping FL server %s of deployment '%s' (asked to stop %s)", self.server.address,
                         self.server.params.deployment, f"deployment '{deployment}'" if deployment else "everything")
                self.server.stop()
                stopped.append(self.server.address)
                self.server = None
            keep = []
            for client in self.clients:
                # A relay's part is its edge's number among the global server's clients, not a data part.
                mine = client.params.relay if edge_run else (part is None or (client.params.part == part and not client.params.relay))
                if deployment in (None, client.params.deployment) and mine:
                    self._stop_client(client)
                    stopped.append(f"client part {client.params.part}")
                else:
                    keep.append(client)
            self.clients = keep
            if not keep and not self._starting and self._executor is not None:
                # A private executor serves only this agent's clients: none left, nothing to serve.
                self._executor.stop()
                self._executor = None
            return {"stopped": stopped}

    def close(self) -> None:
        """Stop every FL process (and with the last client, this agent's own executor)."""
        self.stop()

    # --- HTTP --------------------------------------------------------------------------------
    # --- traffic and metrics ------------------------------------------------------------------
    def _flows(self) -> list[tuple[str, str, str, int, Any, str]]:
        """(side, deployment, cohort, root PID, connection filter, tier) of every FL process here."""
        out: list[tuple[str, str, str, int, Any, str]] = []
        if self.server is not None:
            port = int(self.server.address.rsplit(":", 1)[1])

            def server_side(c: TcpConnection, sockets: set[int], every: list[TcpConnection]) -> bool:
                # The SuperLink's end of a client's connection; its own ServerApp's connections are internal.
                return c.local_port == port and not any(o.local == c.peer and o.inode in sockets for o in every)

            out.append(("server", self.server.params.deployment, self.server.params.cohort, self.server.superlink.pid, server_side,
                        self.server.params.tier))
        for client in self.clients:

            def client_side(c: TcpConnection, sockets: set[int], every: list[TcpConnection], target: str = client.params.server) -> bool:
                return c.peer == target

            out.append(("client", client.params.deployment, client.params.cohort, client.process.pid, client_side, client.params.tier))
        return out

    def traffic(self, max_age: float = SS_REUSE_SECONDS) -> list[FlowTraffic]:
        """Sample the FL connections (ss, at most `max_age` s old): current TCP state and bytes accumulated over the run."""
        with self._lock:
            flows = self._flows()
        connections = tcp_connections(max_age)
        samples = []
        for side, deployment, cohort, pid, mine, tier in flows:
            tree = process_tree(pid)
            sockets = socket_inodes({p.pid for p in tree})
            chosen = [c for c in connections if c.inode in sockets and mine(c, sockets, connections)]
            totals = self._byte_totals.setdefault((side, deployment, pid), ByteTotals())
            sent, received = totals.update(chosen)
            samples.append(FlowTraffic(side, deployment, cohort, chosen, sent, received, tree, tier))
        return samples

    def runs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(deployment, cohort, status) of the FL server here, and of those stopped in the last ENDED_METRICS_SECONDS."""
        with self._lock:
            server = self.server
            self._ended = [e for e in self._ended if time.time() - e[0] < ENDED_METRICS_SECONDS]
            ended = [(deployment, cohort, status) for _, deployment, cohort, status in self._ended]
        current = [(server.params.deployment, server.params.cohort, server.status())] if server else []
        latest = {deployment: (deployment, cohort, status) for deployment, cohort, status in [*ended, *current]}
        return list(latest.values())  # one entry per deployment: Prometheus refuses a series twice


def round_news(answer: dict[str, Any], rounds_after: int) -> bool:
    """Whether an agent's `status()` answer has what a watch waiting after round `rounds_after` waits for: a later
    round, the run's end, or no FL server at all."""
    server = answer.get("server")
    if not server:
        return True
    return server.get("state") in ("done", "failed") or len(server.get("rounds") or []) > rounds_after
