"""The campus MLFO's closed loop with real Flower on loopback: a met target ends the run early, a killed
client is restarted by the loop and trains again, a researcher's policy is loaded and a failing one
falls back to none, a policy reshapes a cohort. One loopback network for the module, and every
cohort sent at once when it starts (five FL runs side by side); each test follows its own."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from mlfo_toolkit.backends.loopback import LoopbackBackend
from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.config import load_config
from mlfo_toolkit.orchestrator.api_clients import MlfoClient
from mlfo_toolkit.orchestrator.cohorts import parse_cohort_file
from mlfo_toolkit.orchestrator.sending import post_cohorts
from tests.helpers import processes_under, wait_for

pytestmark = [pytest.mark.flower, pytest.mark.slow]

POLICIES = '''
from mlfo_toolkit.orchestrator.assurance import Action


class StopAtTwo:
    """A researcher's policy: two rounds are enough."""

    def decide(self, observation):
        if observation.round >= 2:
            return [Action("stop", reason="two rounds are enough for this study")]
        return []


class Reshape:
    """Takes client 0 out and adds a spare client after round 1; samples half the clients after round 2."""

    def decide(self, observation):
        if observation.round == 1:
            return [Action("remove_client", part=0), Action("add_clients", count=1)]
        if observation.round == 2:
            return [Action("set_fraction_fit", value=0.5)]
        return []


class Broken:
    def decide(self, observation):
        raise RuntimeError("a bug in the researcher's policy")
'''


def target_intent(value: float, **more: Any) -> dict[str, Any]:
    return {"intentID": f"target-{value}", "targets": [{
        "id": "factory.all", "operation": "achieve", "operand": "robots.welding.accuracy", "value": value,
        "constraints": {"privacylevel": "high"}, **more}]}


PLAIN = {"intentID": "plain", "targets": [{"id": "t", "operation": "maximise", "operand": "robots.welding.accuracy",
                                           "value": 0.5, "constraints": {"privacylevel": "high"}}]}


@dataclass
class Runs:
    backend: LoopbackBackend
    workdir: Path
    ids: dict[str, str]  # cohort name -> deployment id

    @property
    def mlfo(self) -> MlfoClient:
        return MlfoClient(self.backend.campus)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    workdir = tmp_path_factory.mktemp("assurance")
    policies = workdir / "policies.py"
    policies.write_text(POLICIES)
    config = load_config(environ={}).with_overrides({
        "paths.state_dir": str(workdir / "state"), "paths.runs_dir": str(workdir / "runs"),
        # Five runs share two cores: a round may take a while; only a dead client should make it wait this long.
        "fl.round_timeout": 20.0, "mlfo.client_check_seconds": 1.0,
        # mlfo.poll_seconds stays at its 1 s: these rounds take well under a second on loopback, and the loop must
        # act on each as it ends (the server's agent answers the watch then), not on the rounds a poll finds.
        "assurance.allowed_policies": [f"{policies}:{name}" for name in ("StopAtTwo", "Broken", "Reshape")],
    })
    cohorts = [
        {"name": "heal", "size": 3, "intent": target_intent(0.999, deadline={"rounds": 5}), "rounds": 30, "min_available": 3,
         "assurance": {"plateau_gain": 0.0}},
        {"name": "reach", "size": 3, "intent": target_intent(0.88), "rounds": 15, "min_available": 3},
        {"name": "own", "size": 3, "intent": PLAIN, "rounds": 6, "min_available": 3, "policy": f"{policies}:StopAtTwo"},
        {"name": "broken", "size": 3, "intent": PLAIN, "rounds": 3, "min_available": 3, "policy": f"{policies}:Broken"},
        {"name": "reshape", "size": 4, "intent": target_intent(0.999, constraints={"privacylevel": "high", "max_clients": 3}),
         "rounds": 4, "min_available": 3, "policy": f"{policies}:Reshape"},
    ]
    with LoopbackBackend(config, workdir / "net", servers=len(cohorts), clients=sum(c["size"] for c in cohorts)) as backend:
        text = json.dumps({"defaults": {"strategy": "FedAvg", "fraction_fit": 1.0, "min_fit": 1}, "cohorts": cohorts})
        parsed = parse_cohort_file(text, "test", Path.cwd(), backend.config)
        sent = post_cohorts(parsed, backend.config, backend.campus)
        yield Runs(backend, workdir, {s.name: s.deployment_id for s in sent})
    assert processes_under(workdir) == []



def finished(mlfo: MlfoClient, deployment: str, timeout: float = 300) -> dict[str, Any]:
    """The deployment once it ended and its ending finished (its clients stopped)."""
    def ended() -> bool:
        record = mlfo.deployment(deployment)
        return record["state"] in ("done", "failed") and not any(c["state"] in ("running", "starting") for c in record["clients"])

    assert wait_for(ended, timeout), mlfo.deployment(deployment)
    return mlfo.deployment(deployment)


def done_actions(record: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [a for d in record["decisions"] for a in d["actions"] if a["kind"] == kind and a["status"] == "done"]


def test_a_killed_client_is_restarted_by_the_loop_and_trains_again(runs: Runs) -> None:
    deployment, mlfo = runs.ids["heal"], runs.mlfo
    assert wait_for(lambda: len(mlfo.deployment(deployment)["rounds"]) >= 1, 180)
    victim = next(c for a in runs.backend.agents for c in a.clients if c.params.deployment == deployment and c.params.part == 1)
    os.kill(victim.process.pid, signal.SIGKILL)
    killed_round = len(mlfo.deployment(deployment)["rounds"])
    record = finished(mlfo, deployment)
    restarts = done_actions(record, "restart_client")
    assert [a["part"] for a in restarts] == [1], record["decisions"]
    client = next(c for c in record["clients"] if c["part"] == 1)
    assert len(client["restarts"]) == 1 and client["state"] == "stopped"
    rounds = sorted(record["rounds"], key=lambda r: r["round"])
    # The run length came from the deadline (5, not 30), and it ended missed at it.
    assert len(rounds) == 5 and "target missed" in record["reason"], record["reason"]
    assert done_actions(record, "set_rounds")[0]["count"] == 5
    # After the restart no sampled client failed to answer, and the restarted SuperNode trained: the last round
    # sampled all three again and got three results (how many rounds it takes to rejoin depends on how fast they are).
    restart_round = next(d["round"] for d in record["decisions"] if any(a["kind"] == "restart_client" for a in d["actions"]))
    later = [r for r in rounds if r["round"] > restart_round + 1]
    seen = [(r["round"], r["sampled"], r["results"]) for r in rounds]
    assert later and all(r["results"] == r["sampled"] for r in later), seen
    assert rounds[-1]["results"] == rounds[-1]["sampled"] == 3, seen
    assert killed_round <= restart_round


def test_a_met_target_ends_the_run_early_and_status_says_so(runs: Runs) -> None:
    deployment, campus = runs.ids["reach"], runs.backend.campus
    record = finished(runs.mlfo, deployment)
    assert record["state"] == "done" and "target met" in record["reason"], record["reason"]
    accuracy = [r["accuracy"] for r in sorted(record["rounds"], key=lambda r: r["round"])]
    first = next(i for i, a in enumerate(accuracy, start=1) if a >= 0.88)
    # The loop decided to stop on the round that reached it (the agent answers the watch as each round ends), or on
    # the next if two ended within one turn; the run then ends with the round under way. How many rounds start
    # before the stop lands depends on how busy two cores are (five runs here, other tests beside): a fresh-clone
    # run once had two under way; a loop that saw rounds late ran three past the target.
    stops = [d for d in record["decisions"] if any(a["kind"] == "stop" and a["status"] == "done" for a in d["actions"])]
    seen = [(d["round"], d["trigger"], [a["kind"] for a in d["actions"]]) for d in record["decisions"]]
    assert len(stops) == 1 and stops[0]["round"] <= first + 1, (accuracy, seen)
    assert len(accuracy) <= stops[0]["round"] + 2 and first + 1 < 15, (accuracy, seen)
    assert record["assurance"]["state"] == "met" and len(done_actions(record, "stop")) == 1
    scraped = requests.get(f"http://{campus}/metrics", timeout=5).text
    assert f'mlfo_intent_target{{cohort="reach",deployment="{deployment}",metric="accuracy"}} 0.88' in scraped
    assert f'mlfo_intent_target_met{{cohort="reach",deployment="{deployment}"}} 1.0' in scraped
    assert f'mlfo_assurance_state{{cohort="reach",deployment="{deployment}",state="met"}} 1.0' in scraped
    assert 'mlfo_assurance_actions_total{action="stop"}' in scraped
    shown = CliRunner().invoke(cli, ["intent", "status", deployment, "--mlfo", campus])
    assert shown.exit_code == 0, shown.output
    assert "assurance: met" in shown.output and "stop done" in shown.output and "accuracy >= 0.88" in shown.output


def test_a_researchers_policy_runs_and_a_failing_one_falls_back_to_none(runs: Runs) -> None:
    stopped, fell_back = finished(runs.mlfo, runs.ids["own"]), finished(runs.mlfo, runs.ids["broken"])
    # The policy stopped the run of six rounds at round 2. Rounds go on while the loop decides: the round under way
    # when the stop landed ends too (a fresh-clone make test, five runs on two cores, saw round 3 finish), as in the
    # met-target test above.
    stops = [d["round"] for d in stopped["decisions"] if any(a["kind"] == "stop" and a["status"] == "done" for a in d["actions"])]
    assert "two rounds are enough" in stopped["reason"] and stops == [2], (stopped["reason"], stopped["decisions"])
    assert 2 <= len(stopped["rounds"]) <= 3, stopped["rounds"]
    assert stopped["policy"].endswith(":StopAtTwo")
    assert fell_back["state"] == "done" and len(fell_back["rounds"]) == 3  # its run went on to the end
    errors = [d["error"] for d in fell_back["decisions"] if d.get("error")]
    assert len(errors) == 1 and "RuntimeError: a bug in the researcher's policy" in errors[0]
    # A policy this MLFO does not allow is refused with the field named; the MLFO goes on serving.
    campus = runs.backend.campus
    refused = requests.post(f"http://{campus}/receive", files={"file": ("i.yaml", json.dumps(PLAIN))},
                            data={"cohortsize": "1", "ipstart": "10", "numround": "1", "policy": "os:system"}, timeout=10)
    assert refused.status_code == 400 and refused.json()["field"] == "policy", refused.text
    assert requests.get(f"http://{campus}/deployments", timeout=5).status_code == 200


def test_a_policy_takes_a_client_out_adds_a_spare_one_and_samples_fewer(runs: Runs) -> None:
    deployment = runs.ids["reshape"]
    record = finished(runs.mlfo, deployment)
    states = {c["part"]: c["state"] for c in record["clients"]}
    assert states[0] == "spare" and states[3] == "stopped", states  # taken out; started (it was spare, beyond the cap), stopped at the end
    assert [a["status"] for a in done_actions(record, "remove_client") + done_actions(record, "add_clients")] == ["done", "done"]
    rounds = sorted(record["rounds"], key=lambda r: r["round"])
    assert len(rounds) == 4 and rounds[0]["sampled"] == 3  # the cap of 3, not the cohort's 4
    # From round 4 on (the first sure to follow the change) half the three clients are sampled, and they answer.
    assert all(r["sampled"] < 3 and r["results"] == r["sampled"] for r in rounds[3:]), [(r["round"], r["sampled"], r["results"]) for r in rounds]
    assert not any(c.params.deployment == deployment for a in runs.backend.agents for c in a.clients if c.process.running())
