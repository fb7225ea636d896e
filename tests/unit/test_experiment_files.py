"""Experiment files are checked with field and line before anything starts, a dry run plans them, and a run's
events get the MLFO's view of what they did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.experiments.runner import reaction
from mlfo_toolkit.orchestrator.records import ClientRecord, ClientRestart, Deployment
from mlfo_toolkit.orchestrator.sending import SentCohort
from tests.helpers import REPO

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
    ("name: x\nassurance:\n  plateau_rounds: 1\n", "assurance.plateau_rounds", 3),
    ("name: x\nassurance:\n  policy: none\n", "assurance", 3),
    ("name: x\nsweep:\n  assurance.plateau_gain: [0.01, -1]\n", "sweep.assurance.plateau_gain[1]", 3),
    (f"name: x\ncohorts: {COHORTS}\npolicy: nowhere.py:Nothing\n", "policy", 3),
    (f"name: x\ncohorts: {COHORTS}\nsweep:\n  policy: [none, os:NoSuchThing]\n", "sweep.policy", 4),
    ("name: x\nsweep:\n  aggregation: [flat, tree]\n", "sweep.aggregation[1]", 3),
    ("name: x\nsweep:\n  local_rounds: [1, 0]\n", "sweep.local_rounds[1]", 3),
    ("name: x\ntimeline:\n  - at: {seconds: 1}\n    kill: {cohort: a, part: 0, edge: 1}\n", "timeline[0].kill", 4),
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


def test_an_aggregation_sweep_plans_a_run_per_point_with_its_cohorts(workdir: Path) -> None:
    path = workdir / "h.yaml"
    path.write_text(f"name: h\ncohorts: {COHORTS}\nshape: {{cohorts: 1, clients: 6}}\nfl: {{edges: 2}}\n"
                    "sweep:\n  aggregation: [flat, hierarchical, auto]\n  local_rounds: [1, 3]\n")
    result = CliRunner().invoke(cli, ["run", str(path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert len(runs) == 6 and runs[0]["key"] == "aggregation_flat-local_rounds_1-r1"
    cohort = next(r for r in runs if r["key"] == "aggregation_auto-local_rounds_3-r1")["cohorts"][0]
    assert (cohort["aggregation"], cohort["local_rounds"], cohort["edges"]) == ("auto", 3, 2)


def test_a_policy_sweep_plans_a_run_per_policy(workdir: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(REPO / "experiments" / "assurance-kill.yaml"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [r["key"] for r in plan["runs"]][::3] == ["policy_none-r1", "policy_default-r1"]
    assert [r["cohorts"][0]["policy"] for r in plan["runs"]][::3] == ["none", "default"]
    own = workdir / "own.yaml"
    own.write_text(f"name: own\ncohorts: {COHORTS}\nsweep:\n  policy: [{REPO}/experiments/policies/frugal.py:Frugal]\n"
                   "  assurance.plateau_rounds: [3, 5]\n")
    result = CliRunner().invoke(cli, ["run", str(own), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["key"] for r in json.loads(result.stdout)["runs"]] == ["policy_Frugal-plateau_rounds_3-r1", "policy_Frugal-plateau_rounds_5-r1"]


def test_a_restart_ran_to_end_whether_or_not_the_run_had_stopped_its_clients() -> None:
    """The state read at the end of a run is `stopped` once the deployment ended; the restart still worked."""
    def restart_effect(client: ClientRecord) -> dict[str, object]:
        sent = [SentCohort("a", 10, "d1", Deployment.model_construct(state="done", clients=[client]))]
        records = [{"kind": "restart", "ok": True, "what": {"cohort": "a", "part": 1}, "fired": 100.0, "effect": {}}]
        reaction(records, sent)
        return records[0]["effect"]

    earlier = [ClientRestart(restarted_at=100.0, pid=7, lost_at=95.0)]
    for end in ("running", "stopped"):
        effect = restart_effect(ClientRecord(agent="fc.11", part=1, state=end, restarts=earlier))
        assert effect == {"client_state": end, "ran_to_end": True}
    lost_again = restart_effect(ClientRecord(agent="fc.11", part=1, state="lost", lost_at=130.0, restarts=earlier))
    assert lost_again == {"client_state": "lost", "ran_to_end": False}


def test_a_partition_sweep_names_its_runs_plainly_and_keeps_the_fixed_seed(workdir: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(REPO / "experiments" / "non-iid.yaml"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert len(runs) == 18 and runs[0]["key"] == "partition_iid-strategy_FedAvg-r1"
    assert runs[-1]["key"] == "partition_dirichlet0.1-strategy_FedProx-r3"
    bad = workdir / "bad.yaml"
    bad.write_text(f"name: bad\ncohorts: {COHORTS}\nsweep:\n  partition: [{{kind: iid}}, {{kind: zipf}}]\n")
    refused = CliRunner().invoke(cli, ["run", str(bad), "--dry-run", "--json"])
    assert refused.exit_code == 4 and "sweep.partition[1]" in refused.stdout


def test_an_experiments_app_must_be_a_flower_app_on_loopback(workdir: Path) -> None:
    plan = CliRunner().invoke(cli, ["run", str(REPO / "experiments" / "kill-an-app-client.yaml"), "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    for extra, message in ((f"app: {workdir}", "has no pyproject.toml"),
                           (f"app: {REPO / 'examples' / 'sklearn-digits'}\nbackend: network", "take apps from their config")):
        bad = workdir / "bad.yaml"
        bad.write_text(f"name: bad\ncohorts: {COHORTS}\n{extra}\n")
        refused = CliRunner().invoke(cli, ["run", str(bad), "--dry-run", "--json"])
        assert refused.exit_code == 4 and message in refused.stdout and '"field": "app"' in refused.stdout.replace("'", '"')


class _Campus:
    """A campus MLFO whose deployment has no FL server for `conflicts` asks, and ends (failed) after `ends_after`."""

    def __init__(self, conflicts: int, ends_after: int | None = None) -> None:
        self.conflicts, self.ends_after, self.asks, self.held = conflicts, ends_after, 0, []

    def __enter__(self) -> _Campus:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def control(self, deployment_id: str, changes: dict[str, int]) -> dict[str, object]:
        from mlfo_toolkit.errors import ConflictError

        self.asks += 1
        if self.asks <= self.conflicts:
            raise ConflictError(f"deployment {deployment_id} has no FL server")
        self.held.append(changes["hold"])
        return {}

    def deployment(self, deployment_id: str) -> dict[str, object]:
        import time

        ended = self.ends_after is not None and self.asks >= self.ends_after
        return Deployment(id=deployment_id, name="a", intent_id="x", intent={}, pipeline={}, created=time.time(), updated=time.time(),
                          params={"ipstart": 10, "cohortsize": 4, "strategy": "FedAvg", "fraction_fit": 1.0, "min_fit": 1,
                                  "min_available": 1, "rounds": 3},
                          state="failed" if ended else "deploying").to_json()


def test_a_hold_waits_for_the_fl_server_but_not_for_a_deployment_that_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from mlfo_toolkit.config import Config
    from mlfo_toolkit.experiments import runner
    from mlfo_toolkit.experiments.events import Actions

    actions = Actions(Config(), "127.0.0.1:1", {}, [SentCohort("a", 10, "d1")])
    campus = _Campus(conflicts=3)
    monkeypatch.setattr(runner, "campus_client", lambda *a, **k: campus)
    runner._hold(actions, "a", 2, wait_for_server=60)
    assert campus.held == [2] and campus.asks == 4  # set once the server was there
    campus = _Campus(conflicts=10**6, ends_after=5)
    started = time.monotonic()
    runner._hold(actions, "a", 2, wait_for_server=60)
    assert campus.held == [] and time.monotonic() - started < 5  # the deployment failed: no 60 s wait
    runner._hold(actions, "b", 2, wait_for_server=60)  # a cohort that was never sent: nothing to hold
