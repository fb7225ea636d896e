"""The OVS meter driver: `ovs-ofctl -O OpenFlow13` on the topology's bridges (no controller needed)."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from mlfo_toolkit.errors import MissingDependencyError, RemoteError
from mlfo_toolkit.meters.plan import COOKIE_BASE, FlowSpec, MeterSpec


def ofctl(*args: str) -> str:
    """Run ovs-ofctl with OpenFlow 1.3 (argv, no shell); RemoteError with its message on failure."""
    try:
        done = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise MissingDependencyError("ovs-ofctl is not installed", hint="install Open vSwitch (`sudo make system`)") from None
    if done.returncode != 0:
        raise RemoteError(f"ovs-ofctl {' '.join(args[:2])} failed: {done.stderr.strip()}", status=done.returncode)
    return done.stdout


def flow_match(spec: MeterSpec, flow: FlowSpec) -> str:
    parts = [f"priority={flow.priority}", "ip"]
    if flow.in_port is not None:
        parts.append(f"in_port={flow.in_port}")
    if flow.ipv4_dst is not None:
        parts.append(f"nw_dst={flow.ipv4_dst}")
    return ",".join(parts)


class OvsMeterDriver:
    """Meters and flows on Open vSwitch bridges; meter id = cohort, cookie marks mlfo's flows."""

    name = "ovs"

    def apply(self, spec: MeterSpec) -> dict[str, Any]:
        meter = f"meter={spec.key} kbps burst stats bands=type=drop rate={spec.rate_kbps} burst_size={spec.burst_kbits}"
        existing = ofctl("dump-meters", spec.switch)
        verb = "mod-meter" if re.search(rf"\bmeter={spec.key}\b", existing) else "add-meter"
        ofctl(verb, spec.switch, meter)
        # Replace this meter's flows rather than pile them up.
        ofctl("del-flows", spec.switch, f"cookie={spec.cookie:#x}/-1")
        for flow in spec.flows:
            ofctl("add-flow", spec.switch, f"cookie={spec.cookie:#x},{flow_match(spec, flow)},actions=meter:{spec.key},output:{flow.output_port}")
        return {"switch": spec.switch, "meter_id": spec.key, "cookie": f"{spec.cookie:#x}", "flows": len(spec.flows)}

    def remove(self, record: dict[str, Any]) -> None:
        ofctl("del-flows", record["switch"], f"cookie={record['cookie']}/-1")
        ofctl("del-meter", record["switch"], f"meter={record['meter_id']}")

    def observe(self, switch: str, meter: int | None = None) -> dict[str, Any]:
        """mlfo's meters and flows on a switch, as the switch reports them: flows by mlfo's cookie, or (under a
        controller that writes the flows itself) those through `meter`."""
        marker = f"cookie={COOKIE_BASE:#x}"[:17] if meter is None else f"meter:{meter},"  # cookie=0x6d6c666f: mlfo's flows
        flows = [line.strip() for line in ofctl("dump-flows", switch).splitlines() if marker in line]
        meters: list[str] = []
        for line in ofctl("dump-meters", switch).splitlines():
            line = line.strip()
            if line.startswith("meter="):
                meters.append(line)
            elif line.startswith("type=") and meters:
                meters[-1] += line  # the band is printed on its own line

        stats = ofctl("meter-stats", switch)
        return {"flows": flows, "meters": meters, "stats": stats.strip().splitlines()[1:]}

