"""The service launcher `topo up` forks mlfo's services from (cli/launcher.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlfo_toolkit.util.processes import start_time


def launch(*requests: dict[str, object]) -> list[dict[str, object]]:
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run([sys.executable, "-m", "mlfo_toolkit.cli.launcher"], input=lines, capture_output=True, text=True,
                          timeout=60, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_request_without_its_fields_is_refused_and_the_launcher_goes_on(tmp_path: Path) -> None:
    answers = launch({"args": "agent"}, {"args": ["--help"], "log": str(tmp_path / "a.log")})
    assert [a.get("error") for a in answers] == ["a request needs args (a list), log and pid"] * 2


@pytest.mark.skipif(os.geteuid() != 0, reason="joining a network namespace (even one's own) needs root")
def test_a_launched_service_runs_mlfos_cli_in_the_namespace_given_into_its_own_log(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    (answer,) = launch({"args": ["--help"], "log": str(log), "pid": os.getpid(), "env": {"MLFO_X": "1"},
                        "title": "mlfo --help [test]"})
    assert isinstance(answer["pid"], int) and answer["create_time"] == pytest.approx(start_time(answer["pid"]))
    deadline = time.monotonic() + 30
    while "Usage: mlfo" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Usage: mlfo" in log.read_text()
