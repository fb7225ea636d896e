"""Long-running services (MLFO, agent) in the foreground, stopped cleanly by Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from mlfo_toolkit.agent import NodeAgent
from mlfo_toolkit.config import Config
from mlfo_toolkit.httpapi import HttpServer
from mlfo_toolkit.mlfo import CampusMlfo, CloudMlfo, open_store

log = logging.getLogger(__name__)


def _serve(server: HttpServer, core: Any, what: str) -> None:
    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    print(f"{what} listening on http://{server.address}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        core.close()
        server.close()
        print(f"{what} stopped", file=sys.stderr, flush=True)


def run_mlfo(config: Config, role: str) -> None:
    """Serve a campus or cloud MLFO in the foreground."""
    logging.getLogger("mlfo_toolkit").setLevel(logging.INFO)
    store = open_store(config, role)
    core: CampusMlfo | CloudMlfo
    if role == "campus":
        core = CampusMlfo(config, store)
        port = config.mlfo.port
    else:
        core = CloudMlfo(config, store)
        port = config.mlfo.momo_port
    server = HttpServer(core.api(), config.mlfo.host, port, threads=16)
    try:
        _serve(server, core, f"{role} MLFO")
    finally:
        store.close()


def run_agent(config: Config) -> None:
    """Serve a node agent in the foreground."""
    logging.getLogger("mlfo_toolkit").setLevel(logging.INFO)
    agent = NodeAgent(config, work_dir=Path(config.paths.state_dir) / f"agent-{config.agent.port}")
    server = HttpServer(agent.api(), config.agent.host, config.agent.port)
    _serve(server, agent, "node agent")


def run_exporter(config: Config, app: str, match_port: int, host: str, port: int) -> None:
    """Serve the socket exporter of one app in the foreground."""
    from mlfo_toolkit.httpapi import JsonApi
    from mlfo_toolkit.metrics import ServiceMetrics, SocketCollector

    metrics = ServiceMetrics(f"{app} exporter")
    metrics.add(SocketCollector(app, match_port))
    api = JsonApi(f"{app} exporter", token=None, max_body=1024, metrics=metrics)
    api.public_paths.add("/metrics")  # carries no secrets; Prometheus scrapes it like node_exporter

    class _Nothing:
        def close(self) -> None:
            pass

    _serve(HttpServer(api, host, port), _Nothing(), f"{app} socket exporter")
