"""An agent's `/status` that waits for the next round: the MLFO's watch learns of a round as it ends."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mlfo_toolkit.agent.node import FlServer, NodeAgent
from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import RemoteError
from mlfo_toolkit.http.agent_routes import agent_app
from mlfo_toolkit.http.server import HttpServer
from mlfo_toolkit.orchestrator.api_clients import AgentClient


class _Process:
    pid = 1
    alive = True

    def running(self) -> bool:
        return self.alive

    def returncode(self) -> int | None:
        return None if self.alive else -9

    def tail(self, lines: int = 20) -> str:
        return ""

    def stop(self) -> None:
        pass


@pytest.fixture(params=["inotify", "stat"])
def served(request: pytest.FixtureRequest, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An agent with an FL server, over HTTP; woken by inotify, or (where inotify is unavailable) stating the file."""
    agent = NodeAgent(config, work_dir=tmp_path / "agent")
    monkeypatch.setattr(agent, "traffic", lambda max_age=0.0: [])
    if request.param == "stat":
        monkeypatch.setattr(agent, "events_changes", lambda: None)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"event": "started"}) + "\n")
    params = SimpleNamespace(deployment="d1", tier="flat", algo="fedavg", numround=5, cohort="c")
    agent.server = FlServer(params=params, address="127.0.0.1:9092", superlink=_Process(), submitter=None,  # type: ignore[arg-type]
                            metrics_file=metrics)
    if request.param == "inotify":
        watch = agent.events_changes()
        assert watch is not None, "inotify is unavailable here"
        watch[0].close()
    http = HttpServer(agent_app(agent), "127.0.0.1", 0).start()
    try:
        yield AgentClient(http.address, timeout=5), metrics, agent.server.superlink, agent
    finally:
        http.close()


def _round(metrics: Path, number: int, partial: bool = False) -> None:
    line = json.dumps({"event": "round", "round": number, "loss": 0.5, "accuracy": 0.8, "time": time.time()})
    with metrics.open("a") as out:
        out.write(line[:10] if partial else line + "\n")


def test_a_waiting_status_answers_when_the_round_ends(served: Any) -> None:
    client, metrics, _, _ = served
    answers: list[dict[str, Any]] = []
    asking = threading.Thread(target=lambda: answers.append(client.status(rounds_after=0, wait=20)))
    asked = time.monotonic()
    asking.start()
    time.sleep(0.4)
    assert not answers, "answered before any round ended"
    _round(metrics, 1)
    asking.join(25)
    took = time.monotonic() - asked
    assert answers and [r["round"] for r in answers[0]["server"]["rounds"]] == [1]
    assert took < 10, f"answered after {took:.1f} s: at the end of its wait, not at the round's end"


def test_a_waiting_status_ignores_other_lines_and_answers_with_what_it_has_when_the_wait_ends(served: Any) -> None:
    client, metrics, _, _ = served
    _round(metrics, 1)
    answer = client.status(rounds_after=0, wait=5)  # round 1 is already there: at once
    assert [r["round"] for r in answer["server"]["rounds"]] == [1]
    writer = threading.Timer(0.2, lambda: _round(metrics, 2, partial=True))  # a line being written is no round
    writer.start()
    asked = time.monotonic()
    answer = client.status(rounds_after=1, wait=1.0)
    writer.join()
    assert time.monotonic() - asked >= 0.9
    assert [r["round"] for r in answer["server"]["rounds"]] == [1]
    assert answer["server"]["state"] == "running"


def test_a_bad_wait_is_refused_naming_the_field_and_the_agent_serves_on(served: Any) -> None:
    client, _, _, _ = served
    for query, field in (({"rounds_after": 0, "wait": 3600}, "wait"), ({"rounds_after": "two", "wait": 1}, "rounds_after")):
        with pytest.raises(RemoteError) as refused:
            client.request("GET", "/status", params=query)
        assert refused.value.status == 400 and field in json.dumps(refused.value.body), refused.value.body
    assert client.status()["server"]["address"] == "127.0.0.1:9092"


def test_a_waiting_status_answers_when_the_superlink_dies(served: Any) -> None:
    """Its events file says nothing then: the processes are looked at every PROCESS_LOOK_SECONDS."""
    client, _, superlink, _ = served
    threading.Timer(0.3, lambda: setattr(superlink, "alive", False)).start()
    asked = time.monotonic()
    answer = client.status(rounds_after=0, wait=20)
    assert answer["server"]["state"] == "failed" and "SuperLink exited" in answer["server"]["reason"]
    assert time.monotonic() - asked < 10, "answered at the end of its wait, not when the SuperLink died"


def test_a_waiting_status_is_not_woken_by_the_run_folders_other_files(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SuperLink's log, in the same folder, is written all through a round: only the events file counts."""
    client, metrics, _, agent = served
    computed: list[float] = []
    status, mark = agent.status, agent.status_mark
    monkeypatch.setattr(agent, "status", lambda: (computed.append(time.monotonic()), status())[1])
    looks: list[float] = []
    monkeypatch.setattr(agent, "status_mark", lambda processes=True: (looks.append(time.monotonic()), mark(processes))[1])
    watched = agent.events_changes()
    if watched is not None:
        watched[0].close()
    log = metrics.with_name("superlink.log")

    def chatter() -> None:
        for _ in range(20):
            with log.open("a") as out:
                out.write("INFO : a Flower log line\n")
            time.sleep(0.02)

    writer = threading.Thread(target=chatter)
    writer.start()
    answer = client.status(rounds_after=0, wait=1.0)
    writer.join()
    assert answer["server"]["rounds"] == []
    assert len(computed) == 2, f"status computed {len(computed)} times"  # at the start and at the end of the wait
    if watched is not None:  # woken by inotify: only the processes' look once a second, not a look per log line
        assert len(looks) < 10, f"{len(looks)} looks in 1 s: woken by the log's writes"


class _Streaming(_Process):
    """A `flwr run` still streaming the run's last log lines: it ends by itself `ends_after` s after it is first asked."""

    def __init__(self, ends_after: float) -> None:
        self.ends_after, self.asked, self.cut = ends_after, None, False

    def running(self) -> bool:
        self.asked = self.asked or time.monotonic()
        return time.monotonic() - self.asked < self.ends_after

    def stop(self) -> None:
        self.cut = self.running()  # a SIGTERM while it still streams cuts the log's end


@pytest.mark.parametrize("finished", [True, False])
def test_a_stopped_servers_flwr_run_ends_by_itself_once_the_run_finished(tmp_path: Path, finished: bool) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"event": e}) + "\n" for e in ["started", "round"] + (["finished"] if finished else [])))
    submitter = _Streaming(ends_after=0.3)
    server = FlServer(params=SimpleNamespace(), address="127.0.0.1:9092", superlink=_Process(), submitter=submitter,  # type: ignore[arg-type]
                      metrics_file=metrics)
    server.stop()
    # Finished: its last log lines (the app's result) are written before it ends. A run stopped midway is not waited for.
    assert submitter.cut is (not finished)
