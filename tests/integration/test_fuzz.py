"""The quick form of the fuzz harness: bad input of every class to all four endpoints and the CLI;
every answer is a 4xx JSON error, no server dies, no allocation leaks."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from mlfo_toolkit.agent.node import NodeAgent
from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.config import Config
from mlfo_toolkit.http.agent_routes import agent_app
from mlfo_toolkit.http.server import HttpServer
from tests.helpers.fuzzing import CLASSES, CLI_BAD, Case, cases
from tests.helpers.orchestra import Orchestra, close, start_orchestra

QUICK_PER_CLASS = 55  # 14 classes: 770 cases


class Targets:
    def __init__(self, orchestra: Orchestra, agent_url: str) -> None:
        self.urls = {"campus": f"{orchestra.url}/receive", "cloud": f"{orchestra.cloud_url}/momo/deploy",
                     "serv": f"{agent_url}/serv", "cli": f"{agent_url}/cli"}
        self.health = [f"{orchestra.url}/health", f"{orchestra.cloud_url}/health", f"{agent_url}/health"]
        self.orchestra = orchestra

    def send(self, case: Case) -> requests.Response:
        url = self.urls[case.endpoint] + (f"?{case.query}" if case.query else "")
        return requests.request(case.method, url, timeout=30, **case.request_kwargs())


@pytest.fixture
def targets(config: Config, workdir: Path) -> Iterator[Targets]:
    orchestra, closables = start_orchestra(config, workdir)
    agent = NodeAgent(orchestra.config.with_overrides({"agent.fl_server_port": 0}), work_dir=workdir / "agent")
    agent_http = HttpServer(agent_app(agent), "127.0.0.1", 0).start()
    yield Targets(orchestra, f"http://{agent_http.address}")
    agent.close()
    agent_http.close()
    close(closables)


def run_fuzz(targets: Targets, seed: int, per_class: int) -> dict[str, Any]:
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    wrong: list[str] = []
    for case in cases(seed, per_class):
        answer = targets.send(case)
        statuses[case.kind][answer.status_code] += 1
        if not 400 <= answer.status_code < 500:
            wrong.append(f"{case.kind} -> {case.endpoint}: {answer.status_code} {answer.text[:200]}")
        else:
            body = answer.json()
            assert {"error", "message"} <= set(body), body
    return {"statuses": statuses, "wrong": wrong}


def test_quick_fuzz_gets_only_4xx_and_every_server_survives(targets: Targets) -> None:
    result = run_fuzz(targets, seed=20261129, per_class=QUICK_PER_CLASS)
    assert sum(sum(c.values()) for c in result["statuses"].values()) >= 700
    assert set(result["statuses"]) == set(CLASSES)
    assert not result["wrong"], "\n".join(result["wrong"][:20])
    for url in targets.health:
        assert requests.get(url, timeout=5).status_code == 200
    allocations = requests.get(f"{targets.orchestra.cloud_url}/momo/allocations", timeout=5).json()["allocations"]
    assert not [a for a in allocations if a["active"]], "a refused Mo-Mo deploy left an allocation active"
    # Still serving real work after all that.
    from tests.helpers.orchestra import send

    assert targets.orchestra.wait(send(targets.orchestra, cohortsize=2).json()["id"])["state"] == "done"


@pytest.mark.parametrize("text", CLI_BAD)
def test_cli_validate_and_plan_answer_bad_intents_without_a_traceback(workdir: Path, text: str) -> None:
    intent = workdir / "intent.yaml"
    intent.write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else b"\xff\xfe")
    cohorts = workdir / "cohorts.yaml"
    cohorts.write_text("cohorts:\n  - {name: a, size: 2, intent: intent.yaml}\n")
    for argv in (["intent", "validate", str(intent)], ["intent", "plan", str(cohorts)]):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 4, (argv, result.output, result.exception)
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Error:" in result.stderr
