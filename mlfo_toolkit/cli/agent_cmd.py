"""`mlfo agent`: run a node agent in the foreground."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import pass_config

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.command()
@click.option("--host", help="Bind address (default: agent.host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: agent.port, 5000).")
@click.option("--fl-port", type=click.IntRange(0, 65535), help="Flower SuperLink port (default: agent.fl_server_port, 6000; 0 = any free).")
@pass_config
def agent(cfg: Config, host: str | None, port: int | None, fl_port: int | None) -> None:
    """Run a node agent until Ctrl-C or SIGTERM; it stops every Flower process it started.

    \b
    POST /serv   algo, fracfit, minfit, minav, numround[, source, model]: start a Flower
                 SuperLink and submit the FL run; answers {"server": "HOST:PORT"}
    POST /cli    source, model, server, cohsize, part: start a Flower SuperNode on
                 partition `part` of `cohsize`
    GET  /status the FL server's rounds (loss, accuracy) and the clients' processes
    POST /stop   stop them (?deployment=ID: only that deployment's)
    """
    # Not through mlfo_toolkit.api, which imports every backend and both MLFOs: `topo up 5` starts 57 agents,
    # and their imports are most of its time (api.serve_agent is the same function for Python callers).
    from mlfo_toolkit.http.agent_service import run_agent

    run_agent(cfg.with_overrides({"agent.host": host, "agent.port": port, "agent.fl_server_port": fl_port}))
