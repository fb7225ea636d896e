"""A node agent or a socket exporter in the foreground, stopped cleanly by Ctrl-C or SIGTERM.

Apart from the MLFOs' service module so that `mlfo agent` imports no orchestrator: `topo up 5` starts 57
of these processes, and their imports are most of its time.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from mlfo_toolkit.agent.node import NodeAgent
from mlfo_toolkit.config import Config
from mlfo_toolkit.http.agent_routes import agent_app, exporter_app
from mlfo_toolkit.http.server import HttpServer
from mlfo_toolkit.util.signals import terminate_as_interrupt

log = logging.getLogger(__name__)


def warn_if_open(host: str, token: str | None, what: str, setting: str = "api.southbound_token or MLFO_API__SOUTHBOUND_TOKEN") -> None:
    """Serving beyond loopback with no token lets anyone who reaches the address use it."""
    if not token and host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: {what} serves on {host} with no token: anyone who can reach it may use it (set {setting})",
              file=sys.stderr, flush=True)


def serve(server: HttpServer, core: Any, what: str) -> None:
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


def run_agent(config: Config) -> None:
    """Serve a node agent in the foreground."""
    logging.getLogger("mlfo_toolkit").setLevel(logging.INFO)
    agent = NodeAgent(config, work_dir=Path(config.paths.state_dir) / f"agent-{config.agent.port}")
    warn_if_open(config.agent.host, config.southbound_token, "the node agent")
    server = HttpServer(agent_app(agent), config.agent.host, config.agent.port, request_seconds=config.api.request_seconds)
    serve(server, agent, "node agent")


def run_exporter(config: Config, app: str, match_port: int, host: str, port: int) -> None:
    """Serve the socket exporter of one app in the foreground."""

    class _Nothing:
        def close(self) -> None:
            pass

    serve(HttpServer(exporter_app(app, match_port), host, port), _Nothing(), f"{app} socket exporter")
