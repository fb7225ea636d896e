"""The Faucet meter driver: mlfo's meter plan said as Faucet meters and port ACLs, applied by a reload.

Faucet owns every flow on its switches, so mlfo never writes flows there: it keeps the meters it set in
`faucet-meters.json` next to the network's state, writes Faucet's configuration with them, sends Faucet
SIGHUP, and waits until the switch itself reports the meter (or its absence). `remove` rewrites the
configuration without the meter: what Faucet installed for forwarding is left as it was.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import UnreachableError
from mlfo_toolkit.meters.ovs import ofctl
from mlfo_toolkit.meters.plan import MeterSpec
from mlfo_toolkit.net.faucet import faucet_record, meter_id, meter_name, reload_faucet
from mlfo_toolkit.net.state import network_topology
from mlfo_toolkit.util.files import write_json_atomically

METERS_FILE = "faucet-meters.json"


class FaucetMeterDriver:
    """Meters through the network's Faucet: its configuration, reloaded."""

    name = "faucet"

    def __init__(self, config: Config) -> None:
        self.state_dir = Path(config.paths.state_dir)
        self.timeout = config.faucet.reload_timeout_seconds

    def _load(self) -> dict[str, Any]:
        path = self.state_dir / METERS_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _apply_all(self, meters: dict[str, Any]) -> None:
        state, topology = network_topology(self.state_dir)
        reload_faucet(faucet_record(state), topology, list(meters.values()))
        write_json_atomically(self.state_dir / METERS_FILE, meters)

    def apply(self, spec: MeterSpec) -> dict[str, Any]:
        record = spec.to_dict()
        name = meter_name(record)
        meters = self._load()
        meters[name] = record
        self._apply_all(meters)
        self._wait(spec.switch, meter_id(record), present=True, rate_kbps=spec.rate_kbps)
        return {"switch": spec.switch, "meter_id": meter_id(record), "meter": name, "flows": len(spec.flows)}

    def remove(self, record: dict[str, Any]) -> None:
        meters = self._load()
        meters.pop(record["meter"], None)
        self._apply_all(meters)
        self._wait(record["switch"], int(record["meter_id"]), present=False)

    def _wait(self, switch: str, meter: int, *, present: bool, rate_kbps: int | None = None) -> None:
        """Until the switch reports the meter with this rate (or no such meter): Faucet applies a reload on its own time."""
        deadline = time.monotonic() + self.timeout
        pattern = re.compile(rf"\bmeter={meter}\b[^\n]*" + (rf"(\n\s*)?type=drop rate={rate_kbps}\b" if rate_kbps else ""))
        while time.monotonic() < deadline:
            if bool(pattern.search(ofctl("dump-meters", switch))) == present:
                return
            time.sleep(0.2)
        what = "show" if present else "drop"
        raise UnreachableError(f"{switch} did not {what} meter {meter} within {self.timeout:g} s of Faucet's reload",
                               hint="see faucet.log in the network's logs folder")
