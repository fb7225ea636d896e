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
from tests.helpers import REPO, processes_under, require_network_tools, still_running

KILL = REPO / "experiments" / "kill-a-client.yaml"
COHORTS = REPO / "intents" / "cohorts.yaml"


@pytest.mark.flower
@pytest.mark.slow
def test_kill_then_restart_twice_then_report_and_resume(workdir: Path) -> None:
    out = workdir / "exp"
    # The shipped file (kill as round 3 begins, restart as round 5 does, 6 rounds) a round earlier each and
    # a round shorter: one round waits out the dead client, not two (that wait is not what is tested); the
    # restarted SuperNode has two rounds to rejoin (a fast round may be over before it has connected).
    kill_file = workdir / "kill-a-client.yaml"
    text = KILL.read_text().replace("round: 3}", "round: 2}").replace("round: 5}", "round: 3}").replace("rounds: 6}", "rounds: 5}")
    text = text.replace("round_timeout: 8 ", "round_timeout: 4 ")  # rounds take 1-2 s here: the dead client's round ends sooner
    text = text.replace("../intents/", f"{REPO}/intents/")
    assert text.count("round: 2}") == 1 and text.count("round: 3}") == 1 and "rounds: 5}" in text and "round_timeout: 4 " in text
    kill_file.write_text(text)
    result = CliRunner().invoke(cli, ["run", str(kill_file), "-o", str(out), "--track", "tensorboard", "--json"])
    assert result.exit_code == 0, result.output
    index = json.loads(result.stdout)
    # Each run was logged to TensorBoard as it finished.
    assert sorted(p.parent.parent.name for p in (out / "report" / "tensorboard").glob("*/welding-a/events.out.*")) == ["base-r1", "base-r2"]
    assert [r["state"] for r in index["runs"]] == ["done", "done"]
    for key in ("base-r1", "base-r2"):
        run = json.loads((out / "runs" / key / "run.json").read_text())
        (cohort,) = run["cohorts"]
        assert len(cohort["accuracy"]) == 5 and cohort["accuracy"][-1] > cohort["accuracy"][0]
        kill, restart = run["events"]
        assert kill["kind"] == "kill" and kill["ok"] and kill["round"] == 2, kill
        assert kill["effect"]["client_state"] == "lost" and kill["effect"]["lost_after_seconds"] < 5
        assert cohort["short_rounds"] and min(cohort["short_rounds"]) >= 2  # the MLFO's view: rounds after the kill came up short
        assert cohort["results"][1] < cohort["sampled"][1]
        # Restarted through the campus MLFO as round 3 began: a new SuperNode, and the last round has its result again.
        assert restart["kind"] == "restart" and restart["ok"] and restart["round"] == 3, restart
        assert restart["effect"]["pid"] != kill["effect"]["pid"] and restart["effect"]["ran_to_end"]
        assert [c["part"] for c in cohort["restarted_clients"]] == [1] and not cohort["lost_clients"]
        assert cohort["results"][-1] > cohort["results"][1], cohort
    assert json.loads((out / "runs" / "base-r1" / "run.json").read_text())["seed"] == 1
    assert json.loads((out / "runs" / "base-r2" / "run.json").read_text())["seed"] == 2

    report = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert report.exit_code == 0, report.output
    built = json.loads(report.stdout)
    assert {Path(p).name for p in built["plots"]} == {"accuracy-loss.png", "round-time.png", "traffic.png", "labels.png"}
    rows = json.loads((out / "report" / "round-time.json").read_text())
    assert {r["run"] for r in rows if r.get("event") == "kill" and r["round"] == 2} == {"base-r1", "base-r2"}
    assert {r["run"] for r in rows if r.get("event") == "restart" and r["round"] == 3} == {"base-r1", "base-r2"}
    assert any(r.get("short") for r in rows)
    (point,) = built["table"]
    assert point["runs"] == 2 and point["events"] == ["kill", "restart"] and point["final_accuracy_mean"] > 0.8
    assert (out / "report" / "accuracy-loss.csv").read_text().startswith("point,run,cohort,round,accuracy,loss")

    again = CliRunner().invoke(cli, ["run", str(kill_file), "-o", str(out), "--json"])
    assert again.exit_code == 0
    assert [r["state"] for r in json.loads(again.stdout)["runs"]] == ["skipped (finished earlier)"] * 2


@pytest.mark.root
@pytest.mark.slow
def test_a_network_run_brings_its_network_up_and_takes_it_down(workdir: Path) -> None:
    """With no network running, a `backend: network` run brings its topology up and down; a meter event in it
    records the cohort's rate just before and after (iperf3)."""
    require_network_tools()
    path = workdir / "meter.yaml"
    path.write_text(f"""name: meter
backend: network
topology: {{file: small}}
cohorts: {REPO / "intents" / "cohorts-small.yaml"}
shape: {{cohorts: 1, clients: 3, rounds: 2}}
timeline:
  - at: {{cohort: welding-1, round: 2}}
    meter: {{cohort: 1, rate: 5mbit}}
""")
    out = workdir / "exp"
    env = {"MLFO_PATHS__STATE_DIR": str(workdir / "state")}
    result = CliRunner().invoke(cli, ["run", str(path), "-o", str(out), "--json"], env=env)
    assert result.exit_code == 0, result.output[-3000:]
    run = json.loads((out / "runs" / "base-r1" / "run.json").read_text())
    (event,) = run["events"]
    effect = event["effect"]
    assert event["ok"] and event["round"] == 2, event
    assert effect["measured_mbit_after"] <= 5 * 1.3 and effect["measured_mbit_before"] > 10, effect
    assert run["cohorts"][0]["state"] == "done"
    assert not (workdir / "state" / "network.json").exists()  # the run took its network down


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
    assert still_running(children) == [], "left running after SIGTERM"


def psutil_children(pid: int) -> list[Any]:
    import psutil

    return list(psutil.Process(pid).children(recursive=True))


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
    assert event["effect"]["ended_after_seconds"] <= 10, event  # a dead SuperLink fails its deployment within 10 s
    assert len(run["cohorts"][0]["accuracy"]) < 4


@pytest.mark.flower
@pytest.mark.slow
def test_thirty_percent_of_the_clients_away_at_any_time_runs_to_the_end(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped availability experiment (10 clients, 3 away from round 2 on), two rounds shorter."""
    monkeypatch.setenv("MLFO_MLFO__LOST_AFTER_SECONDS", "3")  # how soon a silent agent is lost is not what is tested
    text = (REPO / "experiments" / "availability.yaml").read_text().replace("rounds: 8}", "rounds: 6}")
    text = text.replace("round_timeout: 6 ", "round_timeout: 4 ")  # each round with clients away waits this out
    assert "rounds: 6}" in text and "round_timeout: 4 " in text
    experiment = workdir / "availability.yaml"
    experiment.write_text(text.replace("../intents/", f"{REPO}/intents/"))
    out = workdir / "exp"
    result = CliRunner().invoke(cli, ["run", str(experiment), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "runs" / "base-r1" / "run.json").read_text())
    (cohort,) = run["cohorts"]
    assert cohort["state"] == "done" and len(cohort["accuracy"]) == 6 and cohort["accuracy"][-1] > 0.8, cohort
    plan = run["availability"]
    assert [plan["away_share_by_round"][str(r)] for r in range(1, 7)] == [0.0] + [0.3] * 5
    # Every absence was carried out and seen by the MLFO: a kill as it began, the client lost, a restart as it ended.
    kills = {(e["what"]["part"], e["round"]): e for e in run["events"] if e["kind"] == "kill"}
    restarts = {(e["what"]["part"], e["round"]): e for e in run["events"] if e["kind"] == "restart"}
    for absence in plan["absences"]:
        kill = kills[(absence["part"], absence["away"])]
        assert kill["ok"] and kill["effect"]["client_state"] == "lost", kill
        if absence["back"]:
            assert restarts[(absence["part"], absence["back"])]["ok"]
    # The MLFO's view: rounds with clients away got fewer results than sampled (round 1 may too, on a busy machine,
    # when a client connects late).
    assert len(kills) == len(plan["absences"]) and any(r >= 2 for r in cohort["short_rounds"]), cohort["short_rounds"]
    report = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert report.exit_code == 0, report.output
    rows = json.loads((out / "report" / "availability.json").read_text())
    assert sorted((r["part"], r["away_round"]) for r in rows) == sorted((a["part"], a["away"]) for a in plan["absences"])
    assert all(r["seen_lost"] for r in rows)


@pytest.mark.flower
@pytest.mark.slow
def test_killing_an_edge_aggregator_rehomes_its_clients_and_the_run_finishes(workdir: Path) -> None:
    out = workdir / "exp"
    experiment = workdir / "kill-an-edge.yaml"
    experiment.write_text((REPO / "experiments" / "kill-an-edge.yaml").read_text().replace("../intents/", f"{REPO}/intents/"))
    result = CliRunner().invoke(cli, ["run", str(experiment), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "runs" / "base-r1" / "run.json").read_text())
    (cohort,) = run["cohorts"]
    assert cohort["state"] == "done" and len(cohort["accuracy"]) == 5
    assert cohort["accuracy"][-1] > cohort["accuracy"][0] and cohort["accuracy"][-1] >= 0.85
    (kill,) = run["events"]
    assert kill["ok"] and kill["round"] == 3 and kill["what"]["edge"] == 1
    effect = kill["effect"]
    assert effect["edge"] == "edge2" and effect["edge_state"] == "lost" and effect["handled"] == "rehome"
    assert effect["parts"] == [3, 4, 5] and effect["lost_after_seconds"] < 5
    # Two edges sampled until the kill; then the surviving edge and the three re-homed clients.
    assert cohort["sampled"][:2] == [2, 2] and cohort["sampled"][-1] == 4 and cohort["results"][-1] == 4
    assert cohort["tiers"][1]["state"] == "lost" and cohort["tiers"][1]["parts_before"] == [3, 4, 5]
    assert processes_under(workdir) == []
    report = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert report.exit_code == 0, report.output
    rows = json.loads((out / "report" / "round-time.json").read_text())
    assert any(r.get("event") == "kill" and r["round"] == 3 for r in rows)
