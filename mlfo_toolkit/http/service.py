"""Long-running services (MLFO, agent) in the foreground, stopped cleanly by Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import sys
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.http.agent_service import serve, warn_if_open
from mlfo_toolkit.http.routes import campus_app, cloud_app
from mlfo_toolkit.http.server import HttpServer
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.cloud import CloudMlfo
from mlfo_toolkit.orchestrator.store import open_store

log = logging.getLogger(__name__)


def run_mlfo(config: Config, role: str) -> None:
    """Serve a campus or cloud MLFO in the foreground."""
    logging.getLogger("mlfo_toolkit").setLevel(logging.INFO)
    store = open_store(config, role)
    core: CampusMlfo | CloudMlfo
    try:
        if role == "campus":
            core = CampusMlfo(config, store)
            warn_if_open(config.mlfo.host, config.api.token, "the campus MLFO", "api.token or MLFO_API__TOKEN")
            app, port = campus_app(core), config.mlfo.port
        else:
            core = CloudMlfo(config, store)
            warn_if_open(config.mlfo.host, config.southbound_token, "the cloud MLFO")
            app, port = cloud_app(core), config.mlfo.momo_port
        _say_recovery(f"{role} MLFO", core.recovery)
        try:
            server = HttpServer(app, config.mlfo.host, port, threads=16, request_seconds=config.api.request_seconds)
        except BaseException:
            core.close()
            raise
        serve(server, core, f"{role} MLFO")
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
