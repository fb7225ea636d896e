"""A hierarchical deployment's edge aggregators as the campus MLFO places, starts, watches and loses them
(stand-in agents: the MLFO's side of the contract; test_flower_run runs the two tiers for real)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from mlfo_toolkit.config import Config
from tests.helpers.orchestra import Orchestra, close, send, start_orchestra


def _until(built: Orchestra, deployment: str, done: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = built.campus.deployment(deployment).to_json()
        if done(record):
            return record
        time.sleep(0.1)
    raise AssertionError(f"deployment {deployment} never got there: {record}")


@pytest.mark.parametrize("how", ["rehome", "drop"])
def test_a_lost_edge_aggregator_is_seen_and_its_clients_handled_as_configured(config: Config, workdir: Path, how: str) -> None:
    built, closables = start_orchestra(config.with_overrides({"placement.on_edge_lost": how, "mlfo.client_check_seconds": 0.2}),
                                       workdir, servers=1, clients=6)
    try:
        for agent in built.clients:
            agent.report_clients = True  # their SuperNodes (and relays) run
        built.servers[0].final_state = "running"  # the global run goes on until the MLFO stops it
        answer = send(built, cohortsize=6, minav=6, aggregation="hierarchical", edges=2, localrounds=3)
        assert answer.status_code == 202, answer.text
        deployment = answer.json()["id"]
        record = _until(built, deployment, lambda r: r["state"] == "running")
        first, second = record["tiers"]
        assert (first["parts"], second["parts"], first["state"]) == ([0, 1, 2], [3, 4, 5], "running")
        # Each edge runs on its first client's host: an edge run (tier=edge, its local rounds), its clients
        # towards it, and a relay (part = the edge) towards the global server, which samples both edges.
        edge_agent = built.clients[3]
        (edge_run,) = edge_agent.serv_calls
        assert edge_run["tier"] == "edge" and edge_run["localrounds"] == "3" and edge_run["minav"] == "3"
        relay = next(c for c in edge_agent.cli_calls if c.get("relay") == "true")
        assert relay["part"] == "1" and relay["cohsize"] == "2" and relay["server"] == record["server"]["server"]
        assert all(built.clients[p].cli_calls[0]["server"] == second["server"] for p in (3, 4, 5))
        (global_run,) = built.servers[0].serv_calls
        assert (global_run["minav"], global_run["minfit"], global_run["fracfit"]) == ("2", "2", "1.0")

        edge_agent.final_state = "failed"  # its edge SuperLink died
        lost = _until(built, deployment, lambda r: r["tiers"][1]["state"] == "lost" and any(
            d["trigger"] == "edge_lost" for d in r["decisions"]))
        gone = lost["tiers"][1]
        assert gone["handled"] == how and gone["parts_before"] == [3, 4, 5] and gone["parts"] == []
        assert "its edge run is gone" in gone["error"]
        decision = next(d for d in lost["decisions"] if d["trigger"] == "edge_lost")
        changes = built.servers[0].control_calls[-1]
        if how == "rehome":
            # The edge's three clients were started again, towards the global server, which now has four members.
            assert [a["kind"] for a in decision["actions"]] == ["exclude_relay"] + ["rehome_client"] * 3
            assert all(a["status"] == "done" for a in decision["actions"])
            assert all(built.clients[p].cli_calls[-1]["server"] == lost["server"]["server"] for p in (3, 4, 5))
            assert (changes["min_available"], changes["min_fit"]) == (4, 4)
        else:
            assert [a["kind"] for a in decision["actions"]] == ["exclude_relay", "drop_edge"]
            assert [lost["clients"][p]["state"] for p in (3, 4, 5)] == ["spare"] * 3
            assert (changes["min_available"], changes["min_fit"]) == (1, 1)
        # What was left of the aggregator was stopped by name (its edge run and relay), not the host's clients.
        assert deployment in edge_agent.stop_calls
        stopped = requests.post(f"{built.url}/deployments/{deployment}/stop", headers=built.headers, timeout=30)
        assert stopped.status_code == 200, stopped.text
        ended = built.wait(deployment)
        assert ended["tiers"][0]["state"] == "stopped"
    finally:
        close(closables)
