"""Long-running services (MLFO, agent) in the foreground, stopped cleanly by Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from mlfo_toolkit.agent.node import NodeAgent
from mlfo_toolkit.config import Config
from mlfo_toolkit.http.routes import agent_app, campus_app, cloud_app, exporter_app
from mlfo_toolkit.http.server import HttpServer
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.cloud import CloudMlfo
from mlfo_toolkit.orchestrator.store import open_store
from mlfo_toolkit.util.signals import terminate_as_interrupt

log = logging.getLogger(__name__)


def _warn_if_open(host: str, token: str | None, what: str, setting: str = "api.southbound_token or MLFO_API__SOUTHBOUND_TOKEN") -> None:
    """Serving beyond loopback with no token lets anyone who reaches the address use it."""
    if not token and host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: {what} serves on {host} with no token: anyone who can reach it may use it (set {setting})",
              file=sys.stderr, flush=True)


def _serve(server: HttpServer, core: Any, what: str) -> None:
    print(f"{what} listening on http://{server.address}", file=sys.stderr, flush=True)
    try:
        with terminate_as_interrupt():
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        core.close()
        server.close()
        print(f"{what} stopped", file=sys.stderr, flush=True)


def run_mlfo(config: Config, role: str) -> None:
    """Serve a campus or cloud MLFO in the foreground."""
    logging.getLogger("mlfo_toolkit").setLevel(logging.INFO)
    store = open_store(config, role)
    core: CampusMlfo | CloudMlfo
    try:
        if role == "campus":
            core = CampusMlfo(config, store)
            _warn_if_open(config.mlfo.host, config.api.token, "the campus MLFO", "api.token or MLFO_API__TOKEN")
            app, port = campus_app(core), config.mlfo.port
        else:
            core = CloudMlfo(config, store)
            _warn_if_open(config.mlfo.host, config.southbound_token, "the cloud MLFO")
            app, port = cloud_app(core), config.mlfo.momo_port
        _say_recovery(f"{role} MLFO", core.recovery)
        try:
            server = HttpServer(app, config.mlfo.host, port, threads=16, request_seconds=config.api.request_seconds)
        except BaseException:
            core.close()
            raise
        _serve(server, core, f"{role} MLFO")
    finally:
        store.close()


def _say_recovery(what: str, recovery: dict[str, Any]) -> None:
    """What the MLFO set right at its start: a store moved aside, records skipped, deployments resumed or abandoned."""
    if recovery.get("moved_aside"):
        print(f"{what}: the store {recovery['store']} could not be read; it was moved aside as {recovery['moved_aside']} "
              "and the MLFO starts with an empty store", file=sys.stderr, flush=True)
    for skipped in recovery.get("skipped", []):
        print(f"{what}: skipped {skipped['kind']} record {skipped['id']} of the store: {skipped['reason']}", file=sys.stderr, flush=True)
    for key, verb in (("resumed", "follows again"), ("abandoned", "abandoned (half deployed)"), ("released", "released"), ("stopped", "stopped")):
        if recovery.get(key):
            print(f"{what}: {verb}: {', '.join(recovery[key])}", file=sys.stderr, flush=True)


def run_agent(config: Config) -> None:
    """Serve a node agent in the foreground."""
    logging.getLogger("mlfo_toolkit").setLevel(logging.INFO)
    agent = NodeAgent(config, work_dir=Path(config.paths.state_dir) / f"agent-{config.agent.port}")
    _warn_if_open(config.agent.host, config.southbound_token, "the node agent")
    server = HttpServer(agent_app(agent), config.agent.host, config.agent.port, request_seconds=config.api.request_seconds)
    _serve(server, agent, "node agent")


def run_exporter(config: Config, app: str, match_port: int, host: str, port: int) -> None:
    """Serve the socket exporter of one app in the foreground."""

    class _Nothing:
        def close(self) -> None:
            pass

    _serve(HttpServer(exporter_app(app, match_port), host, port), _Nothing(), f"{app} socket exporter")
