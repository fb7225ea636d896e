"""Real Flower on loopback: `mlfo demo` trains, reports, and leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from mlfo_toolkit.agent.node import NodeAgent
from mlfo_toolkit.config import Config
from mlfo_toolkit.http.agent_routes import agent_app
from mlfo_toolkit.http.server import HttpServer
from tests.helpers import REPO, processes_under

pytestmark = [pytest.mark.flower, pytest.mark.slow]


@pytest.mark.parametrize("isolation", ["shared", "shared/per-message", "subprocess"])
def test_demo_json_trains_and_cleans_up(workdir: Path, isolation: str) -> None:
    # shared: the executor forks every Flower process, and keeps one ClientApp process per SuperNode; per-message:
    # a ClientApp process forked per message; subprocess: Flower's own deployment, the comparison.
    isolation, _, processes = isolation.partition("/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")} | {
        "MLFO_FL__ISOLATION": isolation, "MLFO_FL__CLIENTAPP_PROCESSES": processes or "per-node"}
    out = subprocess.run(
        [sys.executable, "-m", "mlfo_toolkit", "demo", "--json", "--cohorts", "1", "--clients", "3", "--rounds", "4"],
        capture_output=True, text=True, timeout=400, cwd=workdir, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert set(summary) >= {"cohorts", "orchestration_seconds", "run_dir"}
    (cohort,) = summary["cohorts"]
    assert isinstance(cohort["name"], str) and cohort["strategy"] == "FedAvg" and cohort["clients"] == 3
    assert len(cohort["accuracy"]) == len(cohort["loss"]) == 4
    assert cohort["accuracy"][-1] >= 0.85
    assert cohort["accuracy"][-1] > cohort["accuracy"][0] and cohort["loss"][-1] < cohort["loss"][0]
    assert all(isinstance(s, float) and s > 0 for s in summary["orchestration_seconds"])
    run_dir = workdir / summary["run_dir"]
    assert (run_dir / "run.json").is_file()
    assert (run_dir / "accuracy-loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "executor").exists() == (isolation == "shared")
    if isolation == "shared":
        # Each client's tasks ran in the one process kept for its SuperNode, or each in a process of its own.
        pids = [[line.split("(PID ")[1].split(")")[0] for line in log.read_text().splitlines()
                 if line.startswith("mlfo executor: task")] for log in run_dir.rglob("clientapp.log")]
        assert sum(len(p) for p in pids) == sum(cohort["results"]) >= 4, pids  # so a client trained twice or more
        assert all(len(set(p)) == (1 if processes == "" else len(p)) for p in pids if p), pids
    assert processes_under(workdir) == []


def test_demo_runs_a_researchers_own_flower_app_unchanged(workdir: Path) -> None:
    example = REPO / "examples" / "sklearn-digits"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in example.rglob("*") if "__pycache__" not in p.parts)
    out = subprocess.run(
        [sys.executable, "-m", "mlfo_toolkit", "demo", "--json", "--app", str(example), "--cohorts", "1", "--clients", "3",
         "--rounds", "3"],
        capture_output=True, text=True, timeout=400, cwd=workdir,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (cohort,) = json.loads(out.stdout)["cohorts"]
    # The app's own server-side evaluation, read under its own metric names, round by round.
    assert len(cohort["accuracy"]) == 3 and cohort["accuracy"][-1] >= 0.85
    assert cohort["accuracy"][-1] > cohort["accuracy"][0] and cohort["loss"][-1] < cohort["loss"][0]
    # The intent's fraction_fit (0.5 of 3) reached the app's fraction-train; every sampled client answered.
    assert cohort["sampled"] == [2, 2, 2] and cohort["results"] == [2, 2, 2]
    for phases, seconds in zip(cohort["phases"], cohort["round_seconds"]):
        assert phases["train"] > 0 and phases["receive"] > 0  # timed by the executor around the app's ClientApp
        assert sum(phases.values()) == pytest.approx(seconds, abs=0.05)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in example.rglob("*") if "__pycache__" not in p.parts) == before
    assert processes_under(workdir) == []


def test_a_cohorts_partition_is_what_its_clients_train_on_and_the_report_draws_it(workdir: Path) -> None:
    cohorts = workdir / "cohorts.yaml"
    cohorts.write_text(f"defaults: {{fraction_fit: 1.0, rounds: 2}}\ncohorts:\n  - name: skewed\n    size: 3\n"
                       f"    intent: {REPO / 'intents' / 'welding.yaml'}\n    min_available: 3\n"
                       f"    partition: {{kind: pathological, classes: 2, seed: 3}}\n")
    run = subprocess.run([sys.executable, "-m", "mlfo_toolkit", "demo", "--cohort-file", str(cohorts), "--json"],
                         capture_output=True, text=True, timeout=400, cwd=workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    (cohort,) = summary["cohorts"]
    shown = subprocess.run([sys.executable, "-m", "mlfo_toolkit", "data", "show", "--clients", "3", "--partitioning",
                            "pathological", "--classes", "2", "--seed", "3", "--json"], capture_output=True, text=True, cwd=workdir)
    assert cohort["partition"]["kind"] == "pathological" and cohort["partition"]["seed"] == 3
    assert cohort["label_counts"] == json.loads(shown.stdout)["label_counts"]  # the split `data show` promised
    assert all(sum(1 for n in row if n) <= 2 for row in cohort["label_counts"])
    assert cohort["accuracy"][-1] > 0.1 and cohort["state"] == "done"
    report = subprocess.run([sys.executable, "-m", "mlfo_toolkit", "report", summary["run_dir"], "--json"],
                            capture_output=True, text=True, cwd=workdir)
    assert report.returncode == 0, report.stderr
    assert (workdir / summary["run_dir"] / "report" / "labels.png").read_bytes()[:4] == b"\x89PNG"
    assert processes_under(workdir) == []


@pytest.fixture
def agent(config: Config, workdir: Path):  # type: ignore[no-untyped-def]
    node = NodeAgent(config.with_overrides({"agent.fl_server_port": 0}), work_dir=workdir / "agent")
    server = HttpServer(agent_app(node), "127.0.0.1", 0).start()
    yield f"http://{server.address}", node
    node.stop()
    server.close()


def test_agent_contract_and_typed_validation(agent, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    url, node = agent
    bad = [
        ("/serv", {"algo": "FedMagic", "fracfit": "1", "minfit": "1", "minav": "1", "numround": "1"}, "algo"),
        ("/serv", {"algo": "FedAvg", "fracfit": "1", "minfit": "1", "minav": "1", "numround": "ten"}, "numround"),
        ("/serv", {"algo": "FedAvg", "fracfit": "1", "minfit": "1", "minav": "1", "numround": "1", "source": "handmnist; rm -rf /"}, "source"),
        ("/cli", {"source": "handmnist", "model": "simple", "server": "127.0.0.1", "cohsize": "2", "part": "0"}, "server"),
        ("/cli", {"source": "handmnist", "model": "simple", "server": "$(reboot):1", "cohsize": "2", "part": "0"}, "server"),
        ("/cli", {"source": "handmnist", "model": "simple", "server": "127.0.0.1:6000", "cohsize": "2", "part": "2"}, "part"),
        ("/cli", {"source": "handmnist", "model": "resnet", "server": "127.0.0.1:6000", "cohsize": "2", "part": "0"}, "model"),
    ]
    for path, fields, field in bad:
        answer = requests.post(url + path, data=fields, timeout=10)
        assert answer.status_code == 400, (path, fields, answer.text)
        assert answer.json()["field"] == field
    assert requests.get(url + "/status", timeout=5).json() == {"node": "127.0.0.1", "server": None, "clients": []}
    # Placement measurements: a path to an FL server agent of the pool (here: this agent, as another one's
    # server), never to another host or service, which would get the southbound token the download carries.
    prober = NodeAgent(node.config.with_overrides({"ip_plan.servers": [url.removeprefix("http://")]}), work_dir=workdir / "prober")
    prober_http = HttpServer(agent_app(prober), "127.0.0.1", 0).start()
    try:
        path = requests.post(f"http://{prober_http.address}/probe", data={"target": url.removeprefix("http://"), "bytes": "1000000"},
                             timeout=30)
        assert path.status_code == 200, path.text
        assert path.json()["bytes"] == 1_000_000 and path.json()["rate_mbit"] > 10 and path.json()["rtt_ms"] > 0
        for elsewhere in ("10.9.9.9:5000", prober_http.address):
            outside = requests.post(f"http://{prober_http.address}/probe", data={"target": elsewhere}, timeout=10)
            assert outside.status_code == 400 and outside.json()["field"] == "target"
    finally:
        prober_http.close()
        prober.close()
    assert requests.get(url + "/probe/blob", params={"bytes": 10**9}, timeout=10).status_code in (400, 422)
    capacity = requests.get(url + "/capacity", timeout=10).json()
    assert 0 <= capacity["cpus_free"] <= capacity["machine_free"] + 1e-6
    relay = requests.post(url + "/cli", data={"source": "handmnist", "model": "simple", "server": "127.0.0.1:6000", "cohsize": "2",
                                              "part": "0", "deployment": "d1", "relay": "true"}, timeout=10)
    assert relay.status_code == 409 and "no edge aggregator" in relay.json()["message"]  # a relay needs its edge run here

    serv = {"algo": "fedavg", "fracfit": "1", "minfit": "1", "minav": "1", "numround": "1", "model": "simple"}
    missing = requests.post(url + "/serv", data={"algo": "fedavg", "numround": "1"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["field"] == "fracfit"  # the prototype's fields are required
    started = requests.post(url + "/serv", data=serv, timeout=90)
    assert started.status_code == 201, started.text
    address = started.json()["server"]
    again = requests.post(url + "/serv", data={**serv, "numround": "2"}, timeout=10)
    assert again.status_code == 409  # one FL server per node at a time
    # The agent's first client starts its executor (Flower's imports) before the SuperNode: as long as /serv may take.
    client = requests.post(
        url + "/cli", data={"source": "handmnist", "model": "simple", "server": address, "cohsize": "1", "part": "0"}, timeout=90
    )
    assert client.status_code == 201
    status = requests.get(url + "/status", timeout=5).json()
    assert status["server"]["address"] == address and status["server"]["strategy"] == "FedAvg"
    assert status["clients"][0]["state"] == "running"
    stopped = requests.post(url + "/stop", timeout=60).json()
    assert address in stopped["stopped"]
    assert processes_under(workdir) == []


def test_two_tiers_train_for_real_and_only_the_edges_aggregates_reach_the_global_server(workdir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mlfo_toolkit", "demo", "--json", "--cohorts", "1", "--clients", "6", "--rounds", "3",
         "--aggregation", "hierarchical", "--edges", "2", "--local-rounds", "2"],
        capture_output=True, text=True, timeout=400, cwd=workdir,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (cohort,) = json.loads(out.stdout)["cohorts"]
    assert cohort["aggregation"] == "hierarchical" and cohort["local_rounds"] == 2
    first, second = cohort["tiers"]
    assert (first["parts"], second["parts"]) == ([0, 1, 2], [3, 4, 5])
    assert len({first["server"], second["server"], cohort["server"]}) == 3  # two edge SuperLinks and the global one
    by_part = {c["part"]: c["agent"] for c in cohort["client_agents"]}
    assert (first["agent"], second["agent"]) == (by_part[0], by_part[3])  # each edge on its first client's host
    # The global server sampled one client per edge, and the model learned.
    assert cohort["sampled"] == [2, 2, 2] and cohort["results"] == [2, 2, 2]
    assert cohort["accuracy"][-1] >= 0.85 and cohort["accuracy"][-1] > cohort["accuracy"][0]
    # What reached the global SuperLink: two updates a round (the model is 38 kB), not six.
    model_bytes = 38_480
    received = cohort["traffic"]["bytes_received"]
    assert 3 * 2 * model_bytes <= received < 3 * 4 * model_bytes, received
    # ... while each edge's SuperLink took its three clients' updates, two local rounds a global round (as last polled).
    assert all(t["traffic"]["bytes_received"] >= 6 * model_bytes for t in (first, second)), (first, second)
    assert processes_under(workdir) == []


def test_auto_measures_each_edge_and_a_researchers_policy_places_the_aggregators(workdir: Path) -> None:
    (workdir / "second_only.py").write_text(
        "class SecondOnly:\n"
        "    def place(self, observation):\n"
        "        return [{'edge': e['edge'], 'aggregate': e['edge'] == 1, 'reason': f\"measured {e['rate_mbit']} Mbit/s\"}\n"
        "                for e in observation['edges']]\n")
    policy = f"{workdir / 'second_only.py'}:SecondOnly"
    (workdir / "mlfo.yaml").write_text(f"placement:\n  policy: {policy}\n  allowed_policies: [{policy}]\n  probe_bytes: 500000\n")
    out = subprocess.run(
        [sys.executable, "-m", "mlfo_toolkit", "demo", "--json", "--cohorts", "1", "--clients", "6", "--rounds", "3",
         "--aggregation", "auto", "--edges", "2"],
        capture_output=True, text=True, timeout=400, cwd=workdir,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (cohort,) = json.loads(out.stdout)["cohorts"]
    placement = next(d for d in cohort["decisions"] if d["trigger"] == "placement")
    assert placement["policy"] == policy
    measured = placement["observed"]["edges"]
    assert [e["link_source"] for e in measured] == ["measured", "measured"] and all(e["rate_mbit"] > 10 for e in measured)
    assert placement["observed"]["model_bytes"] == 38_480
    assert [a["kind"] for a in placement["actions"]] == ["flat", "aggregate_at_edge"]
    # Only the second edge got an aggregator: its three clients train under it, the first edge's three talk to
    # the global server, which samples four members a round.
    (tier,) = cohort["tiers"]
    assert tier["parts"] == [3, 4, 5] and tier["edge"] == 0
    assert cohort["sampled"] == [4, 4, 4] and cohort["results"] == [4, 4, 4]
    assert cohort["accuracy"][-1] > cohort["accuracy"][0]
    assert processes_under(workdir) == []
