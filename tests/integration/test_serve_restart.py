"""`mlfo serve` as a real process: killed with SIGKILL and restarted, it still lists its deployments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from mlfo_toolkit.config import Config
from mlfo_toolkit.http.routes import cloud_app
from mlfo_toolkit.http.server import HttpServer, close_all
from mlfo_toolkit.orchestrator.cloud import CloudMlfo
from mlfo_toolkit.orchestrator.store import Store
from mlfo_toolkit.util.processes import free_port, wait_for_port
from tests.helpers import REPO, serve_briefly
from tests.helpers.fakes import FakeAgent


def start_campus(workdir: Path, port: int, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    # Without `extra`, the cloud MLFO is absent: deployments fail, and that state must survive too.
    env |= {"MLFO_PATHS__STATE_DIR": str(workdir / "state"), "MLFO_MLFO__CLOUD": f"127.0.0.1:{free_port()}", **(extra or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlfo_toolkit", "serve", "--role", "campus", "--port", str(port)],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    wait_for_port("127.0.0.1", port, 30)
    return proc


def test_sigkill_and_restart_keeps_deployments(workdir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_campus(workdir, port)
    try:
        intent = (REPO / "intents" / "welding.yaml").read_bytes()
        ids = [requests.post(f"{url}/receive", files={"file": intent}, data={"cohortsize": "2"}, timeout=10).json()["id"] for _ in range(2)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = requests.get(f"{url}/deployments", timeout=5).json()["deployments"]
            if all(d["state"] == "failed" for d in listed):
                break
            time.sleep(0.2)
        assert [d["id"] for d in listed] == ids
        assert "cannot reach the cloud MLFO" in listed[0]["reason"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    proc = start_campus(workdir, port)
    try:
        assert requests.get(f"{url}/deployments", timeout=5).json()["deployments"] == listed
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0  # SIGTERM is a clean stop


def test_a_campus_killed_while_starting_clients_stops_them_after_its_restart(config: Config, workdir: Path) -> None:
    """Issue 18/3: clients are recorded `starting` before their agent is asked, so the restarted campus
    stops every client it may have started, and gives the server back."""
    server, clients = FakeAgent(final_state="running"), [FakeAgent() for _ in range(3)]
    for client in clients:
        client.cli_delay = 4.0  # SuperNodes that take a while to come up
    cloud_config = config.with_overrides({"ip_plan.servers": [server.address], "mlfo.janitor_seconds": 0.5})
    cloud = CloudMlfo(cloud_config, Store(workdir / "cloud.sqlite3"))
    cloud_http = HttpServer(cloud_app(cloud), "127.0.0.1", 0).start()
    port = free_port()
    env = {"MLFO_MLFO__CLOUD": cloud_http.address, "MLFO_IP_PLAN__CLIENTS": json.dumps([c.address for c in clients]),
           "MLFO_MLFO__JANITOR_SECONDS": "0.5"}
    proc = start_campus(workdir, port, env)
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/receive", files={"file": (REPO / "intents" / "welding.yaml").read_bytes()},
                               data={"cohortsize": "3", "ipstart": "10"}, timeout=10).json()
        deadline = time.monotonic() + 10
        while not all(c.cli_started for c in clients) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(c.cli_started for c in clients)
        proc.send_signal(signal.SIGKILL)  # while every client is starting
        proc.wait(10)
        proc = start_campus(workdir, port, env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(answer["id"] in c.stop_calls for c in clients):
            time.sleep(0.1)
        assert all(answer["id"] in c.stop_calls for c in clients), [c.stop_calls for c in clients]
        record = requests.get(f"http://127.0.0.1:{port}/deployments/{answer['id']}", timeout=5).json()
        assert record["state"] == "failed" and "restarted while deploying" in record["reason"]
        page = requests.get(f"http://127.0.0.1:{port}/deployments", timeout=5).json()
        assert page["recovery"]["abandoned"] == [answer["id"]]
        assert not any(a.active for a in cloud.allocations())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        cloud.close()
        close_all([cloud_http, server.server, *(c.server for c in clients)])


def test_a_campus_restarted_mid_run_keeps_its_decisions_and_its_loop_goes_on(config: Config, workdir: Path) -> None:
    """Issue 19: decisions are part of the deployment record; after a SIGKILL and a restart the campus
    MLFO follows the run again, and its closed loop acts on the rounds that come next."""
    server, clients = FakeAgent(final_state="running"), [FakeAgent() for _ in range(2)]
    server.rounds = [{"round": 1, "loss": 0.9, "accuracy": 0.70, "time": 0}]
    for client in clients:
        client.report_clients = True
    cloud = CloudMlfo(config.with_overrides({"ip_plan.servers": [server.address]}), Store(workdir / "cloud.sqlite3"))
    cloud_http = HttpServer(cloud_app(cloud), "127.0.0.1", 0).start()
    port = free_port()
    env = {"MLFO_MLFO__CLOUD": cloud_http.address, "MLFO_IP_PLAN__CLIENTS": json.dumps([c.address for c in clients]),
           "MLFO_MLFO__POLL_SECONDS": "0.2"}
    intent = (REPO / "intents" / "welding-target.yaml").read_text().replace("value: 0.93", "value: 0.85")
    url = f"http://127.0.0.1:{port}"
    proc = start_campus(workdir, port, env)

    def record() -> dict[str, Any]:
        return dict(requests.get(f"{url}/deployments/{deployment}", timeout=5).json())

    def wait_until(check: Any, seconds: float = 15) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.1)
        return False

    try:
        answer = requests.post(f"{url}/receive", files={"file": intent.encode()},
                               data={"cohortsize": "2", "ipstart": "10", "minfit": "1", "minav": "2", "numround": "20"}, timeout=10)
        assert answer.status_code == 202, answer.text
        deployment = answer.json()["id"]
        # Before the kill: the deadline of 12 rounds set the run's length, and round 1 was judged.
        assert wait_until(lambda: any(d["round"] == 1 for d in record()["decisions"]) or record()["assurance"] is not None)
        assert wait_until(lambda: any(c.get("rounds") == 12 for c in server.control_calls))
        before = record()["decisions"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        server.rounds.append({"round": 2, "loss": 0.4, "accuracy": 0.9, "time": 1})  # the run went on meanwhile
        proc = start_campus(workdir, port, env)
        assert wait_until(lambda: record()["state"] == "done", 20), record()
        after = record()
        # Nothing decided before the kill was lost (the last one has since got its outcome: the round after it).
        assert [{k: v for k, v in d.items() if k != "outcome"} for d in after["decisions"][: len(before)]] == \
            [{k: v for k, v in d.items() if k != "outcome"} for d in before]
        assert "target met at round 2" in after["reason"], after["reason"]
        assert any("target met at round 2" in (c.get("stop") or "") for c in server.control_calls), server.control_calls
        assert [c["rounds"] for c in server.control_calls if c.get("rounds")] == [12]  # not set again after the restart
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        cloud.close()
        close_all([cloud_http, server.server, *(c.server for c in clients)])


def test_a_campus_on_every_address_without_a_token_warns(workdir: Path) -> None:
    port = free_port()
    _, stderr = serve_briefly(["serve", "--role", "campus", "--host", "0.0.0.0", "--port", str(port)], workdir, port)
    assert "warning: the campus MLFO serves on 0.0.0.0 with no token" in stderr and "api.token" in stderr
