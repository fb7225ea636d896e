"""Campus and cloud MLFOs on loopback with stand-in agents, for tests of the MLFOs' APIs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from mlfo_toolkit.config import Config
from mlfo_toolkit.http.routes import campus_app, cloud_app
from mlfo_toolkit.http.server import HttpServer, close_all
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.cloud import CloudMlfo
from mlfo_toolkit.orchestrator.store import Store
from tests.helpers import REPO
from tests.helpers.fakes import FakeAgent

WELDING = (REPO / "intents" / "welding.yaml").read_bytes()


@dataclass
class Orchestra:
    campus: CampusMlfo
    cloud: CloudMlfo
    url: str
    cloud_url: str
    servers: list[FakeAgent]
    clients: list[FakeAgent]
    config: Config

    def wait(self, deployment_id: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = requests.get(f"{self.url}/deployments/{deployment_id}", headers=self.headers, timeout=5).json()
            # Ended, and the ending finished: its server given back (or never had), its clients stopped.
            if record["state"] in ("done", "failed") and record.get("released") is not False and \
                    not any(c["state"] in ("running", "starting") for c in record["clients"]):
                return record
            time.sleep(0.1)
        raise AssertionError(f"deployment {deployment_id} did not finish: {record}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api.token}"} if self.config.api.token else {}


def start_orchestra(config: Config, workdir: Path, servers: int = 2, clients: int = 6, token: str | None = None,
                    southbound: str | None = None, max_upload: int = 65536) -> tuple[Orchestra, list[Any]]:
    server_agents = [FakeAgent(southbound or token) for _ in range(servers)]
    client_agents = [FakeAgent(southbound or token) for _ in range(clients)]
    config = config.with_overrides(
        {
            "api.token": token,
            "api.southbound_token": southbound,
            "api.max_upload_bytes": max_upload,
            "ip_plan.servers": [a.address for a in server_agents],
            "ip_plan.clients": [a.address for a in client_agents],
            "mlfo.poll_seconds": 0.1,
        }
    )
    cloud = CloudMlfo(config, Store(workdir / "cloud.sqlite3"))
    cloud_http = HttpServer(cloud_app(cloud), "127.0.0.1", 0, request_seconds=config.api.request_seconds).start()
    config = config.with_overrides({"mlfo.cloud": cloud_http.address})
    campus = CampusMlfo(config, Store(workdir / "campus.sqlite3"))
    campus_http = HttpServer(campus_app(campus), "127.0.0.1", 0, request_seconds=config.api.request_seconds).start()
    orchestra = Orchestra(campus, cloud, f"http://{campus_http.address}", f"http://{cloud_http.address}", server_agents, client_agents, config)
    return orchestra, [campus, cloud, campus_http, cloud_http, *server_agents, *client_agents]


def send(orchestra: Orchestra, intent: bytes = WELDING, **fields: Any) -> requests.Response:
    form = {"cohortsize": "3", "ipstart": "10", "numround": "2"} | {k: str(v) for k, v in fields.items()}
    return requests.post(f"{orchestra.url}/receive", files={"file": ("intent.yaml", intent)}, data=form, headers=orchestra.headers, timeout=10)


def close(closables: list[Any]) -> None:
    """Close the MLFOs, then every HTTP server at once (each takes uvicorn's 0.1 s to close)."""
    servers = []
    for thing in closables:
        if isinstance(thing, HttpServer):
            servers.append(thing)
        elif isinstance(thing, FakeAgent):
            servers.append(thing.server)
        else:
            thing.close()
    close_all(servers)
