"""Meter plans from topologies, rate parsing, and ONOS request bodies against ONOS's own JSON schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.meters.onos import flow_body, meter_body
from mlfo_toolkit.meters.plan import parse_rate_kbps, plan_meters
from mlfo_toolkit.net.topology import load_topology

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts" / "onos"


@pytest.mark.parametrize(("text", "kbps"), [("100mbit", 100_000), ("10M", 10_000), ("500kbit", 500), ("1gbit", 1_000_000), ("2.5mbit", 2_500), (64, 64)])
def test_rates(text: str | int, kbps: int) -> None:
    assert parse_rate_kbps(text) == kbps


@pytest.mark.parametrize("text", ["fast", "-3mbit", "10 furlongs", "0.1bit"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValidationError, match="rate"):
        parse_rate_kbps(text)


def test_plan_on_the_small_topology() -> None:
    up, down = plan_meters(load_topology(Path("small")), 2, 10_000, None, "both")
    assert (up.switch, up.direction, up.rate_kbps, up.burst_kbits) == ("swCampus2", "up", 10_000, 2_000)
    assert [(f.in_port, f.output_port) for f in up.flows] == [(1, 4), (2, 4), (3, 4)]  # clients -> uplink port 4
    assert (down.switch, down.device_id) == ("swEdge0", "of:0000000000000003")
    assert [(f.ipv4_dst, f.output_port) for f in down.flows] == [("10.0.1.13", 4), ("10.0.1.14", 4), ("10.0.1.15", 4)]
    assert up.cookie != down.cookie and f"{up.cookie:#x}".startswith("0x6d6c666f")


def test_plan_on_the_prototype_layout() -> None:
    (up,) = plan_meters(load_topology(None), 3, 100_000, 50_000, "up")
    assert up.switch == "swCampus3" and len(up.flows) == 10 and {f.output_port for f in up.flows} == {11}
    assert up.burst_kbits == 50_000
    with pytest.raises(ValidationError, match="no campus switch for cohort 9"):
        plan_meters(load_topology(None), 9, 1000, None, "up")


def _int64(checker: Any, instance: Any) -> bool:
    # The shipped schema types ethType as "int64" (not a JSON-schema type); ONOS reads a number or a hex string.
    return isinstance(instance, int) or (isinstance(instance, str) and instance.startswith("0x"))


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((CONTRACTS / name).read_text())
    checker = jsonschema.Draft4Validator.TYPE_CHECKER.redefine("int64", _int64)
    return jsonschema.validators.extend(jsonschema.Draft4Validator, type_checker=checker)(schema)


def test_bodies_validate_against_onos_schemas() -> None:
    for spec in plan_meters(load_topology(Path("small")), 1, 10_000, None, "both"):
        _validator("MeterPost.json").validate(meter_body(spec))
        flows = _validator("FlowsPost.json")
        for flow in spec.flows:
            body = flow_body(spec, flow, meter_id=12)
            # The schema's instruction item lists OUTPUT's fields (type, port) as required for every
            # instruction; ONOS's codec reads a METER instruction's meterId instead. Check OUTPUT as
            # written and METER by the contract.
            meter_instruction, output = body["treatment"]["instructions"]
            assert meter_instruction == {"type": "METER", "meterId": 12}
            flows.validate({**body, "treatment": {**body["treatment"], "instructions": [output]}})
            assert output["port"].isdigit()


def test_schema_check_is_not_vacuous() -> None:
    with pytest.raises(jsonschema.ValidationError):
        _validator("MeterPost.json").validate({"deviceId": "of:1", "unit": "KB_PER_SEC", "burst": True, "bands": [{"type": "DROP"}]})
