"""A deployment's meter in the emulated network the campus MLFO runs in (`mlfo.network_dir`): the
closed loop raises or clears it through the same path as `mlfo meter set` (meters.operations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ConflictError, MlfoError
from mlfo_toolkit.meters.operations import clear_meters, load_meters, set_meter
from mlfo_toolkit.net.state import network_topology, state_path
from mlfo_toolkit.orchestrator.records import Deployment


class CohortMeter:
    def __init__(self, config: Config) -> None:
        self.config = config
        # The network's campus per FL client address, kept while its state file is unchanged: the closed loop asks
        # for the meter on every turn, and reading and expanding the topology was a sixth of the campus MLFO's CPU.
        self._campuses: tuple[tuple[int, int], dict[str, int | None]] | None = None

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
        by_ip = self._campus_by_ip(Path(network_dir))
        hosts = [c.agent.rsplit(":", 1)[0] for c in record.clients]
        campuses = {by_ip[h] for h in hosts if h in by_ip}
        if len(campuses) != 1 or None in campuses:
            raise ConflictError(f"the clients of {record.id} are not behind one campus switch: no one meter is theirs")
        return network, int(campuses.pop() or 0)

    def _campus_by_ip(self, network_dir: Path) -> dict[str, int | None]:
        try:
            seen = state_path(network_dir).stat()
            key = (seen.st_mtime_ns, seen.st_size)
        except OSError:
            key = (-1, -1)  # no network: network_topology says so
        if self._campuses is None or self._campuses[0] != key:
            _, topology = network_topology(network_dir)
            self._campuses = (key, {h.ip: h.campus for h in topology.fl_clients()})
        return self._campuses[1]
