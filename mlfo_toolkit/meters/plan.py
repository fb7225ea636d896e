"""What metering cohort N means on a topology: which meters and flows on which switches (pure data)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.net.topology import Topology

METER_PRIORITY = 10000
COOKIE_BASE = 0x6D6C_666F_0000_0000  # "mlfo" in the high bytes marks every flow mlfo adds
DIRECTIONS = ("up", "down", "both")
_UNITS = {"": 1e-3, "bit": 1e-3, "k": 1, "kbit": 1, "m": 1e3, "mbit": 1e3, "g": 1e6, "gbit": 1e6}


def parse_rate_kbps(text: str | float, field_name: str = "rate") -> int:
    """'100mbit', '10M', '500kbit', '1gbit' or a number of kbit/s -> kbit/s."""
    if isinstance(text, (int, float)):
        value, unit = float(text), "k"
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?(?:bit)?)(?:/s|ps)?\s*", str(text).lower())
        if not match:
            raise ValidationError(f"'{text}' is not a rate", field=field_name, hint="e.g. 100mbit, 10M, 500kbit")
        value, unit = float(match.group(1)), match.group(2)
    kbps = int(round(value * _UNITS[unit]))
    if kbps < 1:
        raise ValidationError(f"'{text}' is below 1 kbit/s", field=field_name)
    return kbps


@dataclass(frozen=True)
class FlowSpec:
    """One OpenFlow 1.3 rule: match in_port / IPv4 destination, then meter and output."""

    priority: int
    in_port: int | None
    ipv4_dst: str | None
    output_port: int


@dataclass
class MeterSpec:
    """A drop-band meter on one switch and the flows that send traffic through it."""

    switch: str
    dpid: int
    direction: str  # up or down
    key: int  # meter id where the controller lets us choose it (OVS); cookie suffix
    rate_kbps: int
    burst_kbits: int
    flows: list[FlowSpec] = field(default_factory=list)

    @property
    def cookie(self) -> int:
        return COOKIE_BASE | (self.key << 8) | (1 if self.direction == "up" else 2)

    @property
    def device_id(self) -> str:
        return f"of:{self.dpid:016x}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cookie": f"{self.cookie:#018x}", "device_id": self.device_id}


def plan_meters(topology: Topology, cohort: int, rate_kbps: int, burst_kbits: int | None, direction: str) -> list[MeterSpec]:
    """Uplink: on the cohort's campus switch, every client port -> uplink through a meter.
    Downlink: on the next switch up (the edge switch), traffic to each client -> campus port through a meter."""
    if direction not in DIRECTIONS:
        raise ValidationError(f"unknown direction '{direction}'", field="direction", hint="up, down or both")
    # 200 ms of traffic: smaller buckets make TCP back off below the rate (measured: 10 Mbit/s with a
    # 100 ms burst gave 5 Mbit/s over jumbo frames, with 200 ms 9.6 Mbit/s).
    burst = burst_kbits if burst_kbits is not None else max(1, rate_kbps // 5)
    campus = topology.cohort_switch(cohort)
    ports = topology.links_of(campus.name)
    switch_names = {s.name for s in topology.switches}
    uplinks = [(port, peer) for port, peer in ports if peer in switch_names]
    if len(uplinks) != 1:
        raise ValidationError(f"campus switch {campus.name} must have exactly one switch uplink, has {len(uplinks)}")
    uplink_port, edge_name = uplinks[0]
    clients = [topology.host(peer) for _, peer in ports if peer not in switch_names]
    clients = [c for c in clients if c.role == "fl-client"]
    meters = []
    if direction in ("up", "both"):
        flows = [FlowSpec(METER_PRIORITY, c.port, None, uplink_port) for c in clients]
        meters.append(MeterSpec(campus.name, campus.dpid, "up", cohort, rate_kbps, burst, flows))
    if direction in ("down", "both"):
        edge = topology.switch(edge_name)
        towards = topology.port_towards(edge.name, campus.name)
        flows = [FlowSpec(METER_PRIORITY, None, c.ip, towards) for c in clients]
        meters.append(MeterSpec(edge.name, edge.dpid, "down", cohort, rate_kbps, burst, flows))
    return meters
