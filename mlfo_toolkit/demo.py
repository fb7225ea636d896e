"""`mlfo demo`: the whole chain on loopback, no root: MLFOs, agents, Flower, a trained model."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfo_toolkit.agent.node import NodeAgent
from mlfo_toolkit.config import Config
from mlfo_toolkit.fl.executor import start_executor
from mlfo_toolkit.http.routes import agent_app, campus_app, cloud_app
from mlfo_toolkit.http.server import HttpServer
from mlfo_toolkit.monitoring.prometheus import scraping_seconds, write_targets
from mlfo_toolkit.monitoring.runs import cohort_summary, manifest, new_run_dir, write_run
from mlfo_toolkit.orchestrator.cohorts import CohortFile, load_cohort_file
from mlfo_toolkit.orchestrator.mlfo import CampusMlfo, CloudMlfo, open_store
from mlfo_toolkit.orchestrator.sending import ProgressCallback, raise_for_failures, send_cohorts, wait_for_deployments
from mlfo_toolkit.processes import ManagedProcess, free_port
from mlfo_toolkit.resources import resource_path

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


def shape_cohorts(cohort_file: CohortFile, cohorts: int | None, clients: int | None, rounds: int | None) -> CohortFile:
    """Repeat the file's cohorts to `cohorts` entries and set every size and round count asked for."""
    template = cohort_file.cohorts
    count = cohorts or len(template)
    shaped = []
    for i in range(count):
        base = template[i % len(template)]
        name = base.name if i < len(template) else f"{base.name}-{i + 1}"
        size = clients or base.size
        shaped.append(
            dataclasses.replace(
                base,
                name=name,
                size=size,
                rounds=rounds or base.rounds,
                min_available=min(base.min_available, size) if not clients else size,
                min_fit=min(base.min_fit, size),
                sameserver=base.sameserver and i > 0,
            )
        )
    return dataclasses.replace(cohort_file, cohorts=shaped)


@dataclass
class LoopbackNetwork:
    """Every process of the demo as in-process HTTP servers on loopback ports; `close()` ends all."""

    config: Config
    work_dir: Path
    servers: list[HttpServer] = field(default_factory=list)
    agents: list[NodeAgent] = field(default_factory=list)
    cores: list[Any] = field(default_factory=list)
    agent_labels: list[tuple[str, str, str]] = field(default_factory=list)
    target_files: list[Path] = field(default_factory=list)
    campus_address: str = ""
    executor: ManagedProcess | None = None

    def _agent(self, name: str, fl_port: int, role: str) -> str:
        config = self.config.with_overrides({"agent.host": LOOPBACK, "agent.port": 0, "agent.fl_server_port": fl_port})
        agent = NodeAgent(config, work_dir=self.work_dir / "nodes" / name)
        self.agents.append(agent)
        server = HttpServer(agent_app(agent), LOOPBACK, 0, threads=4).start()
        self.servers.append(server)
        self.agent_labels.append((server.address, role, name))
        return server.address

    def start(self, num_servers: int, num_clients: int) -> None:
        if self.config.fl.isolation == "shared":
            # One executor runs the ClientApps of every client agent of the demo.
            executor_dir = self.work_dir / "executor"
            # It stops by itself (and its SuperNodes with it) if this process is killed.
            self.executor = start_executor(executor_dir, self.work_dir / "executor.log", parent_pid=os.getpid())
            self.config = self.config.with_overrides({"fl.executor_dir": str(executor_dir)})
        server_agents = [self._agent(f"fed.{n + 1}", free_port(), "fl-server") for n in range(num_servers)]
        client_agents = [self._agent(f"fc.{n + 1}", 0, "fl-client") for n in range(num_clients)]
        state_dir = self.work_dir / "state"
        cloud_config = self.config.with_overrides({"ip_plan.servers": server_agents, "paths.state_dir": str(state_dir)})
        cloud = CloudMlfo(cloud_config, open_store(cloud_config, "cloud"))
        self.cores.append(cloud)
        cloud_server = HttpServer(cloud_app(cloud), LOOPBACK, 0, threads=16).start()
        self.servers.append(cloud_server)
        campus_config = self.config.with_overrides(
            {
                "ip_plan.clients": client_agents,
                "mlfo.cloud": cloud_server.address,
                "paths.state_dir": str(state_dir),
                "mlfo.poll_seconds": 0.5,
            }
        )
        campus = CampusMlfo(campus_config, open_store(campus_config, "campus"))
        self.cores.append(campus)
        campus_server = HttpServer(campus_app(campus), LOOPBACK, 0, threads=16).start()
        self.servers.append(campus_server)
        self.campus_address = campus_server.address
        # Where Prometheus (`mlfo monitor up`, loopback mode) finds this run's services.
        self.target_files.append(write_targets(self.config, "mlfo-demo", [
            {"targets": [cloud_server.address], "labels": {"role": "cloud-mlfo", "host": "cloud.0"}},
            {"targets": [campus_server.address], "labels": {"role": "campus-mlfo", "host": "mo.1"}},
        ]))
        self.target_files.append(write_targets(self.config, "agent-demo", [
            {"targets": [address], "labels": {"role": role, "host": name}}
            for address, role, name in self.agent_labels
        ]))
        # The campus config is what `intent send` needs: its IP plan names the client agents.
        self.config = campus_config

    def close(self) -> None:
        """Stop everything, each piece even when another one fails to stop (nothing is left running)."""
        for path in self.target_files:
            path.unlink(missing_ok=True)
        steps: list[Any] = [*(c.close for c in self.cores), *(a.close for a in self.agents), *(s.close for s in self.servers)]
        if self.executor is not None:
            steps.append(self.executor.stop)
        failures = []
        for step in steps:
            try:
                step()
            except Exception as err:  # keep stopping the rest, then say what failed
                failures.append(err)
                log.warning("stopping the demo: %s", err)
        if failures:
            raise failures[0]


def run_demo(
    config: Config,
    *,
    cohort_path: Path | None = None,
    cohorts: int | None = None,
    clients: int | None = None,
    rounds: int | None = None,
    timeout: float = 900.0,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run the example cohort file end to end on loopback and return the demo summary."""
    cohort_path = cohort_path or resource_path("intents/cohorts.yaml")
    cohort_file = shape_cohorts(load_cohort_file(cohort_path, config), cohorts, clients, rounds)
    run_dir = new_run_dir(Path(config.paths.runs_dir), "demo")
    started = time.monotonic()
    network = LoopbackNetwork(config, run_dir)
    try:
        num_servers = sum(1 for c in cohort_file.cohorts if not c.sameserver)
        num_clients = sum(c.size for c in cohort_file.cohorts)
        if progress:
            progress("setup", {"servers": num_servers, "clients": num_clients, "run_dir": str(run_dir)})
        network.start(num_servers, num_clients)
        sent = send_cohorts(cohort_file, network.config, network.campus_address)
        wait_for_deployments(sent, network.config, network.campus_address, timeout=timeout, progress=progress, poll_seconds=0.5)
        # With `mlfo monitor up` running, stay up for one more scrape: the final round reaches Prometheus.
        linger = scraping_seconds(config)
        if linger:
            time.sleep(linger + 0.5)
    finally:
        network.close()
    summary = {
        "cohorts": [cohort_summary(c) for c in sent],
        "orchestration_seconds": [c.record.get("orchestration_seconds") for c in sent],
        "run_dir": str(run_dir),
        "wall_seconds": round(time.monotonic() - started, 2),
        "manifest": manifest({"cohort_file": cohort_path}, {"fl.seed": config.fl.seed}),
    }
    write_run(run_dir, summary)
    raise_for_failures(sent)
    return summary
