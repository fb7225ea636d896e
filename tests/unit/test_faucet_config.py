"""Faucet's configuration made from a topology and a meter plan (no controller running)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from mlfo_toolkit.meters.plan import plan_meters
from mlfo_toolkit.net.faucet import ALLOW_ALL, CHECKOUT_FAUCET, faucet_config
from mlfo_toolkit.net.topology import load_topology


def _metered(cohort: int = 1, rate_kbps: int = 10_000) -> tuple[dict, dict]:
    topology = load_topology(Path("small"))
    plain = faucet_config(topology, [])
    specs = [s.to_dict() for s in plan_meters(topology, cohort, rate_kbps, None, "both")]
    return plain, faucet_config(topology, specs)


def test_every_switch_and_port_is_in_one_vlan() -> None:
    topology = load_topology(Path("small"))
    config = faucet_config(topology, [])
    assert {name: dp["dp_id"] for name, dp in config["dps"].items()} == {s.name: s.dpid for s in topology.switches}
    for switch in topology.switches:
        ports = config["dps"][switch.name]["interfaces"]
        assert sorted(ports) == [port for port, _ in topology.links_of(switch.name)]
        assert all(p["native_vlan"] == "mlfo" and p["acls_in"] == [ALLOW_ALL] for p in ports.values())
    assert "meters" not in config


def test_a_meter_adds_only_its_acls_and_meters() -> None:
    plain, metered = _metered()
    assert set(metered["meters"]) == {"mlfo-c1-up", "mlfo-c1-down"}
    ids = {m["meter_id"] for m in metered["meters"].values()}
    assert ids == {1, 1001}
    band = metered["meters"]["mlfo-c1-up"]["entry"]["bands"][0]
    assert band == {"type": "DROP", "rate": 10_000, "burst_size": 2_000}
    campus = metered["dps"]["swCampus1"]["interfaces"]
    # uplink: every IPv4 packet entering a client port of campus 1 is metered, nothing else there
    assert {p for p, i in campus.items() if "mlfo-c1-up" in i["acls_in"]} == {1, 2, 3}
    assert metered["acls"]["mlfo-c1-up"] == [{"rule": {"dl_type": 0x800, "actions": {"meter": "mlfo-c1-up", "allow": 1}}}]
    # downlink: traffic to each client of cohort 1, on every edge port but the one towards campus 1
    edge = metered["dps"]["swEdge0"]["interfaces"]
    towards = next(p for p, i in edge.items() if i["description"] == "swCampus1")
    assert {p for p, i in edge.items() if "mlfo-c1-down" in i["acls_in"]} == set(edge) - {towards}
    assert [r["rule"]["ipv4_dst"] for r in metered["acls"]["mlfo-c1-down"]] == ["10.0.1.10", "10.0.1.11", "10.0.1.12"]
    # the allow-all ACL stays last everywhere, and the other switches are as they were
    assert all(i["acls_in"][-1] == ALLOW_ALL for dp in metered["dps"].values() for i in dp["interfaces"].values())
    for name in ("aggsw0", "swCampus2", "csw1", "csw2"):
        assert metered["dps"][name] == plain["dps"][name]


def test_faucet_accepts_the_configuration(tmp_path: Path) -> None:
    check = CHECKOUT_FAUCET.parent / "check_faucet_config"
    if not check.exists():
        pytest.skip("needs Faucet (`make faucet` installs it in .venv-faucet)")
    _, metered = _metered(2, 50_000)
    path = tmp_path / "faucet.yaml"
    path.write_text(yaml.safe_dump(metered))
    done = subprocess.run([str(check), str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # and refuses one that is wrong, so the check above can fail
    metered["acls"]["mlfo-c2-up"][0]["rule"]["actions"]["meter"] = "no-such-meter"
    path.write_text(yaml.safe_dump(metered))
    assert subprocess.run([str(check), str(path)], capture_output=True, text=True, timeout=120, check=False).returncode != 0
