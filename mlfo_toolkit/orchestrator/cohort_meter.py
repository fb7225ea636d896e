"""A deployment's meter in the emulated network the campus MLFO runs in (`mlfo.network_dir`): the
closed loop raises or clears it through the same path as `mlfo meter set` (meters.operations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ConflictError, MlfoError
from mlfo_toolkit.meters.operations import clear_meters, load_meters, set_meter
from mlfo_toolkit.net.state import network_topology
from mlfo_toolkit.orchestrator.records import Deployment


class CohortMeter:
    def __init__(self, config: Config) -> None:
        self.config = config

    def set(self, record: Deployment, rate_mbit: float | None) -> dict[str, Any]:
        """Set (or with None clear) the cohort's meter, as `mlfo meter set` does."""
        network, cohort = self._target(record)
        if rate_mbit is None:
            return {"cleared": clear_meters(network, cohort)}
        return set_meter(network, cohort, f"{rate_mbit:g}mbit", None, "both", None)  # the network's controller

    def rate(self, record: Deployment) -> float | None:
        """The Mbit/s of the cohort's meter, if one is set (None also outside an emulated network)."""
        if self.config.mlfo.network_dir is None:
            return None
        try:
            network, cohort = self._target(record)
        except MlfoError:
            return None
        entry = load_meters(network).get(str(cohort))
        return round(entry["rate_kbps"] / 1000, 3) if entry else None

    def _target(self, record: Deployment) -> tuple[Config, int]:
        """The network's config (its state folder) and the meter port (campus switch) of a deployment's clients."""
        network_dir = self.config.mlfo.network_dir
        if network_dir is None:
            raise ConflictError("this MLFO does not run in an emulated network: there is no meter to change")
        network = self.config.with_overrides({"paths.state_dir": str(network_dir)})
        _, topology = network_topology(Path(network_dir))
        by_ip = {h.ip: h for h in topology.fl_clients()}
        hosts = [c.agent.rsplit(":", 1)[0] for c in record.clients]
        campuses = {by_ip[h].campus for h in hosts if h in by_ip}
        if len(campuses) != 1 or None in campuses:
            raise ConflictError(f"the clients of {record.id} are not behind one campus switch: no one meter is theirs")
        return network, int(campuses.pop() or 0)
