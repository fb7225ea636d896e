"""The loopback backend: every piece of the chain on 127.0.0.1, in this process's care, no root.

A cloud and a campus MLFO, a node agent per FL server and per FL client (in-process HTTP servers on
ports of their own) and, with `fl.isolation: shared`, one ClientApp executor for every client. The
Prometheus targets are written for `mlfo monitor up`. Leaving the block stops all of it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mlfo_toolkit.agent.node import NodeAgent
from mlfo_toolkit.backends.base import BackendKind, StartedBackend
from mlfo_toolkit.config import Config
from mlfo_toolkit.fl.executor import start_executor
from mlfo_toolkit.http.agent_routes import agent_app
from mlfo_toolkit.http.routes import campus_app, cloud_app
from mlfo_toolkit.http.server import HttpServer, close_all
from mlfo_toolkit.monitoring.prometheus import write_targets
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.cloud import CloudMlfo
from mlfo_toolkit.orchestrator.store import Store, open_store
from mlfo_toolkit.util.processes import ManagedProcess

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


class LoopbackBackend(StartedBackend):
    """`servers` FL server agents and `clients` FL client agents on loopback, with both MLFOs."""

    kind: BackendKind = "loopback"

    def __init__(self, config: Config, work_dir: Path, *, servers: int, clients: int) -> None:
        self.config = config
        self.work_dir = work_dir
        self.servers, self.clients = servers, clients
        self.campus = ""
        self.http: list[HttpServer] = []
        self.agents: list[NodeAgent] = []
        self.cores: list[CampusMlfo | CloudMlfo] = []
        self.stores: list[Store] = []
        self.target_files: list[Path] = []
        self.executor: ManagedProcess | None = None
        self._labels: list[tuple[str, str, str]] = []

    def _agent(self, name: str, fl_port: int, role: str, servers: list[str] | None = None) -> str:
        # A client agent knows the FL server agents: the only targets of its placement probes (POST /probe).
        config = self.config.with_overrides({"agent.host": LOOPBACK, "agent.port": 0, "agent.fl_server_port": fl_port,
                                             **({"ip_plan.servers": servers} if servers else {})})
        agent = NodeAgent(config, work_dir=self.work_dir / "nodes" / name)
        self.agents.append(agent)
        server = HttpServer(agent_app(agent), LOOPBACK, 0, threads=4).start()
        self.http.append(server)
        self._labels.append((server.address, role, name))
        return server.address

    def start(self) -> None:
        if self.config.fl.isolation == "shared":
            # One executor runs the ClientApps of every client agent here; it stops by itself (and its
            # SuperNodes with it) if this process is killed.
            executor_dir = self.work_dir / "executor"
            self.executor = start_executor(executor_dir, self.work_dir / "executor.log", parent_pid=os.getpid())
            self.config = self.config.with_overrides({"fl.executor_dir": str(executor_dir)})
        # Port 0: each FL server agent picks its SuperLink's port when it starts one (a port reserved
        # now could be bound by another listener before then).
        server_agents = [self._agent(f"fed.{n + 1}", 0, "fl-server") for n in range(self.servers)]
        client_agents = [self._agent(f"fc.{n + 1}", 0, "fl-client", server_agents) for n in range(self.clients)]
        state_dir = self.work_dir / "state"
        cloud_config = self.config.with_overrides({"ip_plan.servers": server_agents, "paths.state_dir": str(state_dir)})
        cloud_store = open_store(cloud_config, "cloud")
        self.stores.append(cloud_store)
        cloud = CloudMlfo(cloud_config, cloud_store)
        self.cores.append(cloud)
        cloud_server = HttpServer(cloud_app(cloud), LOOPBACK, 0, threads=16).start()
        self.http.append(cloud_server)
        campus_config = self.config.with_overrides({
            "ip_plan.clients": client_agents, "ip_plan.servers": server_agents, "mlfo.cloud": cloud_server.address,
            "paths.state_dir": str(state_dir),
            "mlfo.poll_seconds": 0.5,
        })
        campus_store = open_store(campus_config, "campus")
        self.stores.append(campus_store)
        campus = CampusMlfo(campus_config, campus_store)
        self.cores.append(campus)
        campus_server = HttpServer(campus_app(campus), LOOPBACK, 0, threads=16).start()
        self.http.append(campus_server)
        self.campus = campus_server.address
        # Where Prometheus (`mlfo monitor up`, loopback mode) finds this run's services.
        mlfos = [(cloud_server.address, "cloud-mlfo", "cloud.0"), (campus_server.address, "campus-mlfo", "mo.1")]
        for name, services in (("mlfo-demo", mlfos), ("agent-demo", self._labels)):
            groups = [{"targets": [address], "labels": {"role": role, "host": host}} for address, role, host in services]
            self.target_files.append(write_targets(self.config, name, groups))
        # The campus config is what cohorts are sent with: its IP plan names the client agents.
        self.config = campus_config

    def close(self) -> None:
        """Stop everything, each piece even when another one fails to stop (nothing is left running)."""
        for path in self.target_files:
            path.unlink(missing_ok=True)
        servers = list(self.http)
        steps: list[Any] = [*(c.close for c in self.cores), *(a.close for a in self.agents), lambda: close_all(servers),
                            *(s.close for s in self.stores)]
        if self.executor is not None:
            steps.append(self.executor.stop)
        failures = []
        for step in steps:
            try:
                step()
            except Exception as err:  # keep stopping the rest, then say what failed
                failures.append(err)
                log.warning("stopping the loopback backend: %s", err)
        self.cores, self.agents, self.http, self.stores, self.executor = [], [], [], [], None
        if failures:
            raise failures[0]
