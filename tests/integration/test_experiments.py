"""Experiments as files: validated before anything starts, run with events at FL rounds, resumed,
and compared in one report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from tests.helpers import REPO, require_network_tools

KILL = REPO / "experiments" / "kill-a-client.yaml"
COHORTS = REPO / "intents" / "cohorts.yaml"


@pytest.mark.parametrize(("text", "field", "line"), [
    ("name: x\ntimeline:\n  - at: {cohort: a, round: 2}\n    meter: {cohort: 1}\n", "timeline[0].meter", 4),
    ("name: x\ntimeline:\n  - at: {round: 2}\n    kill: {cohort: a, part: 0}\n", "timeline[0].at", 3),
    ("name: x\ntimeline:\n  - at: {seconds: 3}\n    kill: {cohort: a, part: 0}\n    meter_clear: 1\n", "timeline[0]", 3),
    ("name: x\nsweep:\n  strategy: [FedAvg, FedMagic]\n", "sweep.strategy[1]", 3),
    ("name: x\nsweep:\n  colour: [red]\n", "sweep.colour", 3),
    ("name: x\nrepeat: 2\nseeds: [1]\n", "seeds", 3),
    ("name: 'my experiment'\n", "name", 1),
    ("name: x\nrepeats: 2\n", "repeats", 2),
    ("name: x\ntimeline:\n  - at: {seconds: 1}\n    kill: {cohort: a}\n", "timeline[0].kill", 4),
    ("name: x\ntimeline:\n  - at: {seconds: 1}\n    kill: {cohort: a, part: 0, agent: true}\n", "timeline[0].kill.agent", 4),
    ("name: x\nbackend: network\ninit: {cpus: 0}\n", "init.cpus", 3),
    ("name: x\nbackend: network\ntimeline:\n  - at: {seconds: 1}\n    cpu: {host: fed.1, cpus: 1}\nsweep:\n  cpu.cpus: [0.5, -1]\n",
     "sweep.cpu.cpus[1]", 7),
    ("name: x\nbackend: network\ntimeline:\n  - at: {seconds: 1}\n    link: {a: fc.10, b: swCampus1, rate: 5mbit, state: down}\n",
     "timeline[0].link", 5),
    ("name: x\nbackend: network\ntimeline:\n  - at: {seconds: 1}\n    link: {a: fc.10, b: swCampus2, rate: 5mbit}\n",
     "timeline[0].link", 5),
    ("name: x\nbackend: network\ntimeline:\n  - at: {seconds: 1}\n    cpu: {host: fed.9, cpus: 0.5}\n", "timeline[0].cpu", 5),
    ("name: x\nbackend: network\ntimeline:\n  - at: {seconds: 1}\n    background: {rate: fast}\n", "timeline[0].background.rate", 5),
    (f"name: x\ncohorts: {COHORTS}\ntimeline:\n  - at: {{cohort: nope, round: 2}}\n    kill: {{cohort: welding-a, part: 0}}\n",
     "timeline[0].at.cohort", 4),
    (f"name: x\ncohorts: {COHORTS}\nshape: {{clients: 4}}\ntimeline:\n  - at: {{seconds: 2}}\n    restart: {{cohort: welding-a, part: 4}}\n",
     "timeline[0].restart.part", 6),
    ("name: x\ntimeline:\n  - at: {seconds: 1}\n    kill: {cohort: a, part: 0}\nsweep:\n  link.rate: [5mbit]\n", "sweep.link.rate", 6),
])
def test_a_bad_experiment_file_names_field_and_line_and_starts_nothing(workdir: Path, text: str, field: str, line: int) -> None:
    path = workdir / "e.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["run", str(path), "--json"])
    assert result.exit_code == 4, result.output
    error = json.loads(result.stdout)
    assert error["field"] == field and f"e.yaml:{line}" in error["message"], error
    assert not (workdir / "runs").exists()


def test_dry_run_lists_runs_events_and_duration(workdir: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(REPO / "experiments" / "strategies.yaml"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [r["key"] for r in plan["runs"]] == ["strategy_FedAvg-r1", "strategy_FedMedian-r1"]
    assert [r["cohorts"][0]["strategy"] for r in plan["runs"]] == ["FedAvg", "FedMedian"]
    assert plan["events"][0]["kind"] == "kill" and plan["expected_seconds"] > 0
    assert not (workdir / "runs").exists()


@pytest.mark.flower
@pytest.mark.slow
def test_kill_at_round_3_twice_then_report_and_resume(workdir: Path) -> None:
    out = workdir / "exp"
    result = CliRunner().invoke(cli, ["run", str(KILL), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    index = json.loads(result.stdout)
    assert [r["state"] for r in index["runs"]] == ["done", "done"]
    for key in ("base-r1", "base-r2"):
        run = json.loads((out / "runs" / key / "run.json").read_text())
        (cohort,) = run["cohorts"]
        assert len(cohort["accuracy"]) == 6 and cohort["accuracy"][-1] > cohort["accuracy"][0]
        kill, restart = run["events"]
        assert kill["kind"] == "kill" and kill["ok"] and kill["round"] == 3, kill
        assert kill["effect"]["client_state"] == "lost" and kill["effect"]["lost_after_seconds"] < 5
        assert cohort["short_rounds"] and min(cohort["short_rounds"]) >= 3  # the MLFO's view: rounds after the kill came up short
        assert cohort["results"][2] < cohort["sampled"][2]
        # Restarted through the campus MLFO as round 5 began: a new SuperNode, and the last round has its result again.
        assert restart["kind"] == "restart" and restart["ok"] and restart["round"] == 5, restart
        assert restart["effect"]["pid"] != kill["effect"]["pid"] and restart["effect"]["client_state"] == "running"
        assert [c["part"] for c in cohort["restarted_clients"]] == [1] and not cohort["lost_clients"]
        assert cohort["results"][-1] > cohort["results"][3], cohort
    assert json.loads((out / "runs" / "base-r1" / "run.json").read_text())["seed"] == 1
    assert json.loads((out / "runs" / "base-r2" / "run.json").read_text())["seed"] == 2

    report = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert report.exit_code == 0, report.output
    built = json.loads(report.stdout)
    assert {Path(p).name for p in built["plots"]} == {"accuracy-loss.png", "round-time.png", "traffic.png"}
    rows = json.loads((out / "report" / "round-time.json").read_text())
    assert {r["run"] for r in rows if r.get("event") == "kill" and r["round"] == 3} == {"base-r1", "base-r2"}
    assert {r["run"] for r in rows if r.get("event") == "restart" and r["round"] == 5} == {"base-r1", "base-r2"}
    assert any(r.get("short") for r in rows)
    (point,) = built["table"]
    assert point["runs"] == 2 and point["events"] == ["kill", "restart"] and point["final_accuracy_mean"] > 0.8
    assert (out / "report" / "accuracy-loss.csv").read_text().startswith("point,run,cohort,round,accuracy,loss")

    again = CliRunner().invoke(cli, ["run", str(KILL), "-o", str(out), "--json"])
    assert again.exit_code == 0
    assert [r["state"] for r in json.loads(again.stdout)["runs"]] == ["skipped (finished earlier)"] * 2


@pytest.mark.root
@pytest.mark.slow
def test_meter_sweep_on_the_small_topology_records_rates_around_each_meter(workdir: Path) -> None:
    require_network_tools()
    out = workdir / "exp"
    env = {"MLFO_PATHS__STATE_DIR": str(workdir / "state")}
    result = CliRunner().invoke(cli, ["run", str(REPO / "experiments" / "meter-sweep.yaml"), "-o", str(out), "--json"], env=env)
    assert result.exit_code == 0, result.output[-3000:]
    index = json.loads(result.stdout)
    assert [r["key"] for r in index["runs"]] == ["strategy_FedAvg-rate_5mbit-r1", "strategy_FedAvg-rate_50mbit-r1",
                                                 "strategy_FedMedian-rate_5mbit-r1", "strategy_FedMedian-rate_50mbit-r1"]
    assert all(r["state"] == "done" for r in index["runs"]), index
    for entry in index["runs"]:
        run = json.loads((out / "runs" / entry["key"] / "run.json").read_text())
        (event,) = run["events"]
        effect = event["effect"]
        assert event["ok"] and event["round"] == 2, event
        rate = float(effect["rate"].removesuffix("mbit"))
        assert effect["measured_mbit_after"] <= rate * 1.3, effect  # the meter holds the cohort to its rate
        assert effect["measured_mbit_before"] > 2 * rate, effect    # and it was faster before
        assert run["cohorts"][0]["strategy"] == entry["point"]["strategy"]
    assert not (workdir / "state" / "network.json").exists()  # the run took its network down
    report = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert report.exit_code == 0, report.output
    assert "meter-rates.png" in {Path(p).name for p in json.loads(report.stdout)["plots"]}
    assert len(json.loads(report.stdout)["table"]) == 4


@pytest.mark.root
@pytest.mark.slow
def test_network_faults_take_effect_and_are_undone(workdir: Path) -> None:
    """Link rate, CPU limit, background traffic, link down and up, kill and restart, each at a round of the cohort."""
    require_network_tools()
    out = workdir / "exp"
    env = {"MLFO_PATHS__STATE_DIR": str(workdir / "state")}
    result = CliRunner().invoke(cli, ["run", str(REPO / "experiments" / "network-faults.yaml"), "-o", str(out), "--json"], env=env)
    assert result.exit_code == 0, result.output[-3000:]
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
    assert kill["lost_after_seconds"] >= 5, kill  # a silent agent is lost after mlfo.lost_after_seconds
    assert restart["agent_pid"] != kill["pid"] and restart["client_state"] == "running", restart
    # The MLFO's view: rounds from the kill on got fewer results than they sampled.
    assert cohort["short_rounds"] and min(cohort["short_rounds"]) >= 4, cohort
    assert run["undo_problems"] == [] and run["seed"] == 1
    assert not (workdir / "state" / "network.json").exists()  # the run took its network down
    report = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert report.exit_code == 0, report.output
    assert "meter-rates.png" in {Path(p).name for p in json.loads(report.stdout)["plots"]}  # the link rate event, drawn


@pytest.mark.flower
@pytest.mark.slow
def test_sigterm_stops_the_run_and_keeps_what_it_measured(workdir: Path) -> None:
    out = workdir / "exp"
    command = [sys.executable, "-m", "mlfo_toolkit", "run", str(KILL), "-o", str(out), "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # Wait until the first run has three rounds behind it (its server's metrics, which the MLFO
        # polls), and a moment more for the MLFO to have seen them: the kill fired as round 3 began.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            lines = [line for f in (out / "runs").glob("base-r1/**/metrics.jsonl") for line in f.read_text().splitlines()]
            if sum(1 for line in lines if '"event": "round"' in line and '"round": 0,' not in line) >= 3:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("not three rounds within 180 s")
        time.sleep(3)
        children = [c.pid for c in psutil_children(process.pid)]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    index = json.loads((out / "index.json").read_text())
    assert [r["state"] for r in index["runs"]] == ["interrupted"]
    partial = json.loads((out / "runs" / "base-r1" / "partial.json").read_text())
    assert len(partial["cohorts"][0]["accuracy"]) >= 2 and partial["events"], partial
    time.sleep(1)
    assert [pid for pid in children if pid_alive(pid)] == [], "left running after SIGTERM"


def psutil_children(pid: int) -> list[Any]:
    import psutil

    return list(psutil.Process(pid).children(recursive=True))


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.flower
@pytest.mark.slow
def test_killing_the_fl_server_fails_the_deployment_with_its_reason(workdir: Path) -> None:
    path = workdir / "server-kill.yaml"
    path.write_text(f"name: server-kill\ncohorts: {COHORTS}\nshape: {{cohorts: 1, clients: 2, rounds: 4}}\n"
                    "timeline:\n  - at: {cohort: welding-a, round: 2}\n    kill: {cohort: welding-a, server: true}\n")
    result = CliRunner().invoke(cli, ["run", str(path), "-o", str(workdir / "exp"), "--json"])
    assert result.exit_code == 7, result.output  # a run's deployment failed
    run = json.loads((workdir / "exp" / "runs" / "base-r1" / "run.json").read_text())
    (event,) = run["events"]
    assert event["ok"] and event["round"] == 2 and event["effect"]["pid"], event
    assert event["effect"]["deployment_state"] == "failed" and "SuperLink" in event["effect"]["deployment_reason"], event
    assert len(run["cohorts"][0]["accuracy"]) < 4
