"""Hierarchical FL's plumbing: the edge socket carries a global round there and its aggregate back, fails
with a reason instead of hanging, and the campus MLFO splits a cohort into edges and refuses what cannot run."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.fl.edge import EdgeError, EdgeInbox, ask_edge, edge_socket
from mlfo_toolkit.fl.wake import HeldFolder
from mlfo_toolkit.orchestrator.cohorts import parse_cohort_file, shape_cohorts
from mlfo_toolkit.orchestrator.intake import ReceiveParams
from mlfo_toolkit.orchestrator.records import ClientRecord, Deployment, DeploymentParams
from mlfo_toolkit.orchestrator.tiers import edge_server_fields, plan_tiers, relay_fields, split_parts
from mlfo_toolkit.util.yamlfiles import validate
from tests.helpers import REPO


def _deep(tmp_path: Path) -> Path:
    # Deeper than a Unix socket address may be (108 bytes): the inbox must still listen there.
    return edge_socket(tmp_path / ("d" * 60) / ("e" * 60) / "server-1")


def test_a_global_round_goes_to_the_edge_and_its_aggregate_comes_back(tmp_path: Path) -> None:
    path = _deep(tmp_path)
    path.parent.mkdir(parents=True)
    inbox = EdgeInbox(path)
    model = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4)]

    def edge() -> None:
        request = inbox.next(timeout=5)
        assert request is not None
        request.answer({"num_examples": 90, "seen": request.header}, [a * 2 for a in request.arrays])

    worker = threading.Thread(target=edge)
    worker.start()
    reply, arrays = ask_edge(path, {"global_round": 3, "config": {"lr": 0.1}}, model, timeout=10)
    worker.join()
    assert reply["num_examples"] == 90 and reply["seen"] == {"global_round": 3, "config": {"lr": 0.1}}
    assert [a.tolist() for a in arrays] == [(m * 2).tolist() for m in model] and arrays[0].dtype == np.float32
    inbox.close()
    assert not path.exists()


def test_a_relay_waits_for_an_edge_that_is_still_starting(tmp_path: Path) -> None:
    path = _deep(tmp_path)
    path.parent.mkdir(parents=True)

    def late_edge() -> None:
        time.sleep(0.5)
        inbox = EdgeInbox(path)
        request = inbox.next(timeout=5)
        assert request is not None
        request.answer({"num_examples": 1}, request.arrays)
        inbox.close()

    worker = threading.Thread(target=late_edge)
    worker.start()
    reply, arrays = ask_edge(path, {}, [np.zeros(2)], timeout=10)
    worker.join()
    assert reply["num_examples"] == 1 and arrays[0].tolist() == [0.0, 0.0]


def test_no_edge_and_a_failed_edge_are_errors_with_the_reason(tmp_path: Path) -> None:
    path = _deep(tmp_path)
    path.parent.mkdir(parents=True)
    started = time.monotonic()
    with pytest.raises(EdgeError, match="no edge run listens"):
        ask_edge(path, {}, [np.zeros(1)], timeout=0.5)
    assert time.monotonic() - started < 3
    inbox = EdgeInbox(path)

    def failing_edge() -> None:
        request = inbox.next(timeout=5)
        assert request is not None
        request.fail("none of the edge's clients answered in local round 4")

    worker = threading.Thread(target=failing_edge)
    worker.start()
    with pytest.raises(EdgeError, match="local round 4"):
        ask_edge(path, {}, [np.zeros(1)], timeout=10)
    worker.join()
    inbox.close()


def test_a_broken_request_is_answered_with_an_error_and_the_edge_serves_the_next(tmp_path: Path) -> None:
    path = _deep(tmp_path)
    path.parent.mkdir(parents=True)
    inbox = EdgeInbox(path)
    folder = HeldFolder(path.parent)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(folder.address(path.name))
    raw.sendall(struct.pack("!QQ", 1 << 40, 0))  # a header far over the limit
    assert inbox.next(timeout=5) is None
    assert b"over the limits" in raw.recv(4096)
    raw.close()
    folder.close()

    def edge() -> None:
        request = inbox.next(timeout=5)
        assert request is not None
        request.answer({"num_examples": 2}, request.arrays)

    worker = threading.Thread(target=edge)
    worker.start()
    assert ask_edge(path, {}, [np.ones(3)], timeout=10)[0]["num_examples"] == 2
    worker.join()
    inbox.close()


def test_parts_split_into_neighbouring_groups() -> None:
    assert split_parts(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_parts(30, 3) == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    assert split_parts(2, 5) == [[0], [1]]  # never an edge without clients


def _record(size: int, edges: int, **params: object) -> Deployment:
    return Deployment(
        id="d1", name="c", intent_id="i", intent={}, pipeline={"source": "handmnist", "model": "complex"},
        params=DeploymentParams(ipstart=10, cohortsize=size, strategy="FedAvg", fraction_fit=0.5, min_fit=2, min_available=size,
                                rounds=5, aggregation="hierarchical", edges=edges, local_rounds=3, **params),  # type: ignore[arg-type]
        state="deploying", created=0, updated=0, clients=[ClientRecord(agent=f"10.0.1.{10 + p}:5000", part=p) for p in range(size)],
    )


def test_each_edge_runs_on_its_first_clients_host_and_its_clients_connect_to_it() -> None:
    record = _record(6, 2)
    record.tiers = plan_tiers(record, Config())
    assert [(t.edge, t.agent, t.parts) for t in record.tiers] == [(0, "10.0.1.10:5000", [0, 1, 2]), (1, "10.0.1.13:5000", [3, 4, 5])]
    fields = edge_server_fields(record, record.tiers[1])
    assert fields["tier"] == "edge" and fields["localrounds"] == 3 and fields["minav"] == 3 and fields["minfit"] == 1
    assert fields["deployment"] == "d1" and fields["fracfit"] == 0.5
    record.tiers[1].server = "10.0.1.13:9092"
    assert record.server_for(4) == "10.0.1.13:9092" and record.server_for(0) is None  # edge 0 not started yet
    relay = relay_fields(record, record.tiers[1], "10.0.11.100:9092")
    assert relay["relay"] is True and (relay["part"], relay["cohsize"], relay["server"]) == (1, 2, "10.0.11.100:9092")


def test_the_form_and_the_cohort_file_take_the_aggregation(config: Config) -> None:
    params = validate(ReceiveParams, {"cohortsize": "6", "aggregation": "hierarchical", "edges": "2", "localrounds": "2"}, {}, "form")
    assert (params.aggregation, params.edges, params.localrounds) == ("hierarchical", 2, 2)
    with pytest.raises(ValidationError, match="field 'edges'.*every edge needs a client"):
        validate(ReceiveParams, {"cohortsize": "2", "aggregation": "hierarchical", "edges": "3"}, {}, "form")
    with pytest.raises(ValidationError, match="field 'aggregation'"):
        validate(ReceiveParams, {"cohortsize": "2", "aggregation": "tree"}, {}, "form")
    text = ("defaults: {aggregation: hierarchical, local_rounds: 2}\n"
            "cohorts:\n  - {size: 6, intent: welding.yaml, edges: 2}\n  - {size: 4, intent: welding.yaml, aggregation: flat}\n")
    parsed = parse_cohort_file(text, "c", REPO / "intents", config)
    first, second = parsed.cohorts
    assert {k: first.form_fields(10).get(k) for k in ("aggregation", "edges", "localrounds")} == {
        "aggregation": "hierarchical", "edges": 2, "localrounds": 2}
    assert "aggregation" not in second.form_fields(16)
    shaped = shape_cohorts(parsed, 1, 3, None, edges=5)
    assert shaped.cohorts[0].edges == 3  # never more edges than clients
    with pytest.raises(ValidationError, match=r"c:3, field 'cohorts\[0\]\.aggregation'"):
        parse_cohort_file("cohorts:\n  - size: 2\n    aggregation: tree\n    intent: welding.yaml\n", "c", REPO / "intents", config)


def test_in_a_network_the_clients_train_under_the_aggregator_of_their_own_edge(config: Config) -> None:
    from mlfo_toolkit.net.topology import load_topology

    topology = load_topology(REPO / "topologies" / "hierarchical.yaml", {"edges": 3, "clients": 4})
    inner = topology.mlfo_config(config)
    assert [(e.name, e.kind, e.bandwidth_mbit, e.delay_ms) for e in inner.ip_plan.edges] == [
        ("edge1", "satellite", 600, 15), ("edge2", "fixed-wireless", 2000, 10), ("edge3", "metro", 10000, 5)]
    record = _record(10, 1)  # parts 0-9 from the pool's start: edge 1's four clients, edge 2's four, two of edge 3's
    record.clients = [ClientRecord(agent=a, part=p) for p, a in enumerate(inner.client_agents()[:10])]
    tiers = plan_tiers(record, inner)
    port = config.agent.port
    assert [(t.name, t.agent, t.parts, t.kind) for t in tiers] == [
        ("edge1", f"10.1.1.1:{port}", [0, 1, 2, 3], "satellite"), ("edge2", f"10.1.2.1:{port}", [4, 5, 6, 7], "fixed-wireless"),
        ("edge3", f"10.1.3.1:{port}", [8, 9], "metro")]
    assert tiers[0].link == {"bandwidth_mbit": 600, "delay_ms": 15}


def _edges(*rates: float | None, cpus: float | None = 1.0, clients: int = 10) -> dict[str, object]:
    return {"model_bytes": 38_480, "edges": [{"edge": i, "clients": clients, "rate_mbit": r, "cpus_free": cpus} for i, r in enumerate(rates)]}


def test_pays_off_aggregates_behind_a_slow_backhaul_and_nowhere_else() -> None:
    from mlfo_toolkit.config import PlacementSettings
    from mlfo_toolkit.orchestrator.placement import PaysOff, check_placement

    policy = PaysOff(PlacementSettings(min_saving_seconds=0.1, min_free_cpus=0.25))
    placed = check_placement(policy.place(_edges(10, 600, 2000)), [0, 1, 2])
    assert [placed[e]["aggregate"] for e in range(3)] == [True, False, False]
    # ten 38 kB updates down and up over 10 Mbit/s, against one of each: 0.55 s a round
    assert placed[0]["saving_seconds"] == pytest.approx(2 * 9 * 38_480 * 8 / 10e6, rel=1e-3)
    assert "600 Mbit/s" in placed[1]["reason"] and "< placement.min_saving_seconds 0.1" in placed[1]["reason"]
    # where it would pay but the aggregator's host is busy, it does not aggregate either
    busy = check_placement(policy.place(_edges(10, cpus=0.1)), [0])[0]
    assert not busy["aggregate"] and "0.10 cores free" in busy["reason"]
    unknown = check_placement(policy.place(_edges(None)), [0])[0]
    assert not unknown["aggregate"] and "neither measured nor declared" in unknown["reason"]


def test_a_researchers_placement_policy_is_loaded_only_when_allowed_and_its_answer_is_checked(tmp_path: Path) -> None:
    from mlfo_toolkit.config import PlacementSettings
    from mlfo_toolkit.orchestrator.placement import check_placement, load_placement

    mine = tmp_path / "mine.py"
    mine.write_text("class EveryOther:\n    def place(self, observation):\n"
                    "        return [{'edge': e['edge'], 'aggregate': e['edge'] % 2 == 0, 'reason': 'even'} for e in observation['edges']]\n")
    name = f"{mine}:EveryOther"
    with pytest.raises(ValidationError, match="not allowed"):
        load_placement(name, PlacementSettings())
    policy = load_placement(name, PlacementSettings(allowed_policies=[name]))
    placed = check_placement(policy.place(_edges(1, 1, 1)), [0, 1, 2])
    assert [placed[e]["aggregate"] for e in range(3)] == [True, False, True]
    with pytest.raises(ValueError, match="edge 7"):
        check_placement([{"edge": 7, "aggregate": True}], [0, 1])
    with pytest.raises(ValueError, match="not a list"):
        check_placement("everywhere", [0])
    assert check_placement([], [0, 1])[1]["reason"] == "the policy did not place it"


def test_backhaul_bytes_are_split_by_the_rounds_and_summed_by_link_kind() -> None:
    from mlfo_toolkit.net.backhaul import BackhaulCounter, interface_bytes

    edges = [{"name": "edge1", "kind": "satellite", "interfaces": ["edgesw1-eth12", "aggsw0-eth7"], "bandwidth_mbit": 600},
             {"name": "edge2", "kind": "metro", "interfaces": ["edgesw2-eth12", "aggsw0-eth8"]},
             {"name": "edge3", "kind": "metro", "interfaces": ["edgesw3-eth12", "aggsw0-eth9"]}]
    counter = BackhaulCounter(edges)
    # counters at t = 0, 1, 2, 3: edge1 carries 100 a second, edge2 10, edge3 30 (then its link vanished)
    counter.samples = [(float(t), [100 * t, 10 * t, 30 * t if t < 3 else None]) for t in range(4)]
    rounds = counter.per_round([0.0, 1.0, 2.0, 3.0])
    assert [r["bytes"]["edge1"] for r in rounds] == [100, 100, 100] and rounds[2]["bytes"]["edge3"] is None
    assert [r["total"] for r in rounds] == [140, 140, 110]
    summary = counter.summary([0.0, 1.0, 2.0, 3.0])  # the mean leaves round 1 out (registration, the first model)
    assert summary["mean_per_round_by_edge"] == {"edge1": 100, "edge2": 10, "edge3": 30}
    assert summary["mean_per_round_by_kind"] == {"satellite": 100, "metro": 40}
    assert summary["edges"][0] == {"name": "edge1", "kind": "satellite", "interface": "edgesw1-eth12", "declared_mbit": 600,
                                   "declared_delay_ms": None}
    assert interface_bytes("lo") is not None and interface_bytes("no-such-if0") is None
