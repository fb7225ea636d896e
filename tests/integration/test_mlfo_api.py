"""The MLFO HTTP APIs against stand-in agents: the prototype's upload, bad input, auth, persistence."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.config import Config
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.intents import parse_momo_intent
from mlfo_toolkit.orchestrator.store import Store
from tests.helpers.orchestra import WELDING, Orchestra, close, send, start_orchestra


def test_prototype_curl_upload_deploys_a_cohort(orchestra: Orchestra, tmp_path: Path) -> None:
    intent_file = tmp_path / "intent.yaml"
    intent_file.write_bytes(WELDING)
    out = subprocess.run(
        ["curl", "-s", "-F", f"file=@{intent_file}", "-F", "cohortsize=3", "-F", "avgalgo=FedAvg", "-F", "fracfit=0.5",
         "-F", "minfit=1", "-F", "minav=1", "-F", "numround=2", "-F", "ipstart=11", "-F", "sameserver=False",
         f"{orchestra.url}/receive", "-w", "\n%{http_code}"],
        capture_output=True, text=True, check=True, timeout=20,
    )
    body, status = out.stdout.rsplit("\n", 1)
    assert status == "202", out.stdout
    import json

    record = orchestra.wait(json.loads(body)["id"])
    assert record["state"] == "done", record
    assert [r["accuracy"] for r in record["rounds"]] == [0.7, 0.9]
    assert record["orchestration_seconds"] > 0
    # ipstart 11 -> the 2nd, 3rd and 4th client agents, parts 0..2, all pointed at the cloud's server.
    called = [i for i, agent in enumerate(orchestra.clients) if agent.cli_calls]
    assert called == [1, 2, 3]
    calls = [orchestra.clients[i].cli_calls[0] for i in called]
    assert [c["part"] for c in calls] == ["0", "1", "2"]
    assert {c["server"] for c in calls} == {record["server"]["server"]}
    assert calls[0]["source"] == "handmnist" and calls[0]["cohsize"] == "3"
    serv = orchestra.servers[0].serv_calls[0]
    assert (serv["algo"], serv["numround"], serv["source"], serv["model"]) == ("FedAvg", "2", "handmnist", "complex")
    # When the run ended, the clients of this deployment were told to stop and the server released.
    assert all(orchestra.clients[i].stop_calls == [record["id"]] for i in called)
    assert orchestra.servers[0].stop_calls == [record["id"]]  # only its own server, never the next deployment's


@pytest.mark.parametrize(
    ("intent", "fields", "status", "field", "words"),
    [
        (b"intentID: [broken\n", {}, 400, None, "malformed YAML"),
        (b"targets:\n  - {id: a, operation: maximise, operand: robots.welding.accuracy}\n", {}, 400, "intentID", "required"),
        (WELDING.replace(b"welding", b"painting"), {}, 400, "targets[0].operand", "unknown operand"),
        (WELDING, {"avgalgo": "FedMagic"}, 400, "avgalgo", "FedYogi"),
        (WELDING, {"cohortsize": "three"}, 400, "cohortsize", "integer"),
        (WELDING, {"fracfit": "2.5"}, 400, "fracfit", "less than or equal"),
        (WELDING, {"colour": "blue"}, 400, "colour", "unknown field"),
        (WELDING, {"cohortsize": "45"}, 400, "cohortsize", "outside the IP plan"),
        (WELDING.replace(b"high", b"low"), {}, 400, "targets[0].constraints.privacylevel", "federated"),
    ],
)
def test_bad_input_gets_4xx_naming_the_problem_and_server_keeps_serving(
    orchestra: Orchestra, intent: bytes, fields: dict[str, str], status: int, field: str | None, words: str
) -> None:
    answer = send(orchestra, intent, **fields)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert words in body["message"] + body.get("hint", "")
    if field:
        assert body["field"] == field
    assert send(orchestra).status_code == 202


def test_oversized_upload_is_refused_and_server_keeps_serving(orchestra: Orchestra) -> None:
    huge = WELDING + b"#" * (10 * 1024 * 1024)
    answer = send(orchestra, huge)
    assert answer.status_code == 413
    assert answer.json()["field"] == "body" and "exceeds the limit" in answer.json()["message"]
    assert send(orchestra).status_code == 202


def test_missing_file_field_and_other_bodies(orchestra: Orchestra) -> None:
    answer = requests.post(f"{orchestra.url}/receive", data={"cohortsize": "2"}, timeout=5)
    assert answer.status_code == 400 and answer.json()["field"] == "file"
    as_yaml = requests.post(f"{orchestra.url}/receive?cohortsize=2", data=WELDING, headers={"Content-Type": "application/yaml"}, timeout=5)
    assert as_yaml.status_code == 202
    as_json = requests.post(f"{orchestra.url}/receive", json={"intent": WELDING.decode(), "cohortsize": 2}, timeout=5)
    assert as_json.status_code == 202
    assert orchestra.wait(as_json.json()["id"])["state"] == "done"
    assert requests.get(f"{orchestra.url}/deployments/nope", timeout=5).status_code == 404
    assert requests.delete(f"{orchestra.url}/receive", timeout=5).status_code == 405


def test_sameserver_shares_the_previous_cohorts_server(orchestra: Orchestra, monkeypatch: pytest.MonkeyPatch) -> None:
    orchestra.servers[0].final_state = "running"  # the first cohort's run is still going
    # The first cohort's request for a server is slow to leave the campus MLFO: the second, sent at once, must
    # not reach the cloud MLFO first and be refused (deployments run at once; CI saw that order).
    ask = orchestra.campus._momo_deploy

    def slow_unless_shared(momo: dict[str, Any]) -> dict[str, Any]:
        if not parse_momo_intent(momo)[1].sameserv:
            time.sleep(0.5)
        return ask(momo)

    monkeypatch.setattr(orchestra.campus, "_momo_deploy", slow_unless_shared)
    first = send(orchestra, cohortsize=2, ipstart=10).json()["id"]
    second = send(orchestra, cohortsize=2, ipstart=12, sameserver="true").json()["id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        a, b = orchestra.campus.deployment(first), orchestra.campus.deployment(second)
        if a.state == b.state == "running":
            break
        time.sleep(0.1)
    assert a.server is not None and b.server is not None and a.server.server == b.server.server
    assert len(orchestra.servers[0].serv_calls) == 1 and not orchestra.servers[1].serv_calls


def test_a_busy_pool_queues_deployments_in_order_and_refuses_past_the_bound(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config.with_overrides({"mlfo.queue_length": 1}), workdir, servers=1)
    try:
        built.servers[0].final_state = "running"  # the first cohort keeps the only server
        first = send(built, cohortsize=2).json()["id"]
        deadline = time.monotonic() + 10
        while built.campus.deployment(first).state != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        second = send(built, cohortsize=2, ipstart=12).json()["id"]
        while built.campus.deployment(second).state != "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
        queued = requests.get(f"{built.url}/deployments/{second}", timeout=5).json()
        assert queued["state"] == "queued" and queued["queue"]["position"] == 1, queued
        # The queue holds one: a third is refused at once, saying why.
        refused = send(built, cohortsize=2, ipstart=14)
        assert refused.status_code == 503 and "wait for a free FL server" in refused.json()["message"], refused.text
        page = requests.get(f"{built.url}/deployments", timeout=5).json()
        assert page["queued"] == 1
        built.servers[0].final_state = "done"  # the first run ends: its server is released, the second gets it
        assert built.wait(first)["state"] == "done"
        record = built.wait(second)
        assert record["state"] == "done" and record["queue"] is None, record
        assert len(built.servers[0].serv_calls) == 2
    finally:
        close(closables)


def test_a_newcomer_queues_behind_those_already_waiting(config: Config, workdir: Path) -> None:
    """A server that frees up goes to the oldest in the queue, not to an intent that arrives at that moment."""
    built, closables = start_orchestra(config, workdir, servers=1)
    try:
        built.campus.queue.join("earlier")  # a deployment already waiting (the pool is free right now)
        newcomer = send(built, cohortsize=2).json()["id"]
        deadline = time.monotonic() + 10
        while built.campus.deployment(newcomer).state != "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        queued = requests.get(f"{built.url}/deployments/{newcomer}", timeout=5).json()
        assert queued["state"] == "queued" and queued["queue"]["position"] == 2, queued
        assert built.servers[0].serv_calls == []  # it did not take the free server before the one ahead of it
        built.campus.queue.leave("earlier")
        assert built.wait(newcomer)["state"] == "done"
    finally:
        close(closables)


def test_unreachable_client_is_named(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config, workdir, clients=2)
    try:
        built.clients[1].close()
        record = built.wait(send(built, cohortsize=2, minav=2).json()["id"])
        assert record["state"] == "failed"
        assert f"cannot reach the node agent at {built.clients[1].address}" in record["reason"]
        assert [c["state"] for c in record["clients"]] == ["stopped", "failed"]  # the started one was stopped again
    finally:
        close(closables)


def test_token_auth_on_every_api(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config, workdir, token="t0ken")
    try:
        no_token = requests.post(f"{built.url}/receive", files={"file": WELDING}, data={"cohortsize": "2"}, timeout=5)
        assert no_token.status_code == 401
        wrong = requests.get(f"{built.url}/deployments", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401
        assert requests.get(f"{built.cloud_url}/momo/allocations", timeout=5).status_code == 401
        assert requests.get(f"{built.servers[0].address.join(['http://', '/status'])}", timeout=5).status_code == 401
        assert requests.get(f"{built.url}/health", timeout=5).status_code == 200
        # With the token the whole chain works, since every hop sends it.
        record = built.wait(send(built, cohortsize=2).json()["id"])
        assert record["state"] == "done", record
    finally:
        close(closables)


def test_restarted_mlfo_keeps_its_deployments(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config, workdir)
    try:
        ids = [send(built, cohortsize=2, ipstart=10 + 2 * i).json()["id"] for i in range(3)]
        before = [built.wait(i) for i in ids]
        built.campus.close()
        restarted = CampusMlfo(built.config, Store(workdir / "campus.sqlite3"))
        assert [d.id for d in restarted.deployments()] == ids
        assert [d.to_json() for d in restarted.deployments()] == before
        restarted.close()
    finally:
        close(closables)


def test_seed_and_round_timeout_reach_the_agents_and_a_lost_client_restarts(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config.with_overrides({"mlfo.client_check_seconds": 0.2}), workdir, servers=1)
    try:
        built.servers[0].final_state = "running"
        deployment = send(built, seed=7, roundtimeout=9).json()["id"]
        url = f"{built.url}/deployments/{deployment}"
        deadline = time.monotonic() + 20
        # The stand-in agents report no SuperNodes: once running, the MLFO sees every client lost.
        while (record := requests.get(url, timeout=5).json())["clients"][1]["state"] != "lost":
            assert time.monotonic() < deadline, record
            time.sleep(0.1)
        serv = built.servers[0].serv_calls[0]
        assert (serv["seed"], float(serv["roundtimeout"])) == ("7", 9.0)
        assert [c["seed"] for a in built.clients for c in a.cli_calls] == ["7", "7", "7"]

        restarted = requests.post(f"{url}/clients/1/restart", timeout=10)
        assert restarted.status_code == 200, restarted.text
        assert restarted.json()["part"] == 1
        agent = next(a for a in built.clients if a.address == record["clients"][1]["agent"])
        assert [c["part"] for c in agent.cli_calls] == ["1", "1"]  # a second SuperNode on the same agent
        client = requests.get(url, timeout=5).json()["clients"][1]
        assert client["restarts"][0]["lost_reason"] == "exited"

        stopped = CliRunner().invoke(cli, ["intent", "stop", deployment, "--mlfo", built.url.removeprefix("http://"), "--json"])
        assert stopped.exit_code == 0, stopped.output
        record = requests.get(url, timeout=5).json()
        assert (record["state"], record["reason"]) == ("failed", "stopped on request")
        assert built.servers[0].stop_calls == [deployment]  # its server stopped, by name
        assert all(a.stop_calls == [deployment] for a in built.clients if a.cli_calls)
        again = requests.post(f"{url}/stop", timeout=10)
        assert again.status_code == 409 and "is failed" in again.json()["message"]

        missing = requests.post(f"{url}/clients/9/restart", timeout=10)
        assert missing.status_code == 404 and "no client part 9" in missing.json()["message"]
        assert requests.post(f"{built.url}/deployments/nope/clients/0/restart", timeout=10).status_code == 404
        finished = requests.post(f"{url}/clients/1/restart", timeout=10)
        assert finished.status_code == 409 and "is failed" in finished.json()["message"]
        mlfo = built.url.removeprefix("http://")
        by_cli = CliRunner().invoke(cli, ["intent", "restart-client", deployment, "1", "--mlfo", mlfo, "--json"])
        assert by_cli.exit_code == 12 and "is failed" in json.loads(by_cli.stdout)["message"], by_cli.output
        assert requests.get(f"{built.url}/health", timeout=5).status_code == 200  # and it kept serving
    finally:
        close(closables)


def test_the_campus_takes_each_round_as_it_ends_and_closes_without_waiting_for_the_next(config: Config, workdir: Path) -> None:
    """The watch asks the server's agent to answer when the next round ends: the round shows at once, although the
    MLFO would poll only every 30 s here and check clients once a minute; and closing the MLFO does not wait for
    the ask in flight."""
    slow = {"mlfo.poll_seconds": 30, "mlfo.client_check_seconds": 60, "mlfo.lost_after_seconds": 120}
    built, closables = start_orchestra(config.with_overrides(slow), workdir, servers=1)
    try:
        agent = built.servers[0]
        agent.final_state, agent.waits = "running", True
        deployment = send(built, cohortsize=2, numround=5).json()["id"]
        deadline = time.monotonic() + 10
        while len(built.campus.deployment(deployment).rounds) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(built.campus.deployment(deployment).rounds) == 2  # what the agent had when it was first asked
        time.sleep(0.5)  # the watch now waits on the agent for round 3
        agent.rounds.append({"round": 3, "loss": 0.3, "accuracy": 0.93, "time": 0})
        ended = time.monotonic()
        while len(built.campus.deployment(deployment).rounds) < 3 and time.monotonic() < ended + 20:
            time.sleep(0.05)
        seen = time.monotonic() - ended
        assert len(built.campus.deployment(deployment).rounds) == 3
        assert seen < 5, f"round 3 showed {seen:.1f} s after it ended: the watch did not wait on the agent"
        time.sleep(0.5)  # waiting on the agent for round 4
        closing = time.monotonic()
        built.campus.close()
        assert time.monotonic() - closing < 5, "closing the campus MLFO waited for the agent's answer"
    finally:
        close(closables)
