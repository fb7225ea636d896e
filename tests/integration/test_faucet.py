"""Faucet as the network's controller, for real (root): it forwards every packet of the small layout,
mlfo's meters go through its configuration, FL runs through it and Prometheus scrapes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mlfo_toolkit.net.faucet import CHECKOUT_FAUCET
from mlfo_toolkit.util.processes import free_port
from tests.helpers import REPO, require_binary, require_network_tools

pytestmark = [pytest.mark.root, pytest.mark.slow]

FAUCET_COOKIE = "cookie=0x5adc15c0"  # Faucet's default cookie: its flows, not mlfo's


def mlfo(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlfo_toolkit", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def ofctl(*args: str) -> str:
    return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True, text=True, check=True).stdout


def faucet_flows(switch: str) -> list[str]:
    """Faucet's own flows on a switch, without counters and without the hosts it learned (those come and go)."""
    lines = ofctl("--no-stats", "dump-flows", switch).splitlines()
    return sorted(line.strip() for line in lines if "dl_src=" not in line and "dl_dst=" not in line)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_network_tools()
    if not CHECKOUT_FAUCET.exists():
        pytest.skip("needs Faucet (`make faucet` installs it in .venv-faucet)")
    workdir = tmp_path_factory.mktemp("faucet")
    port, openflow, metrics = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    env |= {"MLFO_PATHS__STATE_DIR": str(workdir / "state"), "MLFO_PATHS__RUNS_DIR": str(workdir / "runs"),
            "MLFO_FAUCET__OPENFLOW_PORT": str(openflow), "MLFO_FAUCET__PROMETHEUS_PORT": str(metrics)}
    # The small layout with every FL client a Jetson Nano (0.4 cores, 2 GB, 200 Mbit/s): a topology's device profiles.
    text = (REPO / "topologies" / "small.yaml").read_text()
    assert text.count('    campus: "{s}"\n') == 1
    topology = workdir / "small-jetson.yaml"
    topology.write_text(text.replace('    campus: "{s}"\n', '    campus: "{s}"\n    profile: jetson-nano\n'))
    started = mlfo(env, workdir, "topo", "up", "--topology", str(topology), "--param", f"publish_port={port}", "--controller", "faucet",
                   "--detach")
    assert started.returncode == 0, started.stderr
    state = json.loads((workdir / "state" / "network.json").read_text())
    try:
        yield {"env": env, "workdir": workdir, "port": port, "state": state, "openflow": openflow, "metrics": metrics}
    finally:
        down = mlfo(env, workdir, "topo", "down")
        assert down.returncode == 0, down.stderr
        faucet = next(p for p in state["processes"] if p["name"] == "faucet")
        assert not Path(f"/proc/{faucet['pid']}").exists(), "Faucet outlived topo down"
        bridges = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True, check=True).stdout.split()
        assert not set(bridges) & set(state["bridges"])


def test_faucet_forwards_every_packet(network: dict[str, Any]) -> None:
    state = network["state"]
    assert state["extra"]["controller"]["kind"] == "faucet"
    assert state["extra"]["controller"]["openflow"] == f"127.0.0.1:{network['openflow']}"
    for bridge in state["bridges"]:
        # secure: without the controller's flows the switch forwards nothing
        assert subprocess.run(["ovs-vsctl", "get-fail-mode", bridge], capture_output=True, text=True).stdout.strip() == "secure"
        assert subprocess.run(["ovs-vsctl", "get-controller", bridge], capture_output=True, text=True).stdout.strip() == \
            f"tcp:127.0.0.1:{network['openflow']}"
        flows = ofctl("dump-flows", bridge).splitlines()[1:]
        assert flows and all(FAUCET_COOKIE in f for f in flows), flows[:3]
    ping = mlfo(network["env"], network["workdir"], "topo", "ping", "--json")
    assert ping.returncode == 0, ping.stderr
    mesh = json.loads(ping.stdout)
    assert mesh["pairs"] == 13 * 12 and mesh["loss_percent"] == 0.0, mesh["failed"][:5]
    # Faucet listens on loopback only, on the ports the config gave it
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    faucet_pid = next(p["pid"] for p in state["processes"] if p["name"] == "faucet")
    sockets = [line.split()[3] for line in listening.splitlines() if f"pid={faucet_pid}," in line]
    assert sorted(sockets) == sorted([f"127.0.0.1:{network['openflow']}", f"127.0.0.1:{network['metrics']}"])


def test_the_topologys_device_profiles_are_applied_at_up(network: dict[str, Any]) -> None:
    status = json.loads(mlfo(network["env"], network["workdir"], "topo", "status", "--json").stdout)
    clients = {h["name"] for h in network["state"]["hosts"] if h["role"] == "fl-client"}
    assert set(status["profiles"]) == clients and len(clients) == 6
    assert {(p["profile"], p["cpus"], p["memory_mb"], p["link_mbit"]) for p in status["profiles"].values()} == {("jetson-nano", 0.4, 2048.0, 200.0)}
    host = next(h for h in network["state"]["hosts"] if h["name"] == "fc.20")
    assert (Path(host["cgroup"]) / "cpu.cfs_quota_us").read_text().strip() == "40000"
    assert int((Path(host["memory_cgroup"]) / "memory.limit_in_bytes").read_text()) == 2048 * 1024 * 1024
    agent = next(p for p in network["state"]["processes"] if p["host"] == "fc.20" and p["name"] == "agent")
    assert str(agent["pid"]) in (Path(host["memory_cgroup"]) / "cgroup.procs").read_text().split()  # its agent is in it
    rates = subprocess.run(["tc", "class", "show", "dev", "swCampus2-eth1"], capture_output=True, text=True).stdout
    assert "rate 200Mbit" in rates, rates


def test_meter_through_faucet_limits_the_cohort_and_clear_leaves_faucet_alone(network: dict[str, Any]) -> None:
    env, workdir = network["env"], network["workdir"]
    before = {s: faucet_flows(s) for s in ("swCampus1", "swEdge0")}
    result = mlfo(env, workdir, "meter", "verify", "--port", "1", "--rate", "10mbit", "--json")  # the network's controller
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["controller"] == "faucet"
    assert report["unmetered_mbit"] >= 100 and report["other_cohort_mbit"] >= 100, report
    assert 5 <= report["metered_mbit"] <= 11, report
    assert "meter=1 " in ofctl("dump-meters", "swCampus1") and "meter=1001 " in ofctl("dump-meters", "swEdge0")
    shown = json.loads(mlfo(env, workdir, "meter", "show", "--json").stdout)
    assert shown["1"]["controller"] == "faucet" and all(o["flows"] for o in shown["1"]["observed"])
    cleared = mlfo(env, workdir, "meter", "clear")
    assert cleared.returncode == 0, cleared.stderr
    for switch in ("swCampus1", "swEdge0"):
        assert "meter=" not in ofctl("dump-meters", switch)
        assert faucet_flows(switch) == before[switch]  # Faucet's forwarding exactly as it was
    assert json.loads(mlfo(env, workdir, "topo", "ping", "--json").stdout)["loss_percent"] == 0.0


def test_fl_runs_through_faucet_and_prometheus_scrapes_it(network: dict[str, Any]) -> None:
    for tool in ("prometheus", "prometheus-node-exporter", "promtool"):
        require_binary(tool)
    env = network["env"] | {"MLFO_MONITOR__PROMETHEUS_PORT": str(free_port()), "MLFO_MONITOR__SCRAPE_INTERVAL": "1s"}
    workdir = network["workdir"]
    up = mlfo(env, workdir, "monitor", "up", "--json")
    assert up.returncode == 0, up.stderr
    url = json.loads(up.stdout)["prometheus"]
    try:
        cohorts = workdir / "cohorts.yaml"
        text = (REPO / "intents" / "cohorts-small.yaml").read_text().replace("rounds: 5", "rounds: 2")
        cohorts.write_text(text.replace("intent: welding.yaml", f"intent: {REPO / 'intents' / 'welding.yaml'}"))
        sent = mlfo(env, workdir, "intent", "send", str(cohorts), "--mlfo", f"127.0.0.1:{network['port']}", "--wait", "--json", timeout=600)
        assert sent.returncode == 0, sent.stderr[-2000:]
        summary = json.loads(sent.stdout)
        for cohort in summary["cohorts"]:
            assert cohort["state"] == "done" and len(cohort["accuracy"]) == 2 and cohort["accuracy"][-1] > 0.5, cohort

        def switches_up() -> set[str]:
            answer = requests.get(f"{url}/api/v1/query", params={"query": 'dp_status{job="faucet"} == 1'}, timeout=5).json()
            return {r["metric"].get("dp_name", "") for r in answer["data"]["result"]}

        deadline = time.monotonic() + 30
        while switches_up() != set(network["state"]["bridges"]) and time.monotonic() < deadline:
            time.sleep(1)
        assert switches_up() == set(network["state"]["bridges"])
    finally:
        down = mlfo(env, workdir, "monitor", "down")
        assert down.returncode == 0, down.stderr
