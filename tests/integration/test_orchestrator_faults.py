"""When the orchestrators themselves fail (issue 18): a cloud MLFO that forgot its allocations, a store
that cannot be written or read, identical deploys at once, stalled uploads, a token a cohort file
could collect, a stop racing a restart, a burst of intents. Stand-in agents, no Flower."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import StorageError
from mlfo_toolkit.http.routes import cloud_app
from mlfo_toolkit.http.server import HttpServer
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.cloud import CloudMlfo
from mlfo_toolkit.orchestrator.store import Store
from tests.helpers import REPO, wait_for
from tests.helpers.fakes import FakeAgent
from tests.helpers.orchestra import WELDING, Orchestra, close, send, start_orchestra

# Janitors every 0.2 s; a run that ended unreleased is freed by the cloud after 30 s (its own test: 1 s).
FAST = {"mlfo.janitor_seconds": 0.2, "mlfo.release_grace_seconds": 30.0}



def running(built: Orchestra, deployment: str) -> bool:
    return built.campus.deployment(deployment).state == "running"


def momo(deployment: str) -> dict[str, Any]:
    constraints = {"sourcekind": "handmnist", "modelkind": "complex", "avgalgo": "FedAvg", "fracfit": 0.5, "minfit": 1, "minav": 1,
                   "numround": 2, "deployment": deployment, "cohort": "c"}
    return {"intentID": "x.momo", "targets": [{"id": "cloud.fl", "operation": "aggregate.global", "operand": "model.federated",
                                               "constraints": constraints}]}


# --- 1: the cloud MLFO recovers its allocations -----------------------------------------------------
def test_a_restarted_cloud_frees_what_runs_nothing_and_stops_what_no_allocation_owns(config: Config, workdir: Path) -> None:
    agents = [FakeAgent(final_state="running") for _ in range(2)]
    cfg = config.with_overrides({"ip_plan.servers": [a.address for a in agents], **FAST})
    try:
        cloud = CloudMlfo(cfg, Store(workdir / "cloud.sqlite3"))
        kept, gone = cloud.deploy(momo("kept")), cloud.deploy(momo("gone"))
        cloud.close()  # the cloud dies: nothing is released
        assert {kept["agent"], gone["agent"]} == {a.address for a in agents}
        # While it was away: one server stopped on its own; a server no allocation owns appears on the other agent.
        by_agent = {a.address: a for a in agents}
        by_agent[gone["agent"]].server_stopped = True
        restarted = CloudMlfo(cfg, Store(workdir / "cloud.sqlite3"))
        try:
            active = {a.deployment for a in restarted.allocations() if a.active}
            assert active == {"kept"}, restarted.allocations()
            assert restarted.recovery["released"] == ["gone"]
            assert restarted.deploy(momo("next"))["agent"] == gone["agent"]  # the freed server is given again
            by_agent[kept["agent"]].serv_calls.append({"deployment": "orphan"})  # it now runs a server nobody owns
            assert wait_for(lambda: "orphan" in by_agent[kept["agent"]].stop_calls)
        finally:
            restarted.close()
    finally:
        for agent in agents:
            agent.close()


def test_a_server_started_while_the_janitor_asked_is_neither_freed_nor_stopped(config: Config, workdir: Path) -> None:
    """The janitor's answers from the agents can predate a server deployed meanwhile: that allocation is not
    freed on their word (the next check would have stopped its server as owned by nobody)."""
    agent = FakeAgent(final_state="running")
    cloud = CloudMlfo(config.with_overrides({"ip_plan.servers": [agent.address], "mlfo.janitor_seconds": 3600.0}),
                      Store(workdir / "cloud.sqlite3"))
    try:
        agent.status_delay = 1.0  # its answer "no server here" arrives after the deploy below
        checking = threading.Thread(target=cloud.reconcile)
        checking.start()
        time.sleep(0.3)
        cloud.deploy(momo("new"))
        checking.join()
        agent.status_delay = 0.0
        assert [a.deployment for a in cloud.allocations() if a.active] == ["new"]
        assert cloud.reconcile() == {"released": [], "stopped": []}
        assert "new" not in agent.stop_calls
    finally:
        cloud.close()
        agent.close()


def test_a_run_that_ended_unreleased_frees_its_server_after_the_grace(config: Config, workdir: Path) -> None:
    agent = FakeAgent(final_state="done")
    cloud = CloudMlfo(config.with_overrides({"ip_plan.servers": [agent.address], **FAST, "mlfo.release_grace_seconds": 1.0}),
                      Store(workdir / "cloud.sqlite3"))
    try:
        cloud.deploy(momo("finished"))  # its campus never releases it (gone for good)
        assert wait_for(lambda: not any(a.active for a in cloud.allocations()), timeout=10)
        assert "finished" in agent.stop_calls
    finally:
        cloud.close()
        agent.close()


def test_a_release_the_cloud_missed_is_asked_again_until_it_answers(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config.with_overrides(FAST), workdir, servers=1)
    try:
        built.servers[0].final_state = "running"
        deployment = send(built, cohortsize=2).json()["id"]
        assert wait_for(lambda: running(built, deployment))
        cloud_http = next(c for c in closables if isinstance(c, HttpServer) and built.cloud_url.endswith(c.address))
        cloud_http.close()  # the cloud MLFO is down
        built.servers[0].final_state = "done"
        assert wait_for(lambda: built.campus.deployment(deployment).state == "done")
        time.sleep(0.5)
        assert built.campus.deployment(deployment).released is False  # asked, not answered
        host, port = cloud_http.address.rsplit(":", 1)
        again = HttpServer(cloud_app(built.cloud), host, int(port)).start()  # back on its address
        closables.append(again)
        assert wait_for(lambda: built.campus.deployment(deployment).released is True)
        assert not any(a.active for a in built.cloud.allocations())
    finally:
        close(closables)


# --- 2: a store that cannot be written ----------------------------------------------------------------
def test_the_store_reports_a_full_disk_naming_the_file(workdir: Path) -> None:
    store = Store(workdir / "s.sqlite3")
    store.put("k", "a", {"x": 1}, 1.0)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(StorageError) as full:
        store.put("k", "b", {"x": "y" * 100_000}, 2.0)
    assert "database or disk is full" in full.value.message and str(workdir / "s.sqlite3") in full.value.message


def test_a_store_that_cannot_be_written_fails_the_run_with_the_reason_and_loses_nothing(
        config: Config, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built, closables = start_orchestra(config.with_overrides(FAST), workdir, servers=1)
    try:
        built.servers[0].final_state = "running"
        deployment = send(built, cohortsize=2).json()["id"]
        assert wait_for(lambda: running(built, deployment) and built.campus.deployment(deployment).rounds)
        store = built.campus.table.store
        real_put = store.put

        def full(*args: Any, **kwargs: Any) -> None:
            raise StorageError(f"cannot write the store {store.path}: database or disk is full", path=str(store.path))

        monkeypatch.setattr(store, "put", full)
        record = built.wait(deployment)  # the watcher's next write fails: the deployment ends, it is not left running
        assert record["state"] == "failed" and "database or disk is full" in record["reason"], record
        assert str(store.path) in record["reason"] and len(record["rounds"]) == 2  # what it measured is kept
        refused = send(built, cohortsize=2, ipstart=12)
        assert refused.status_code == 507 and str(store.path) in refused.json()["message"]
        metrics = requests.get(f"{built.url}/metrics", timeout=5).text
        assert 'mlfo_store_errors_total{role="campus"}' in metrics
        monkeypatch.setattr(store, "put", real_put)  # space again: the janitor writes what was not saved
        assert wait_for(lambda: not built.campus.table.unsaved)
        assert Store(store.path).get("deployment", deployment)["state"] == "failed"  # type: ignore[index]
    finally:
        close(closables)


# --- 6: a store that cannot be read -----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_store_is_moved_aside_and_the_campus_starts_clean(config: Config, workdir: Path, damage: str) -> None:
    path = workdir / "campus.sqlite3"
    store = Store(path)
    store.put("deployment", "x", {"id": "x"}, 1.0)
    store.close()
    data = path.read_bytes()
    path.write_bytes(b"this is not a database" * 100 if damage == "garbage" else data[:1000])
    campus = CampusMlfo(config.with_overrides(FAST), Store(path))
    try:
        aside = campus.recovery["moved_aside"]
        assert aside and Path(aside).exists() and aside.startswith(str(path) + ".corrupt-")
        assert campus.deployments() == []
    finally:
        campus.close()


def test_bad_rows_are_skipped_and_reported(config: Config, workdir: Path) -> None:
    path = workdir / "campus.sqlite3"
    built, closables = start_orchestra(config.with_overrides(FAST), workdir)
    try:
        good = built.wait(send(built, cohortsize=2).json()["id"])
    finally:
        close(closables)
    store = Store(path)
    store._db.execute("INSERT INTO records VALUES ('deployment', 'notjson', 2e9, '{broken')")
    store.put("deployment", "nostate", {k: v for k, v in {**good, "id": "nostate"}.items() if k != "state"}, 2e9 + 1)
    store.close()
    campus = CampusMlfo(config.with_overrides(FAST), Store(path))
    try:
        assert [d.id for d in campus.deployments()] == [good["id"]]
        skipped = {s["id"]: s["reason"] for s in campus.recovery["skipped"]}
        assert "not JSON" in skipped["notjson"] and "state" in skipped["nostate"], skipped
    finally:
        campus.close()


# --- 4: identical Mo-Mo deploys at once -------------------------------------------------------------------
def test_two_identical_deploys_at_once_start_one_server(config: Config, workdir: Path) -> None:
    agents = [FakeAgent() for _ in range(2)]
    cloud = CloudMlfo(config.with_overrides({"ip_plan.servers": [a.address for a in agents], **FAST}), Store(workdir / "c.sqlite3"))
    try:
        for attempt in range(10):
            answers: list[dict[str, Any]] = []
            barrier = threading.Barrier(2)

            def deploy(name: str, answers: list[dict[str, Any]] = answers, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                answers.append(cloud.deploy(momo(name)))

            threads = [threading.Thread(target=deploy, args=(f"same-{attempt}",)) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert len(answers) == 2 and answers[0]["server"] == answers[1]["server"], answers
            cloud.release(f"same-{attempt}")
        assert sum(len(a.serv_calls) for a in agents) == 10  # one server per deployment, never two
    finally:
        cloud.close()
        for agent in agents:
            agent.close()


# --- 5: stalled uploads are cut off ----------------------------------------------------------------------
def test_half_sent_uploads_are_cut_off_and_hold_no_file_descriptor(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config.with_overrides({"api.request_seconds": 2.0, **FAST}), workdir, max_upload=1_048_576)
    host, port = built.url.removeprefix("http://").split(":")
    me = psutil.Process()
    before = me.num_fds()
    sockets = []
    try:
        head = (b"POST /receive HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 900000\r\n\r\n")
        for _ in range(100):
            sock = socket.create_connection((host, int(port)), timeout=10)
            part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="i.yaml"\r\n\r\n'
            sock.sendall(head + part + b"x" * 9000)  # 1 % of the body, then nothing
            sockets.append(sock)
        started = time.monotonic()
        answers = [_until_closed(sock) for sock in sockets]  # the server answers, then closes the connection
        assert time.monotonic() - started < 6
        assert all(a.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in a for a in answers), answers[:3]
        assert requests.get(f"{built.url}/health", timeout=5).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        close(closables)
    assert me.num_fds() <= before + 5


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# --- 8: the token goes only where the user sends it ------------------------------------------------------
def test_a_cohort_file_cannot_collect_the_token(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config.with_overrides(FAST), workdir, token="secret")
    try:
        (workdir / "w.yaml").write_bytes(WELDING)
        address = built.url.removeprefix("http://")
        cohorts = workdir / "c.yaml"
        cohorts.write_text(f"mlfo: {address}\ncohorts:\n  - {{name: a, size: 2, intent: w.yaml}}\n")
        env = {"MLFO_API__TOKEN": "secret", "MLFO_IP_PLAN__CLIENTS": json.dumps(built.config.ip_plan.clients)}
        refused = CliRunner().invoke(cli, ["intent", "send", str(cohorts), "--json"], env=env)
        assert refused.exit_code == 10, refused.output  # no token went: 401
        assert "--trust-file-mlfo" in json.loads(refused.stdout)["hint"]
        for flags in (["--trust-file-mlfo"], ["--mlfo", address]):
            sent = CliRunner().invoke(cli, ["intent", "send", str(cohorts), "--json", *flags], env=env)
            assert sent.exit_code == 0, sent.output
    finally:
        close(closables)


# --- 12: a stop and a restart exclude each other ---------------------------------------------------------
def test_a_stop_during_a_restart_leaves_no_client_running(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config.with_overrides({"mlfo.client_check_seconds": 0.2, **FAST}), workdir, servers=1, clients=2)
    try:
        built.servers[0].final_state = "running"
        deployment = send(built, cohortsize=2).json()["id"]
        assert wait_for(lambda: built.campus.deployment(deployment).client(1).state == "lost")  # type: ignore[union-attr]
        slow = built.clients[1]
        slow.cli_delay = 2.0  # the restart's start takes a while ...
        restart = threading.Thread(target=lambda: requests.post(f"{built.url}/deployments/{deployment}/clients/1/restart", timeout=30))
        restart.start()
        time.sleep(0.5)
        stopped = requests.post(f"{built.url}/deployments/{deployment}/stop", timeout=30)  # ... and a stop comes meanwhile
        restart.join(30)
        assert stopped.status_code == 200
        record = built.wait(deployment)
        assert record["state"] == "failed" and record["reason"] == "stopped on request"
        assert [c["state"] for c in record["clients"]] != ["running", "running"]
        assert not any(c["state"] == "running" for c in record["clients"]), record["clients"]
        assert slow.stop_calls.count(deployment) >= 1
    finally:
        close(closables)


# --- 14: a burst waits in a fair queue ---------------------------------------------------------------------
def test_a_burst_runs_in_turn_on_a_small_pool(config: Config, workdir: Path) -> None:
    built, closables = start_orchestra(config.with_overrides(FAST), workdir, servers=2, clients=6)
    try:
        ids = [send(built, cohortsize=2, ipstart=10 + 2 * (i % 3)).json()["id"] for i in range(8)]
        records = [built.wait(i, timeout=60) for i in ids]
        assert all(r["state"] == "done" for r in records), [(r["id"], r["state"], r["reason"]) for r in records if r["state"] != "done"]
        assert sum(len(a.serv_calls) for a in built.servers) == 8
    finally:
        close(closables)


def test_readme_documents_the_storage_exit_code() -> None:
    assert "| 13 | storage |" in (REPO / "README.md").read_text()


def test_a_form_python_multipart_cannot_parse_is_400_and_the_connection_serves_on(orchestra: Orchestra) -> None:
    with requests.Session() as session:  # one keep-alive connection
        for body, boundary in ((b"hello", "x"), (b"--" + b"b" * 200 + b"\r\n", "b" * 200)):
            bad = session.post(f"{orchestra.url}/receive", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                               timeout=10)
            assert bad.status_code == 400 and bad.json()["field"] in ("body", "file"), bad.text
            assert session.get(f"{orchestra.url}/health", timeout=10).status_code == 200
