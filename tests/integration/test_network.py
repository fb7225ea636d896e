"""The emulated network for real (root): small topology up, ping mesh, init, FL across it, clean teardown."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from mlfo_toolkit.net.builders.mininet import netem_available
from mlfo_toolkit.util.processes import free_port
from tests.helpers import REPO, require_network_tools, still_running

pytestmark = [pytest.mark.root, pytest.mark.slow]

MODEL_BYTES = (64 * 64 + 64 + 64 * 10 + 10) * 8  # the 'complex' model of the welding intent, float64
ROUNDS = 2
LOST_AFTER = 4
APP = "sklearn-digits"


def mlfo(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlfo_toolkit", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def interface_bytes(host_pid: int, interface: str) -> int:
    for line in Path(f"/proc/{host_pid}/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == interface:
            fields = counters.split()
            return int(fields[0]) + int(fields[8])  # received + sent
    raise AssertionError(f"no interface {interface}")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_network_tools()
    workdir = tmp_path_factory.mktemp("network")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    # An agent silent for 4 s is lost (10 s by default): the kill tests wait for it, and that wait is not what they test.
    env |= {"MLFO_PATHS__STATE_DIR": str(workdir / "state"), "MLFO_PATHS__RUNS_DIR": str(workdir / "runs"),
            "MLFO_MLFO__LOST_AFTER_SECONDS": str(LOST_AFTER)}
    # The shipped catalog plus an operand trained by the example Flower app, registered on every agent.
    catalog = yaml.safe_load((REPO / "intents" / "catalog.yaml").read_text())
    catalog["operands"]["robots.digits.accuracy"] = {"source": "handmnist", "model": f"app:{APP}"}
    (workdir / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    env |= {"MLFO_MLFO__CATALOG": str(workdir / "catalog.yaml"),
            "MLFO_FL__APPS": json.dumps({APP: {"path": str(REPO / "examples" / APP)}})}
    started = mlfo(env, workdir, "topo", "up", "--topology", "small", "--param", f"publish_port={port}", "--detach")
    assert started.returncode == 0, started.stderr
    state = json.loads((workdir / "state" / "network.json").read_text())
    info = {"env": env, "workdir": workdir, "port": port, "state": state, "up_stderr": started.stderr}
    try:
        yield info
    finally:
        # The hard way: topo up is SIGKILLed, and topo down must still remove everything it made.
        os.kill(state["owner_pid"], signal.SIGKILL)
        time.sleep(0.5)
        down = mlfo(env, workdir, "topo", "down")
        assert down.returncode == 0, down.stderr
        assert "state file" in down.stderr
        bridges = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True, check=True).stdout.split()
        assert not set(state["bridges"]) & set(bridges)
        assert [i for i in state["interfaces"] if Path(f"/sys/class/net/{i}").exists()] == []
        final = json.loads(json.dumps(state))
        pids = [h["pid"] for h in final["hosts"]] + [p["pid"] for p in info.get("processes", final["processes"])]
        alive = still_running(pids)
        assert alive == [], f"left running: {alive}"
        assert [c for c in state["cgroups"] if Path(c).exists()] == []
        assert not (workdir / "state" / "network.json").exists()


def test_up_reports_what_it_could_not_emulate(network: dict[str, Any]) -> None:
    state = network["state"]
    assert state["phase"] == "up" and len(state["hosts"]) == 13
    # This kernel has no netem: `topo up` says that link delays cannot be emulated; with netem it says nothing.
    netem = netem_available()
    assert any("netem" in w for w in state["warnings"]) is not netem
    assert ("link delays" in network["up_stderr"]) is not netem
    assert state["published"] == {"mo.1:8000": f"127.0.0.1:{network['port']}"}


def test_agents_in_the_network_are_closed_by_default(network: dict[str, Any]) -> None:
    state_dir = network["workdir"] / "state"
    token_file = state_dir / "southbound-token"
    for secret in (token_file, state_dir / "network-config.yaml"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    probe = ("import sys, urllib.request, urllib.error\n"
             "req = urllib.request.Request('http://10.0.1.10:5000/status', headers=dict(a.split('=', 1) for a in sys.argv[1:]))\n"
             "try:\n    print(urllib.request.urlopen(req, timeout=10).status)\n"
             "except urllib.error.HTTPError as err:\n    print(err.code)\n")
    anonymous = mlfo(network["env"], network["workdir"], "topo", "exec", "mo.1", "--", sys.executable, "-c", probe)
    assert anonymous.stdout.strip() == "401", anonymous.stdout + anonymous.stderr
    token = token_file.read_text().strip()
    carried = mlfo(network["env"], network["workdir"], "topo", "exec", "mo.1", "--", sys.executable, "-c", probe,
                   f"Authorization=Bearer {token}")
    assert carried.stdout.strip() == "200", carried.stdout + carried.stderr


def test_ping_mesh_has_no_loss(network: dict[str, Any]) -> None:
    result = mlfo(network["env"], network["workdir"], "topo", "ping", "--json")
    assert result.returncode == 0, result.stderr
    mesh = json.loads(result.stdout)
    assert mesh["pairs"] == 13 * 12 and mesh["loss_percent"] == 0.0 and mesh["failed"] == []


def test_exec_runs_inside_the_host(network: dict[str, Any]) -> None:
    result = mlfo(network["env"], network["workdir"], "topo", "exec", "fed.1", "--", "ip", "-br", "addr")
    assert result.returncode == 0 and "10.0.11.100/8" in result.stdout and "fed.1-eth0" in result.stdout
    missing = mlfo(network["env"], network["workdir"], "topo", "exec", "fed.9", "--", "true")
    assert missing.returncode == 4 and "no host 'fed.9'" in missing.stderr


def test_init_limits_cpu_and_starts_background_traffic(network: dict[str, Any]) -> None:
    result = mlfo(network["env"], network["workdir"], "init", "--cpus", "0.5", "--bg-rate", "5M", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cpu_limits"] == {"fed.1": 0.5, "fed.2": 0.5} and all(report["reachable"].values())
    state = json.loads((network["workdir"] / "state" / "network.json").read_text())
    network["processes"] = state["processes"]
    fed1 = next(h for h in state["hosts"] if h["name"] == "fed.1")
    assert (Path(fed1["cgroup"]) / "cpu.cfs_quota_us").read_text().strip() == "50000"
    agent = next(p for p in state["processes"] if p["host"] == "fed.1")
    assert str(agent["pid"]) in (Path(fed1["cgroup"]) / "cgroup.procs").read_text().split()
    iperf = {p["name"]: p for p in state["processes"] if p["name"].startswith("iperf3")}
    assert set(iperf) == {"iperf3-server", "iperf3-client"}
    time.sleep(2)
    assert all(psutil.pid_exists(p["pid"]) for p in iperf.values())
    app = next(h for h in state["hosts"] if h["name"] == "app.1")
    assert interface_bytes(app["pid"], "app.1-eth0") > 500_000  # 5 Mbit/s for 2 s is ~1.2 MB


def test_meter_limits_the_cohort_and_only_it(network: dict[str, Any]) -> None:
    env, workdir = network["env"], network["workdir"]
    result = mlfo(env, workdir, "meter", "verify", "--port", "1", "--rate", "10mbit", "--controller", "ovs", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["port"] == 1 and report["rate_mbit"] == 10
    # Userspace OVS on two busy cores moves 95-400 Mbit/s (the least with the other test worker's FL run beside it);
    # five times the meter shows it is not the meter.
    assert report["unmetered_mbit"] >= 50, report
    assert report["metered_mbit"] <= 12, report
    assert report["other_cohort_mbit"] >= 50, report

    def our_flows(switch: str) -> list[str]:
        dump = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch], capture_output=True, text=True, check=True).stdout
        return [line for line in dump.splitlines() if "cookie=0x6d6c666f" in line]

    assert len(our_flows("swCampus1")) == 3 and len(our_flows("swEdge0")) == 3
    again = mlfo(env, workdir, "meter", "set", "--port", "1", "--rate", "50mbit")
    assert again.returncode == 0, again.stderr
    assert len(our_flows("swCampus1")) == 3 and all("meter:1" in f for f in our_flows("swCampus1"))  # replaced
    meters = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-meters", "swCampus1"], capture_output=True, text=True, check=True).stdout
    assert "rate=50000" in meters and "rate=10000" not in meters
    cleared = mlfo(env, workdir, "meter", "clear")
    assert cleared.returncode == 0 and our_flows("swCampus1") == [] and our_flows("swEdge0") == []

    from mlfo_toolkit.meters.probe import IPERF_PORT, measure_mbit
    from mlfo_toolkit.net.hosts import spawn_in_host, wait_listening
    from mlfo_toolkit.net.state import load_state, stop_processes

    state = load_state(workdir / "state")
    server = spawn_in_host(state, "fed.1", "iperf3-test", ["iperf3", "-s", "-B", "10.0.11.100", "-p", str(IPERF_PORT)], workdir, cpu_limited=False)
    try:
        wait_listening(state, [("fed.1", IPERF_PORT, server)], 20)
        # Cleared: half as much again as the last meter (50 Mbit/s) allows, which would hold it near 50; a fresh
        # clone's make test measured 95-165 here, with the other test worker's FL run on the same two cores.
        assert measure_mbit(state, "fc.10", "10.0.11.100", 3) >= 75
    finally:
        stop_processes([server])


def test_fl_runs_across_the_network(network: dict[str, Any]) -> None:
    state = network["state"]
    servers = {h["name"]: h["pid"] for h in state["hosts"] if h["role"] == "fl-server"}
    before = {name: interface_bytes(pid, f"{name}-eth0") for name, pid in servers.items()}
    cohorts = network["workdir"] / "cohorts.yaml"
    text = (REPO / "intents" / "cohorts-small.yaml").read_text().replace("rounds: 5", f"rounds: {ROUNDS}")
    cohorts.write_text(text.replace("intent: welding.yaml", f"intent: {REPO / 'intents' / 'welding.yaml'}"))
    result = mlfo(network["env"], network["workdir"], "intent", "send", str(cohorts), "--mlfo", f"127.0.0.1:{network['port']}", "--wait", "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert len(summary["cohorts"]) == 2
    for cohort in summary["cohorts"]:
        assert cohort["state"] == "done" and len(cohort["accuracy"]) == ROUNDS
        assert cohort["accuracy"][-1] >= 0.85
        assert cohort["server"].split(":")[0] in ("10.0.11.100", "10.0.12.100")
    # The shared executor ran every ClientApp task inside its client's host: its namespace and CPU cgroup.
    for host in (h for h in state["hosts"] if h["role"] == "fl-client"):
        logs = list((network["workdir"] / "state" / "nodes" / host["name"]).rglob("clientapp.log"))
        tasks = [line for log in logs for line in log.read_text().splitlines() if line.startswith("mlfo executor: task")]
        assert tasks, f"no ClientApp task ran for {host['name']}"
        namespace = os.stat(f"/proc/{host['pid']}/ns/net").st_ino
        assert all(f"network namespace {namespace}," in t and t.endswith(host["cgroup"]) for t in tasks), tasks
    grown = {name: interface_bytes(pid, f"{name}-eth0") - before[name] for name, pid in servers.items()}
    # each round the server sends the model to 3 clients and receives 3 back
    assert all(g >= ROUNDS * MODEL_BYTES for g in grown.values()), grown


def test_two_tiers_train_across_the_network_and_only_aggregates_reach_the_cloud(network: dict[str, Any]) -> None:
    state = network["state"]
    server_pid = next(h["pid"] for h in state["hosts"] if h["name"] == "fed.1")
    before = interface_bytes(server_pid, "fed.1-eth0")
    cohorts = network["workdir"] / "hierarchical.yaml"
    cohorts.write_text(f"cohorts:\n  - {{name: tiers, size: 6, intent: {REPO / 'intents' / 'welding.yaml'}, min_available: 6, "
                       f"fraction_fit: 1.0, rounds: {ROUNDS}, aggregation: hierarchical, local_rounds: 2}}\n")
    result = mlfo(network["env"], network["workdir"], "intent", "send", str(cohorts), "--mlfo", f"127.0.0.1:{network['port']}", "--wait",
                  "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (cohort,) = json.loads(result.stdout)["cohorts"]
    assert cohort["state"] == "done" and cohort["accuracy"][-1] >= 0.85
    # The network's edges (its two campuses), each aggregated on its first client's host, inside its namespace.
    assert [(t["name"], t["agent"].split(":")[0], t["parts"]) for t in cohort["tiers"]] == [
        ("edge1", "10.0.1.10", [0, 1, 2]), ("edge2", "10.0.1.13", [3, 4, 5])]
    assert all(t["server"].startswith(t["agent"].split(":")[0] + ":") for t in cohort["tiers"])
    assert cohort["sampled"] == [2] * ROUNDS and cohort["results"] == [2] * ROUNDS
    # At the global server's interface: two models out and two aggregates in a round, not six of each.
    grown = interface_bytes(server_pid, "fed.1-eth0") - before
    assert ROUNDS * 4 * MODEL_BYTES <= grown < ROUNDS * 8 * MODEL_BYTES, grown


def test_a_researchers_flower_app_runs_across_the_network(network: dict[str, Any]) -> None:
    workdir = network["workdir"]
    intent = yaml.safe_load((REPO / "intents" / "welding.yaml").read_text())
    intent["intentID"], intent["targets"][0]["operand"] = "digits01", "robots.digits.accuracy"
    (workdir / "digits.yaml").write_text(yaml.safe_dump(intent))
    cohorts = yaml.safe_load((REPO / "intents" / "cohorts-small.yaml").read_text())
    cohorts["defaults"]["rounds"] = ROUNDS
    cohorts["cohorts"] = [{**cohorts["cohorts"][0], "name": "digits-app", "intent": "digits.yaml"}]
    (workdir / "cohorts-app.yaml").write_text(yaml.safe_dump(cohorts))
    result = mlfo(network["env"], workdir, "intent", "send", str(workdir / "cohorts-app.yaml"), "--mlfo",
                  f"127.0.0.1:{network['port']}", "--wait", "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (cohort,) = json.loads(result.stdout)["cohorts"]
    assert cohort["state"] == "done" and len(cohort["accuracy"]) == ROUNDS
    assert cohort["accuracy"][-1] > 0.85 and cohort["results"] == [3] * ROUNDS
    assert all(p["train"] > 0 for p in cohort["phases"])
    # The FL server in its host ran the app's copy behind mlfo's host; the app's own ServerApp printed its result.
    (copy,) = [p for p in (workdir / "state" / "nodes").rglob("server-*/app/pyproject.toml")]
    assert "mlfo_toolkit.fl.hosted:server_app" in copy.read_text()
    assert "final accuracy:" in (copy.parent.parent / "flwr-run.log").read_text()


def run_in_network(network: dict[str, Any], name: str, experiment: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`mlfo run` of an experiment in the module's running network; its output folder."""
    path = network["workdir"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    out = network["workdir"] / "experiments" / name
    return mlfo(network["env"], network["workdir"], "run", str(path), "-o", str(out), "--json", timeout=900), out


def shipped_experiment(name: str, **changes: Any) -> dict[str, Any]:
    """A shipped experiment file with some values changed (waits a test does not measure made short)."""
    data = yaml.safe_load((REPO / "experiments" / f"{name}.yaml").read_text())
    data["cohorts"] = str(REPO / "intents" / "cohorts-small.yaml")
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[key] = value
    return data


def test_meter_events_record_the_rate_around_each_meter(network: dict[str, Any]) -> None:
    experiment = shipped_experiment("meter-sweep", sweep={"meter.rate": ["5mbit", "50mbit"]}, **{"shape.rounds": 2})
    result, out = run_in_network(network, "meters", experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads(result.stdout)
    assert [r["key"] for r in index["runs"]] == ["rate_5mbit-r1", "rate_50mbit-r1"]
    assert all(r["state"] == "done" for r in index["runs"]), index
    for entry in index["runs"]:
        run = json.loads((out / "runs" / entry["key"] / "run.json").read_text())
        (event,) = run["events"]
        effect = event["effect"]
        assert event["ok"] and event["round"] == 2, event
        rate = float(effect["rate"].removesuffix("mbit"))
        assert effect["measured_mbit_after"] <= rate * 1.3, effect  # the meter holds the cohort to its rate
        assert effect["measured_mbit_before"] > 2 * rate, effect    # and it was faster before
    report = mlfo(network["env"], network["workdir"], "report", str(out), "--json")
    assert report.returncode == 0, report.stderr
    built = json.loads(report.stdout)
    assert "meter-rates.png" in {Path(p).name for p in built["plots"]} and len(built["table"]) == 2
    assert json.loads(mlfo(network["env"], network["workdir"], "meter", "show", "--json").stdout) == {}  # cleared after each run


def test_network_faults_take_effect_and_are_undone(network: dict[str, Any]) -> None:
    """Link rate, CPU limit, background traffic, link down and up, kill and restart, each at a round of the cohort."""
    state = json.loads((network["workdir"] / "state" / "network.json").read_text())
    quota = Path(next(h for h in state["hosts"] if h["name"] == "fed.1")["cgroup"]) / "cpu.cfs_quota_us"
    before = quota.read_text()
    result, out = run_in_network(network, "faults", shipped_experiment("network-faults"))
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "runs" / "base-r1" / "run.json").read_text())
    (cohort,) = run["cohorts"]
    assert cohort["state"] == "done" and len(cohort["accuracy"]) == 7 and cohort["accuracy"][-1] > 0.8, cohort
    events = {(e["kind"], e["round"]): e for e in run["events"]}
    assert all(e["ok"] for e in run["events"]), [e for e in run["events"] if not e["ok"]]
    assert len(events) == 7, sorted(events)

    rate = events[("link", 2)]["effect"]  # fc.10's access link from 500 to 20 Mbit/s, measured from fc.10
    assert rate["client"] == "fc.10" and rate["measured_mbit_before"] > 60 and rate["measured_mbit_after"] < 30, rate
    assert {end["rate"] for end in rate["after"].values()} == {"20Mbit"}, rate
    assert events[("cpu", 3)]["effect"]["cpus_after"] == 0.25
    background = events[("background", 3)]["effect"]
    assert background["rate"] == "50mbit" and 25 < background["measured_mbit"] < 75, background
    down, up = events[("link", 4)]["effect"], events[("link", 5)]["effect"]
    assert down["reaches_before"] and not down["reaches_after"], down
    assert not up["reaches_before"] and up["reaches_after"], up
    kill, restart = events[("kill", 4)]["effect"], events[("restart", 6)]["effect"]  # client part 2's agent, on fc.12
    assert kill["host"] == "fc.12" and kill["client_state"] == "lost" and kill["restarted_later"], kill
    assert kill["lost_after_seconds"] >= LOST_AFTER, kill  # a silent agent is lost after mlfo.lost_after_seconds
    assert restart["agent_pid"] != kill["pid"] and restart["ran_to_end"], restart
    # The MLFO's view: rounds from the kill on got fewer results than they sampled.
    assert cohort["short_rounds"] and min(cohort["short_rounds"]) >= 4, cohort
    # The last round has every client again: part 1's link came back (its SuperNode found the missed round's message
    # and the next one back to back) and part 2 was restarted.
    assert cohort["results"][-1] == cohort["sampled"][-1] == 3, (cohort["sampled"], cohort["results"])
    assert run["undo_problems"] == [] and run["seed"] == 1
    assert quota.read_text() == before  # fed.1's CPU limit is what it was before the run, not the event's 0.25
    report = mlfo(network["env"], network["workdir"], "report", str(out), "--json")
    assert report.returncode == 0, report.stderr
    assert "meter-rates.png" in {Path(p).name for p in json.loads(report.stdout)["plots"]}  # the link rate event, drawn


def test_the_closed_loop_raises_a_throttled_cohorts_meter(network: dict[str, Any]) -> None:
    """experiments/assurance-network.yaml under the default policy only, shortened: the meter set at round 2
    makes the round break the intent's bound; the MLFO raises the meter and the cohort's rounds fit again."""
    experiment = yaml.safe_load((REPO / "experiments" / "assurance-network.yaml").read_text())
    experiment["sweep"] = {"policy": ["default"]}
    # Two rounds more than the meter needs: the timeline sees rounds go by, so the meter may land in round 3, and
    # the round that begins while the MLFO raises the meter may still start under the old rate.
    experiment["cohorts"][0]["rounds"] = 5
    result, out = run_in_network(network, "assurance", experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "runs" / "policy_default-r1" / "run.json").read_text())
    (cohort,) = run["cohorts"]
    (event,) = run["events"]
    assert event["effect"]["measured_mbit_after"] < 1, event  # the meter event throttled the cohort
    seconds = cohort["round_seconds"]
    bound = experiment["cohorts"][0]["intent"]["targets"][0]["constraints"]["max_round_seconds"]
    slow = next((r for r, took in enumerate(seconds, start=1) if took > bound), None)  # the round that broke the bound
    acted = [d for d in cohort["decisions"] if any(a["kind"] == "set_meter" and a["status"] == "done" for a in d["actions"])]
    assert slow in (2, 3) and acted and acted[0]["round"] == slow, (seconds, cohort["decisions"])
    assert "0.4 -> 1.6 Mbit/s" in acted[0]["actions"][0]["detail"]  # meter_step 4
    # A later turn saw the raised meter and the cohort back on track (a new decision records it).
    later = [d for d in cohort["decisions"] if d["round"] > slow]
    assert any(d["observed"]["meter_rate_mbit"] >= 1.6 and d["assessment"]["state"] == "on_track" for d in later), later
    after = seconds[-1]  # the last round fits its bound again, well under the throttled one
    assert after < bound and after < seconds[slow - 1] * 0.7, seconds
    assert json.loads(mlfo(network["env"], network["workdir"], "meter", "show", "--json").stdout) == {}  # cleared after the run


def test_a_link_follows_a_trace_measured_once_a_second(network: dict[str, Any]) -> None:
    """campus 1's uplink replays 40 -> 10 -> 25 Mbit/s (4 s each); iperf3 through it (fed.1 -> fc.10), one figure a second."""
    from mlfo_toolkit.meters.probe import IPERF_PORT, measure_series
    from mlfo_toolkit.net.hosts import spawn_in_host, wait_listening
    from mlfo_toolkit.net.state import load_state, stop_processes
    from mlfo_toolkit.net.traces import parse_trace

    env, workdir = network["env"], network["workdir"]
    trace_file = workdir / "steps.csv"
    trace_file.write_text("seconds,rate_mbit,delay_ms\n0,40,5\n4,10,5\n8,25,5\n")
    trace = parse_trace(trace_file.read_text())
    state = load_state(workdir / "state")
    server = spawn_in_host(state, "fed.1", "iperf3-trace", ["iperf3", "-s", "-B", "10.0.11.100", "-p", str(IPERF_PORT)], workdir, cpu_limited=False)
    try:
        wait_listening(state, [("fed.1", IPERF_PORT, server)], 20)
        started = mlfo(env, workdir, "topo", "trace", "swCampus1", "swEdge0", str(trace_file), "--json")
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        assert info["rows"] == 3 and info["duration_s"] == 12
        assert info["delay_and_loss"] == ("emulated (netem)" if netem_available() else "not emulated: this kernel has no netem")
        # iperf3 from the first row on: a connection begun at the unshaped 500 Mbit/s loses a window's worth
        # when the link drops to 40 and 10 ms more round trip, and can stay below 40 for seconds after.
        log, deadline = Path(info["log"]), time.monotonic() + 10
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        began, series = measure_series(state, "fc.10", "10.0.11.100", 12)
    finally:
        stop_processes([server])
    applied = [json.loads(line) for line in Path(info["log"]).read_text().splitlines()]
    assert [row["rate_mbit"] for row in applied] == [40, 10, 25]
    # Which row was in force when: a row's rate took hold between the replayer's `requested_at` and `at` (the
    # shaping of both ends, a few tc calls that a busy machine can stretch); the last row ends with the trace.
    changes = [(row["requested_at"], row["at"]) for row in applied]
    ends = [requested for requested, _ in changes[1:]] + [changes[0][0] + trace.duration - 0.3]
    seconds: dict[float, list[float]] = {row["rate_mbit"]: [] for row in applied}
    for start, end, mbit in series[1:]:  # the first second is TCP's slow start
        window = (began + start, began + end)
        for (_, in_place), ended, row in zip(changes, ends, applied, strict=True):
            # a second wholly inside one row, starting 0.2 s after the rate was in place (TCP needs a moment)
            if in_place + 0.2 <= window[0] and window[1] <= ended:
                seconds[row["rate_mbit"]].append(mbit)
    assert all(len(measured) >= 2 for measured in seconds.values()), (series, changes)
    # What shaping guarantees: no second passes its row's rate (25 % for iperf3's one-second bins), each step
    # down and up shows, and each row's best second comes near its rate. How near a busy 2-core machine gets
    # varies (a loss in userspace OVS can hold a row's seconds at 60-75 % of a 40 Mbit/s rate); accuracy is
    # bench/trace_bench.py's: every second of `leo-pass` within ±10 %.
    best = {want: max(measured) for want, measured in seconds.items()}
    assert all(mbit <= want * 1.25 for want, measured in seconds.items() for mbit in measured), seconds
    assert best[10] < best[40] / 2 and best[25] > best[10] * 1.5, seconds
    assert all(mbit >= want * 0.6 for want, mbit in best.items()), seconds
    # The replayer ends with the trace and puts the configured 500 Mbit/s back.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p["name"].startswith("trace ") and psutil.pid_exists(p["pid"])
                                               for p in json.loads((workdir / "state" / "network.json").read_text())["processes"]):
        time.sleep(0.2)
    rates = subprocess.run(["tc", "class", "show", "dev", "swCampus1-eth4"], capture_output=True, text=True).stdout
    assert "rate 500Mbit" in rates, rates


def test_a_trace_event_replays_a_shipped_trace_and_the_run_says_what_was_not_emulated(network: dict[str, Any]) -> None:
    # One point of the shipped sweep (the sweep itself is checked without a network, in tests/unit).
    experiment = shipped_experiment("link-traces", sweep={"trace.file": ["cellular-drive"]}, **{"shape.rounds": 2})
    result, out = run_in_network(network, "traces", experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, rows in (("file_cellular-drive-r1", 300),):
        run = json.loads((out / "runs" / name / "run.json").read_text())
        assert run["cohorts"][0]["state"] == "done", run["cohorts"]
        (event,) = [e for e in run["events"] if e["kind"] == "trace"]
        assert event["ok"] and event["effect"]["rows"] == rows and event["effect"]["loop"], event
        netem = netem_available()
        assert run["conditions"]["netem"] is netem and ("no netem" in run["conditions"]["delay_and_loss"]) is not netem
        assert run["undo_problems"] == []
    state = json.loads((network["workdir"] / "state" / "network.json").read_text())
    assert not [p for p in state["processes"] if p["name"].startswith("trace ")]  # the run's end stopped the replayer
    assert "rate 500Mbit" in subprocess.run(["tc", "class", "show", "dev", "swCampus1-eth4"], capture_output=True, text=True).stdout
    report = mlfo(network["env"], network["workdir"], "report", str(out), "--json")
    assert report.returncode == 0, report.stderr
    page = Path(json.loads(report.stdout)["html"]).read_text()
    assert "delay and loss: " + run["conditions"]["delay_and_loss"] in page


def test_background_traffic_follows_a_step_pattern(network: dict[str, Any]) -> None:
    """30 Mbit/s for 2 s, nothing for 2 s, and again: the app client's interface shows both."""
    result = mlfo(network["env"], network["workdir"], "init", "--cpus", "0.5", "--bg-rate", "30M", "--bg-pattern", "step",
                  "--bg-period", "4", "--json")
    assert result.returncode == 0, result.stderr
    background = json.loads(result.stdout)["background"]
    assert background["pattern"] == "step" and background["period_s"] == 4
    state = json.loads((network["workdir"] / "state" / "network.json").read_text())
    app = next(h for h in state["hosts"] if h["name"] == "app.1")
    rates = []
    before = interface_bytes(app["pid"], "app.1-eth0")
    for _ in range(16):
        time.sleep(0.5)
        now = interface_bytes(app["pid"], "app.1-eth0")
        rates.append((now - before) * 8 / 0.5 / 1e6)
        before = now
    assert max(rates) > 20 and min(rates) < 2, [round(r, 1) for r in rates]  # on near the rate, off near nothing
    off = mlfo(network["env"], network["workdir"], "init", "--bg-rate", "0", "--json")
    assert off.returncode == 0 and json.loads(off.stdout)["background"]["rate"] is None


def test_device_profiles_slow_the_clients_they_limit_and_are_undone(network: dict[str, Any]) -> None:
    experiment = shipped_experiment("device-profiles", sweep={"profiles": [{"class": "edge-server"}, {"class": "rpi3"}]},
                                    **{"shape.rounds": 2})
    state = json.loads((network["workdir"] / "state" / "network.json").read_text())
    fc10 = next(h for h in state["hosts"] if h["name"] == "fc.10")
    quota = Path(fc10["cgroup"]) / "cpu.cfs_quota_us"
    before = quota.read_text()
    result, out = run_in_network(network, "profiles", experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    train: dict[str, list[float]] = {}
    for key, cpus, memory in (("profiles_edge-server-r1", 1.0, None), ("profiles_rpi3-r1", 0.1, 512.0)):
        run = json.loads((out / "runs" / key / "run.json").read_text())
        (cohort,) = run["cohorts"]
        assert cohort["state"] == "done" and len(cohort["accuracy"]) == 2, cohort
        profiles = run["profiles"]["clients"]
        assert len(profiles) == 6 and {(p["cpus"], p["memory_mb"]) for p in profiles.values()} == {(cpus, memory)}
        per_round = cohort["client_train_seconds"]
        assert all(sorted(r) == ["0", "1", "2"] for r in per_round), per_round  # every client's training, every round
        train[key] = sorted(s for r in per_round for s in r.values())
        assert run["undo_problems"] == []
    # A tenth of a core trains several times slower than a whole one. The whole core's fastest training is its own
    # speed: the other test worker's FL runs only add to its times (CI saw its median at 46 ms, from 10-14 ms alone),
    # while the limit makes the tenth's typical training wait out a CPU period (about 100 ms).
    slow, fast = statistics.median(train["profiles_rpi3-r1"]), min(train["profiles_edge-server-r1"])
    assert slow > 3 * fast, (slow, train)
    assert quota.read_text() == before  # limits undone after each run
    assert (Path(fc10["memory_cgroup"]) / "memory.limit_in_bytes").read_text().strip() != str(512 * 1024 * 1024)
    report = mlfo(network["env"], network["workdir"], "report", str(out), "--json")
    assert report.returncode == 0, report.stderr
    assert {"profiles.png", "client-times.png"} <= {Path(p).name for p in json.loads(report.stdout)["plots"]}
