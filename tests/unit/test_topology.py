"""Every shipped topology loads, expands and numbers its ports without root."""

from pathlib import Path

import pytest

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.net.changes import link_ends
from mlfo_toolkit.net.topology import TopologyFile, build_topology, load_topology, shipped_topologies, substitute


@pytest.mark.parametrize("path", shipped_topologies(), ids=lambda p: p.name)
def test_every_shipped_topology_is_consistent(path: Path) -> None:
    topology = load_topology(path)
    assert len({h.ip for h in topology.hosts}) == len(topology.hosts)
    assert len({s.dpid for s in topology.switches}) == len(topology.switches)
    for switch in topology.switches:
        ports = [port for port, _ in topology.links_of(switch.name)]
        assert ports == list(range(1, len(ports) + 1)), f"{switch.name} ports are not 1..n"
    interfaces = [h.interface for h in topology.hosts] + [i for link in topology.links for i in (link.interface_a, link.interface_b)]
    assert len(set(interfaces)) == len(interfaces) and max(len(i) for i in interfaces) <= 15
    for role in ("cloud-mlfo", "campus-mlfo", "app-server", "app-client"):
        assert topology.one(role)
    assert topology.fl_servers() and topology.fl_clients()


def test_prototype_layout_and_ip_plan() -> None:
    topology = load_topology(None)  # topologies/prototype.yaml, 5 cohorts
    assert topology.host("cloud.0").ip == "10.0.0.1" and topology.host("mo.1").ip == "10.0.1.1"
    assert topology.host("prom.0").ip == "10.0.0.100" and topology.host("appserv.0").ip == "10.0.0.2"
    clients = topology.fl_clients()
    assert len(clients) == 50 and clients[0].ip == "10.0.1.10" and clients[-1].ip == "10.0.1.59"
    assert topology.host("fc.37").ip == "10.0.1.37" and topology.host("fc.37").switch == "swCampus3"
    assert [h.ip for h in topology.fl_servers()] == [f"10.0.{10 + n}.100" for n in range(1, 6)]
    assert topology.host("fed.3").cpus == 2
    assert topology.switch("swCampus1").onos_id == "of:0000000000000004"
    # campus switch: clients on ports 1..10, uplink to the edge on 11
    assert topology.port_towards("swCampus2", "swEdge0") == 11
    assert topology.links_of("swCampus2")[0] == (1, "fc.20")
    assert {(link.a, link.b): link.delay_ms for link in topology.links}[("swEdge0", "satsw0")] == 12
    assert all(link.bandwidth_mbit == 500 for link in topology.links)
    assert topology.cohort_switch(4).name == "swCampus4"
    with pytest.raises(ValidationError, match="no campus switch for cohort 6"):
        topology.cohort_switch(6)


@pytest.mark.parametrize("cohorts", [1, 3, 8])
def test_prototype_is_parameterised_by_cohorts(cohorts: int) -> None:
    topology = load_topology(None, {"cohorts": cohorts})
    servers = topology.fl_servers()
    assert len(servers) == cohorts and servers[-1].name == f"fed.{cohorts}"
    assert len([s for s in topology.switches if s.name.startswith("csw")]) == cohorts


def test_ten_cohorts_get_ten_campus_switches_of_ten_clients() -> None:
    topology = load_topology(None, {"cohorts": 10})
    clients = topology.fl_clients()
    assert len(clients) == 100 and len({h.ip for h in topology.hosts}) == len(topology.hosts)
    assert len({s.dpid_hex for s in topology.switches}) == len(topology.switches)
    assert [h.ip for h in clients if h.campus == 10] == [f"10.0.1.10{i}" for i in range(10)]
    assert topology.cohort_switch(10).name == "swCamp10" and topology.cohort_switch(9).name == "swCampus9"
    assert all(len(h.interface) <= 15 for h in topology.hosts)
    five = load_topology(None, {"cohorts": 5})  # the prototype's own DPIDs are unchanged at 5
    assert {s.name: int(s.dpid_hex, 16) for s in five.switches if s.name in ("swCampus5", "csw1", "csw5")} == {
        "swCampus5": 8, "csw1": 9, "csw5": 13}


def test_small_topology() -> None:
    topology = load_topology(Path("small"))
    assert [h.ip for h in topology.fl_clients()] == [f"10.0.1.{i}" for i in range(10, 16)]
    assert [h.name for h in topology.fl_clients() if h.campus == 2] == ["fc.20", "fc.21", "fc.22"]
    assert len(topology.fl_servers()) == 2


def test_mlfo_config_comes_from_the_topology(config: Config) -> None:
    inner = load_topology(Path("small")).mlfo_config(config)
    assert inner.mlfo.cloud == "10.0.0.1:9000"
    assert inner.client_agents()[:2] == ["10.0.1.10:5000", "10.0.1.11:5000"]
    assert inner.server_agents() == ["10.0.11.100:5000", "10.0.12.100:5000"]


def _spec(**changes: object) -> TopologyFile:
    base: dict[str, object] = {
        "name": "t",
        "switches": [{"name": "s1", "dpid": 1}],
        "hosts": [{"name": "h1", "role": "fl-client", "ip": "10.0.0.1", "switch": "s1"}, {"name": "h2", "role": "fl-server", "ip": "10.0.0.2", "switch": "s1"}],
    }
    return TopologyFile.model_validate({**base, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hosts": [{"name": "h1", "role": "fl-client", "ip": "10.0.0.1", "switch": "s9"}]}, "unknown switch 's9'"),
        ({"hosts": [{"name": "h1", "role": "fl-client", "ip": "10.0.0.300", "switch": "s1"}]}, "not an IPv4 address"),
        ({"hosts": [{"name": "h1", "role": "fl-client", "ip": "10.0.0.1", "switch": "s1"}, {"name": "h2", "role": "fl-client", "ip": "10.0.0.1", "switch": "s1"}]}, "share the address"),
        ({"hosts": [{"name": "h1", "role": "router", "ip": "10.0.0.1", "switch": "s1"}]}, "role"),
        ({"hosts": [{"name": "averyveryverylongname", "role": "fl-client", "ip": "10.0.0.1", "switch": "s1"}]}, "name"),
        ({"switches": [{"name": "s1", "dpid": 1}, {"name": "s2", "dpid": 1}]}, "share a DPID"),
        ({"links": [{"a": "s1", "b": "h1"}]}, "not a switch"),
        ({"switches": [{"repeat": {"var": "n", "from": 1, "to": "{cohorts}"}, "name": "s{n}", "dpid": "{n}"}]}, "unknown variable"),
        ({"hosts": [{"name": "h1; rm", "role": "fl-client", "ip": "10.0.0.1", "switch": "s1"}]}, "name"),
        ({"switches": [{"name": "s1", "dpid": 1}, {"name": "s2", "dpid": 2}], "links": [{"a": "s1", "b": "s2", "kind": "carrier-pigeon"}]},
         r"links\[0\]\.kind.*unknown link kind 'carrier-pigeon'"),
        ({"hosts": [{"name": "a1", "role": "fl-aggregator", "ip": "10.0.0.1", "switch": "s1"}]}, "aggregator a1 names no edge"),
        ({"switches": [{"name": "s1", "dpid": 1}, {"name": "s2", "dpid": 2}], "links": [{"a": "s1", "b": "s2", "patch": True, "bandwidth_mbit": 50}]},
         r"links\[0\]\.bandwidth_mbit.*s1-s2 is a patch link"),
        ({"switches": [{"name": "s1", "dpid": 1}, {"name": "s2", "dpid": 2}], "links": [{"a": "s1", "b": "s2", "patch": True, "delay_ms": 5}]},
         r"links\[0\]\.delay_ms.*patch link"),
        ({"switches": [{"name": "s1", "dpid": 1}, {"name": "s2", "dpid": 2}], "link_defaults": {"patch": True},
          "links": [{"a": "s1", "b": "s2", "kind": "satellite"}]}, r"links\[0\]\.kind.*patch link"),
    ],
)
def test_bad_topologies(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build_topology(_spec(**changes), "t.yaml")


def test_unknown_parameter_is_reported() -> None:
    with pytest.raises(ValidationError, match="no parameter clients"):
        load_topology(None, {"clients": 3})


def test_template_arithmetic_is_safe() -> None:
    assert substitute("10.0.{n+10}.{(s-1)*3+i}", {"n": 2, "s": 2, "i": 1}, "x") == "10.0.12.4"
    assert substitute("{n*2}", {"n": 4}, "x") == 8
    assert substitute("{max(5, n)}-{min(n, 9)}", {"n": 12}, "x") == "12-9"
    with pytest.raises(ValidationError, match="bad expression"):
        substitute("{__import__('os')}", {}, "x")
    with pytest.raises(ValidationError, match="bad expression"):
        substitute("{max(n)}", {"n": 1}, "x")  # min and max of two or more values only


def test_a_hosts_device_profile_gives_its_cpu_memory_and_link_unless_the_host_says_otherwise() -> None:
    hosts = [{"name": "h1", "role": "fl-client", "ip": "10.0.0.1", "switch": "s1", "profile": "rpi3"},
             {"name": "h2", "role": "fl-client", "ip": "10.0.0.2", "switch": "s1", "profile": "rpi4", "cpus": 0.5, "bandwidth_mbit": 30},
             {"name": "h3", "role": "fl-server", "ip": "10.0.0.3", "switch": "s1"}]
    topology = build_topology(_spec(hosts=hosts, link_defaults={"bandwidth_mbit": 500}), "t.yaml")
    h1, h2, h3 = topology.hosts
    assert (h1.profile, h1.cpus, h1.memory_mb, h1.bandwidth_mbit) == ("rpi3", 0.1, 512.0, 20.0)
    assert (h2.cpus, h2.memory_mb, h2.bandwidth_mbit) == (0.5, 2048.0, 30)
    assert (h3.profile, h3.cpus, h3.memory_mb, h3.bandwidth_mbit) == (None, None, None, 500)
    with pytest.raises(ValidationError, match="unknown device class 'pi5'"):
        build_topology(_spec(hosts=[{**hosts[0], "profile": "pi5"}]), "t.yaml")


def test_edges_of_different_kinds_each_with_its_aggregator_and_clients() -> None:
    topology = load_topology(Path("hierarchical"), {"edges": 4, "clients": 10})
    kinds = [(link.kind, link.bandwidth_mbit, link.delay_ms) for link in topology.links]
    # the kinds go round: the fourth edge is a satellite one again
    assert kinds == [("satellite", 600, 15), ("fixed-wireless", 2000, 10), ("metro", 10000, 5), ("satellite", 600, 15)]
    edges = topology.edges()
    assert [e["aggregator"] for e in edges] == ["10.1.1.1", "10.1.2.1", "10.1.3.1", "10.1.4.1"]
    assert edges[1]["clients"] == [f"10.1.2.{i}" for i in range(10, 20)]
    assert edges[2]["interfaces"] == ["edgesw3-eth12", "aggsw0-eth9"]  # the backhaul's two switch ports
    assert len(topology.fl_clients()) == 40 and topology.by_role("fl-aggregator")[0].cpus == 1
    # A link that sets its own rate keeps it; its kind gives the rest.
    spec = _spec(switches=[{"name": "s1", "dpid": 1}, {"name": "s2", "dpid": 2}],
                 links=[{"a": "s1", "b": "s2", "kind": "satellite", "bandwidth_mbit": 5}], link_kinds={"lora": {"bandwidth_mbit": 0.05}})
    (link,) = build_topology(spec, "t.yaml").links
    assert (link.kind, link.bandwidth_mbit, link.delay_ms) == ("satellite", 5, 15)


def test_the_prototype_layout_gets_an_aggregator_per_campus_on_request() -> None:
    plain = load_topology(None)
    assert [e["aggregator"] for e in plain.edges()] == [None] * 5 and len(plain.edges()[0]["clients"]) == 10
    topology = load_topology(None, {"aggregators": 1})
    assert [h.name for h in topology.by_role("fl-aggregator")] == [f"agg.{s}" for s in range(1, 6)]
    assert [e["aggregator"] for e in topology.edges()] == [f"10.0.2.{s}" for s in range(1, 6)]
    assert topology.port_towards("swCampus2", "swEdge0") == 12  # ten clients and the aggregator, then the uplink


def test_one_of_picks_in_turn() -> None:
    choice = {"one_of": ["a", "b", "c"], "index": "{e-1}"}
    assert [substitute(choice, {"e": e}, "x") for e in range(1, 6)] == ["a", "b", "c", "a", "b"]
    with pytest.raises(ValidationError, match="one_of needs"):
        substitute({"one_of": [], "index": "{e}"}, {"e": 1}, "x")


def test_patch_links_between_switches_have_no_rate_or_delay_and_keep_the_port_numbers() -> None:
    shaped, patched = load_topology(None), load_topology(None, {"patch_links": 1})
    assert not any(link.patch for link in shaped.links)
    assert all(link.patch and link.bandwidth_mbit is None and link.delay_ms == 0 for link in patched.links)
    assert all(h.bandwidth_mbit == 500 for h in patched.hosts)  # the hosts' own links keep their rate
    # Meters and Faucet address switch ports by number: the same in both layouts.
    assert [(s.name, shaped.links_of(s.name)) for s in shaped.switches] == [(s.name, patched.links_of(s.name)) for s in patched.switches]
    with pytest.raises(ValidationError, match="swEdge0-satsw0 is a patch link"):
        link_ends(patched, "satsw0", "swEdge0")
    assert link_ends(patched, "fc.10", "swCampus1")[1] == 500  # a host's link is still a veth pair, with its rate


def test_link_defaults_patch_applies_to_every_switch_link_that_does_not_say_otherwise() -> None:
    spec = _spec(switches=[{"name": "s1", "dpid": 1}, {"name": "s2", "dpid": 2}, {"name": "s3", "dpid": 3}],
                 link_defaults={"patch": True, "bandwidth_mbit": 100},
                 links=[{"a": "s1", "b": "s2"}, {"a": "s2", "b": "s3", "patch": False, "delay_ms": 5}])
    first, second = build_topology(spec, "t.yaml").links
    assert first.patch and first.bandwidth_mbit is None
    assert not second.patch and second.bandwidth_mbit == 100 and second.delay_ms == 5
