"""The ONOS meter driver against a stand-in that follows ONOS 2.6.0's REST contract."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import AuthError, RemoteError, UnreachableError
from mlfo_toolkit.meters.onos import OnosClient, OnosMeterDriver
from mlfo_toolkit.meters.operations import clear_meters, load_meters, set_meter
from mlfo_toolkit.meters.plan import plan_meters
from mlfo_toolkit.net.state import NetworkState, save_state
from mlfo_toolkit.net.topology import load_topology
from mlfo_toolkit.util.processes import free_port
from tests.helpers import REPO
from tests.helpers.fake_onos import FakeOnos

SMALL = load_topology(Path("small"))
DEVICES = [s.onos_id for s in SMALL.switches]


@pytest.fixture
def onos() -> Iterator[FakeOnos]:
    fake = FakeOnos(DEVICES, first_meter_id=10)  # other apps already hold meters 1..9
    yield fake
    fake.close()


@pytest.fixture
def onos_config(config: Config, onos: FakeOnos, workdir: Path) -> Config:
    # meter set reads the running topology from the state file; here it names the small topology.
    state = NetworkState("small", str(REPO / "topologies" / "small.yaml"), SMALL.parameters, "mininet", 1, 0.0, phase="up")
    save_state(state, workdir / "state")
    return config.with_overrides({"onos.url": onos.url})


def test_ids_come_from_location_and_hex_answers(onos_config: Config, onos: FakeOnos) -> None:
    result = set_meter(onos_config, 1, "100mbit", None, "both", "onos")
    up, down = result["installed"]
    assert (up["meter_id"], down["meter_id"]) == (10, 10)  # per device, the first free id
    assert up["device_id"] == "of:0000000000000004" and len(up["flow_ids"]) == 3
    second = set_meter(onos_config, 2, "50mbit", None, "down", "onos")
    assert second["installed"][0]["meter_id"] == 11  # the edge switch's next id
    client = OnosClient(onos_config.onos)
    listed = {m["id"] for m in client.get_meters("of:0000000000000003")}
    assert listed == {10, 11}  # "a" and "b" on the wire
    assert onos.meters["of:0000000000000004"][10]["bands"][0]["rate"] == 100_000
    flow = next(iter(onos.flows["of:0000000000000004"].values()))
    assert flow["appId"] == "org.mlfo.meters" and flow["treatment"]["instructions"][0] == {"type": "METER", "meterId": 10}


def test_rerun_replaces_and_clear_removes_only_ours(onos_config: Config, onos: FakeOnos) -> None:
    set_meter(onos_config, 1, "100mbit", None, "both", "onos")
    foreign_flow = 0x1234
    onos.flows["of:0000000000000004"][foreign_flow] = {"appId": "org.onosproject.fwd"}
    set_meter(onos_config, 1, "10mbit", None, "both", "onos")
    assert len(onos.meters["of:0000000000000004"]) == 1  # replaced, not piled up
    assert onos.meters["of:0000000000000004"][10]["bands"][0]["rate"] == 10_000  # the freed id is reused
    assert len(onos.flows["of:0000000000000004"]) == 4  # 3 of ours + the foreign one
    assert clear_meters(onos_config) == [1]
    assert onos.meters["of:0000000000000004"] == {} and list(onos.flows["of:0000000000000004"]) == [foreign_flow]
    assert not any("/flows/application/" in path for _, path in onos.calls)
    assert load_meters(onos_config) == {}


def test_errors_are_clear(config: Config, onos: FakeOnos) -> None:
    bad_password = config.with_overrides({"onos.url": onos.url, "onos.password": "wrong"})
    spec = plan_meters(SMALL, 1, 1000, None, "up")[0]
    with pytest.raises(AuthError, match="ONOS answered 401") as auth:
        OnosMeterDriver(bad_password.onos).apply(spec)
    assert auth.value.exit_code == 10
    unknown = FakeOnos(["of:00000000000000ff"])
    try:
        with pytest.raises(RemoteError, match="400.*Invalid deviceId") as err:
            OnosMeterDriver(config.with_overrides({"onos.url": unknown.url}).onos).apply(spec)
        assert err.value.status == 400
    finally:
        unknown.close()
    refused = config.with_overrides({"onos.url": f"http://127.0.0.1:{free_port()}/onos/v1"})
    with pytest.raises(UnreachableError, match="cannot reach ONOS"):
        OnosMeterDriver(refused.onos).apply(spec)


def test_a_failed_flow_rolls_back_its_meter(onos_config: Config, onos: FakeOnos) -> None:
    onos.devices.discard("of:0000000000000003")  # the edge switch vanished from ONOS
    with pytest.raises(RemoteError):
        set_meter(onos_config, 1, "10mbit", None, "both", "onos")
    assert onos.meters["of:0000000000000004"] == {} and onos.flows["of:0000000000000004"] == {}
    assert load_meters(onos_config) == {}


def test_cli_exit_codes(onos_config: Config, onos: FakeOnos, workdir: Path) -> None:
    env = {"MLFO_ONOS__URL": onos.url, "MLFO_PATHS__STATE_DIR": str(workdir / "state")}
    ok = CliRunner().invoke(cli, ["meter", "set", "--port", "1", "--rate", "10mbit", "--controller", "onos", "--json"], env=env)
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["installed"][0]["meter_id"] == 10
    bad = CliRunner().invoke(cli, ["meter", "set", "--port", "1", "--controller", "onos"], env={**env, "MLFO_ONOS__PASSWORD": "nope"})
    assert bad.exit_code == 10 and "ONOS answered 401" in bad.stderr and "onos.password" in bad.stderr
    missing = CliRunner().invoke(cli, ["meter", "set", "--port", "7", "--controller", "onos"], env=env)
    assert missing.exit_code == 4 and "no campus switch for cohort 7" in missing.stderr
    gone = CliRunner().invoke(cli, ["meter", "set", "--port", "1", "--controller", "onos"], env={**env, "MLFO_ONOS__URL": f"http://127.0.0.1:{free_port()}"})
    assert gone.exit_code == 5


def test_topo_up_with_onos_activates_the_forwarding_apps(config: Config, onos: FakeOnos) -> None:
    from mlfo_toolkit.errors import ValidationError
    from mlfo_toolkit.meters.controllers import resolve_controller

    settings = config.with_overrides({"onos.url": onos.url, "onos.openflow": "127.0.0.1:6633"})
    assert resolve_controller(settings, "onos") == "127.0.0.1:6633"
    assert onos.activated == ["org.onosproject.openflow", "org.onosproject.fwd"]
    assert resolve_controller(settings, "10.1.2.3:6653") == "10.1.2.3:6653"
    assert resolve_controller(settings, None) is None
    with pytest.raises(ValidationError, match="HOST:PORT"):
        resolve_controller(settings, "ryu")
