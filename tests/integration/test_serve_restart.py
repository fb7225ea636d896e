"""`mlfo serve` as a real process: killed with SIGKILL and restarted, it still lists its deployments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from mlfo_toolkit.util.processes import free_port, wait_for_port
from tests.helpers import REPO


def start_campus(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    # The cloud MLFO is deliberately absent: deployments fail, and that state must survive too.
    env |= {"MLFO_PATHS__STATE_DIR": str(workdir / "state"), "MLFO_MLFO__CLOUD": f"127.0.0.1:{free_port()}"}
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
