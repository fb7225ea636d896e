"""Cohort files in both forms, and planning."""

from pathlib import Path

import pytest

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.orchestrator.cohorts import load_cohort_file, parse_cohort_file, plan_cohorts
from tests.helpers import REPO

INTENTS = REPO / "intents"


def test_readable_form_with_defaults(config: Config) -> None:
    parsed = load_cohort_file(INTENTS / "cohorts.yaml", config)
    assert parsed.form == "readable" and parsed.mlfo == "127.0.0.1:8000"
    a, b = parsed.cohorts
    assert (a.name, a.size, a.strategy, a.rounds, a.min_available, a.fraction_fit) == ("welding-a", 5, "FedAvg", 5, 5, 0.5)
    assert b.strategy == "FedProx" and a.intent.intentID == "edgeintent01"


def test_prototype_form_with_comma_lists(config: Config) -> None:
    text = (
        "mlfoadd: localhost:8001\ncohortdistr: 30,10,10\nintentdist: welding.yaml,drilling.yaml,cutting.yaml\n"
        "avgalgodist: FedAvg,fedyogi,Krum\nnumrounddist: [20, 10, 5]\nsameserverdist: [false, true, false]\n"
    )
    parsed = parse_cohort_file(text, "sendintent", INTENTS, config)
    assert parsed.form == "prototype" and parsed.mlfo == "localhost:8001"
    assert [c.size for c in parsed.cohorts] == [30, 10, 10]
    assert [c.strategy for c in parsed.cohorts] == ["FedAvg", "FedYogi", "Krum"]
    assert [c.rounds for c in parsed.cohorts] == [20, 10, 5]
    assert [c.intent.intentID for c in parsed.cohorts] == ["edgeintent01", "edgeintent02", "edgeintent03"]
    assert parsed.cohorts[1].form_fields(40) == {
        "ipstart": 40, "cohortsize": 10, "sameserver": True, "avgalgo": "FedYogi", "fracfit": 0.5,
        "minfit": 1, "minav": 1, "numround": 10, "name": "cohort2",
    }


def test_plan_tracks_client_ranges_and_servers(config: Config) -> None:
    text = "cohortdistr: [30, 10, 10]\nintentdist: [welding.yaml, welding.yaml, welding.yaml]\nsameserverdist: [false, true, false]\n"
    plans = plan_cohorts(parse_cohort_file(text, "c", INTENTS, config), config)
    assert [p.ipstart for p in plans] == [10, 40, 50]
    assert plans[0].clients[0] == "10.0.1.10:5000" and plans[0].clients[-1] == "10.0.1.39:5000"
    assert plans[2].clients == [f"10.0.1.{i}:5000" for i in range(50, 60)]
    assert [p.server for p in plans] == ["10.0.11.100:5000", "10.0.11.100:5000", "10.0.12.100:5000"]
    assert plans[1].shares_server_with == "cohort1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cohortdistr: [5, 5]\nintentdist: [welding.yaml]\n", r"field 'intentdist': has 1 entries but cohortdistr has 2"),
        ("cohortdistr: [5]\nintentdist: [nothere.yaml]\n", "intent file 'nothere.yaml' not found"),
        ("cohortdistr: [five]\nintentdist: [welding.yaml]\n", r"c:1, field 'cohortdistr\[0\]'"),
        ("cohorts:\n  - size: 2\n    intent: welding.yaml\n    strategy: FedMagic\n", "unknown FL strategy 'FedMagic'"),
        ("cohorts:\n  - size: 2\n    intent: welding.yaml\n    rounds: lots\n", r"c:4, field 'cohorts\[0\]\.rounds'"),
        ("cohorts:\n  - {size: 2, intent: welding.yaml, sameserver: true}\n", "first cohort has no previous"),
        ("cohorts:\n  - {size: 2, intent: welding.yaml, name: a}\n  - {size: 2, intent: welding.yaml, name: a}\n", "unique"),
        ("- a\n", "must be a mapping"),
    ],
)
def test_bad_cohort_files(config: Config, text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_cohort_file(text, "c", INTENTS, config)


def test_plan_refuses_what_does_not_fit(config: Config) -> None:
    too_many = parse_cohort_file("cohortdistr: [45, 10]\nintentdist: [welding.yaml, welding.yaml]\n", "c", INTENTS, config)
    with pytest.raises(ValidationError, match="outside the IP plan"):
        plan_cohorts(too_many, config)
    one_server = config.with_overrides({"ip_plan.servers": ["127.0.0.1:7000"]})
    two = parse_cohort_file("cohortdistr: [1, 1]\nintentdist: [welding.yaml, welding.yaml]\n", "c", INTENTS, one_server)
    with pytest.raises(ValidationError, match="pool of 1 is used up"):
        plan_cohorts(two, one_server)


def test_inline_intent(config: Config, tmp_path: Path) -> None:
    text = "cohorts:\n  - size: 3\n    intent: {intentID: inl, targets: [{id: a, operation: maximise, operand: robots.welding.accuracy}]}\n"
    parsed = parse_cohort_file(text, "c", tmp_path, config)
    assert parsed.cohorts[0].intent.intentID == "inl" and "robots.welding.accuracy" in parsed.cohorts[0].intent_yaml


def test_a_target_cohort_carries_its_policy_and_thresholds_to_the_form(config: Config) -> None:
    parsed = load_cohort_file(INTENTS / "cohorts-target.yaml", config)
    (cohort,) = parsed.cohorts
    assert cohort.policy == "default" and cohort.form_fields(10)["policy"] == "default"
    (plan,) = plan_cohorts(parsed, config)
    assert plan.target is not None and plan.target["wanted"] == "accuracy >= 0.93" and plan.target["max_clients"] == 4
    text = (INTENTS / "cohorts-target.yaml").read_text()
    with_thresholds = text.replace("    policy: default", "    policy: default\n    assurance: {plateau_rounds: 3}")
    (cohort,) = parse_cohort_file(with_thresholds, "c.yaml", INTENTS, config).cohorts
    assert cohort.form_fields(10)["assurance"] == '{"plateau_rounds": 3}'
    for bad, field in (("assurance: {plateau_rounds: 1}", "cohorts[0].assurance.plateau_rounds"),
                       ("assurance: {policy: none}", "cohorts[0].assurance"), ("assurance: {colour: 1}", "cohorts[0].assurance.colour")):
        with pytest.raises(ValidationError) as err:
            parse_cohort_file(text.replace("    policy: default", f"    {bad}"), "c.yaml", INTENTS, config)
        assert err.value.field == field
    too_many = parse_cohort_file(text.replace("min_available: 4", "min_available: 5"), "c.yaml", INTENTS, config)
    with pytest.raises(ValidationError, match="allows 4 clients but min_available is 5") as err:
        plan_cohorts(too_many, config)
    assert err.value.field == "cohorts[0].min_available"


def test_a_cohorts_partition_reaches_the_form_and_a_bad_one_names_its_field(config: Config, tmp_path: Path) -> None:
    import json

    from mlfo_toolkit.orchestrator.campus import _partition

    text = ("defaults: {partition: {kind: dirichlet, alpha: 0.1}}\ncohorts:\n  - {size: 3, intent: welding.yaml}\n"
            "  - {size: 3, intent: welding.yaml, partition: {kind: pathological, classes: 2, seed: 7}}\n")
    first, second = parse_cohort_file(text, "c.yaml", INTENTS, config).cohorts
    assert json.loads(first.form_fields(10)["partition"]) == {"kind": "dirichlet", "alpha": 0.1, "classes": 2, "shards": 2}
    assert json.loads(second.form_fields(13)["partition"])["seed"] == 7
    # What the campus MLFO takes from the form (anyone may send it): checked, the field named.
    assert _partition(second.form_fields(13)["partition"]) == {"kind": "pathological", "alpha": 0.5, "classes": 2, "shards": 2, "seed": 7}
    for bad in ('{"kind": "zipf"}', '{"kind": "dirichlet", "alpha": -1}', "not json", '{"kind": "iid", "x": 1}'):
        with pytest.raises(ValidationError) as err:
            _partition(bad)
        assert err.value.field == "partition"
    with pytest.raises(ValidationError) as err:
        parse_cohort_file(text.replace("classes: 2", "classes: zero"), "c.yaml", INTENTS, config)
    assert err.value.field == "cohorts[1].partition.classes" and err.value.line == 4


def test_cohorts_are_planned_against_the_running_networks_clients(config: Config, tmp_path: Path) -> None:
    from mlfo_toolkit import api
    from mlfo_toolkit.net.state import NetworkState, save_state
    from mlfo_toolkit.net.topology import load_topology

    cohorts = tmp_path / "ten.yaml"
    cohorts.write_text("cohorts:\n" + "".join(f"  - {{name: c{n}, size: 10, intent: {REPO / 'intents' / 'welding.yaml'}}}\n"
                                              for n in range(10)))
    state_dir = tmp_path / "state"
    cfg = config.with_overrides({"paths.state_dir": str(state_dir), "ip_plan.clients": []})
    with pytest.raises(ValidationError, match="outside the IP plan"):
        api.plan(cohorts, cfg, any_intent_path=True)  # the default plan: 50 clients
    topology = load_topology(None, {"cohorts": 10})  # as `topo up 10` recorded it: 100 clients, 10 FL servers
    save_state(NetworkState(topology.name, topology.source, topology.parameters, "mininet", 1, 0.0), state_dir)
    planned = api.plan(cohorts, cfg, any_intent_path=True).to_dict()
    last = planned["cohorts"][-1]
    assert last["clients"][-1].startswith("10.0.1.109") and last["server"].startswith("10.0.20.100")


def test_the_closed_loops_meter_finds_a_cohorts_campus_once_per_network(config: Config, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop asks for a deployment's meter on every turn: the topology is read once per network (it was read and
    expanded on every turn, a sixth of the campus MLFO's CPU), and a new network in the same folder is read anew."""
    from mlfo_toolkit.net import state as net_state
    from mlfo_toolkit.net.state import NetworkState, save_state
    from mlfo_toolkit.net.topology import load_topology
    from mlfo_toolkit.orchestrator import cohort_meter
    from mlfo_toolkit.orchestrator.cohort_meter import CohortMeter
    from mlfo_toolkit.orchestrator.records import ClientRecord, Deployment, DeploymentParams

    state_dir = tmp_path / "state"
    topology = load_topology(None, {"cohorts": 5})
    save_state(NetworkState(topology.name, topology.source, topology.parameters, "mininet", 1, 0.0), state_dir)
    reads: list[Path] = []
    monkeypatch.setattr(cohort_meter, "network_topology", lambda d: (reads.append(d), net_state.network_topology(d))[1])
    meter = CohortMeter(config.with_overrides({"mlfo.network_dir": str(state_dir)}))

    def deployment(campus: int) -> Deployment:
        return Deployment(id="d", name="c", intent_id="x", intent={}, pipeline={}, state="running", created=0, updated=0,
                          params=DeploymentParams(ipstart=10, cohortsize=2, strategy="FedAvg", fraction_fit=1.0, min_fit=1,
                                                  min_available=1, rounds=1),
                          clients=[ClientRecord(agent=f"10.0.1.{campus}{i}:5000", part=i) for i in range(2)])

    assert [meter._target(deployment(c))[1] for c in (2, 3, 2, 5)] == [2, 3, 2, 5]
    assert len(reads) == 1
    bigger = load_topology(None, {"cohorts": 10})  # `topo up 10` in the same folder: campus 10's clients exist now
    save_state(NetworkState(bigger.name, bigger.source, bigger.parameters, "mininet", 2, 0.0, phase="up"), state_dir)
    wide = deployment(0).model_copy(update={"clients": [ClientRecord(agent=f"10.0.1.10{i}:5000", part=i) for i in range(2)]})
    assert meter._target(wide)[1] == 10 and len(reads) == 2
