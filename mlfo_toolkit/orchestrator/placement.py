"""Where a cohort with `aggregation: auto` aggregates: the MLFO measures each edge, a placement policy decides.

For every edge of the cohort (orchestrator.tiers) the campus MLFO observes, before any client starts:

* its backhaul: round-trip time and rate from the edge's aggregator host to the cohort's global FL
  server, measured by that host's agent (`POST /probe`, mlfo_toolkit.agent.probes); if the probe fails,
  the rate and delay the network declares for the edge (ip_plan.edges, from the topology);
* the CPU free at the aggregator host (`GET /capacity` on its agent);
* how many clients it has, and how large the model's update is.

A placement policy is an object with `place(observation) -> list of {edge, aggregate, reason}`. mlfo
ships `pays-off`: aggregate at an edge when carrying its clients' updates over the backhaul, instead of
one aggregate, costs at least `placement.min_saving_seconds` a global round (down and up), and its
aggregator host has `placement.min_free_cpus` free. A researcher's own policy is named
`package.module:Name` or `file.py:Name` (built with the `placement` settings if its constructor takes
an argument) and is loaded if listed in `placement.allowed_policies`. Edges where no aggregator is
placed send their clients to the global server directly. The decision is kept in the deployment's
record with the numbers that led to it.
"""

from __future__ import annotations

from typing import Any, Protocol

from mlfo_toolkit.config import PlacementSettings
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.util.plugins import load_object

SHIPPED_PLACEMENTS = ("pays-off",)


class PlacementPolicy(Protocol):
    def place(self, observation: dict[str, Any]) -> list[dict[str, Any]]: ...


class PaysOff:
    """Aggregate where it saves the backhaul time and the aggregator has the CPU: the real versions of the
    prototype's CheckBandwidth and CheckCompute."""

    name = "pays-off"

    def __init__(self, settings: PlacementSettings) -> None:
        self.settings = settings

    def place(self, observation: dict[str, Any]) -> list[dict[str, Any]]:
        model_bytes = float(observation.get("model_bytes") or 0)
        out = []
        for edge in observation["edges"]:
            out.append({"edge": edge["edge"], **self._judge(edge, model_bytes)})
        return out

    def _judge(self, edge: dict[str, Any], model_bytes: float) -> dict[str, Any]:
        clients, rate, cpus = int(edge.get("clients") or 0), edge.get("rate_mbit"), edge.get("cpus_free")
        if clients < 2:
            return {"aggregate": False, "reason": f"{clients} client: nothing to aggregate"}
        if not rate:
            return {"aggregate": False, "reason": "its backhaul's rate is neither measured nor declared"}
        # Flat: every client's model down and its update up; hierarchical: one of each.
        saving = 2 * (clients - 1) * model_bytes * 8 / (float(rate) * 1e6)
        carried = f"{clients} updates of {model_bytes / 1e3:.0f} kB over {float(rate):g} Mbit/s"
        if saving < self.settings.min_saving_seconds:
            return {"aggregate": False, "saving_seconds": round(saving, 4),
                    "reason": f"{carried} cost {saving:.3f} s a round more than one aggregate "
                              f"(< placement.min_saving_seconds {self.settings.min_saving_seconds:g})"}
        if cpus is not None and float(cpus) < self.settings.min_free_cpus:
            return {"aggregate": False, "saving_seconds": round(saving, 4),
                    "reason": f"it would save {saving:.3f} s a round, but its aggregator host has {float(cpus):.2f} cores free "
                              f"(< placement.min_free_cpus {self.settings.min_free_cpus:g})"}
        free = "unknown" if cpus is None else f"{float(cpus):.2f}"
        return {"aggregate": True, "saving_seconds": round(saving, 4),
                "reason": f"{carried} cost {saving:.3f} s a round more than one aggregate; its aggregator host has {free} cores free"}


def load_placement(name: str, settings: PlacementSettings) -> PlacementPolicy:
    """A placement policy by name: `pays-off`, or one listed in placement.allowed_policies."""
    if name == "pays-off":
        return PaysOff(settings)
    if name not in settings.allowed_policies:
        raise ValidationError(f"placement policy '{name}' is not allowed on this MLFO", field="placement",
                              hint=f"use {', '.join(SHIPPED_PLACEMENTS)}, or add it to placement.allowed_policies in the campus MLFO's config")
    return load_object(name, settings, "place", field="placement", what="placement policy")  # type: ignore[no-any-return]


def check_placement(returned: Any, edges: list[int]) -> dict[int, dict[str, Any]]:
    """A policy's answer, per edge; ValueError saying what is wrong with it. An edge it left out is not aggregated."""
    if not isinstance(returned, (list, tuple)):
        raise ValueError(f"place() returned {type(returned).__name__}, not a list")
    out: dict[int, dict[str, Any]] = {}
    for item in returned:
        if not isinstance(item, dict) or not isinstance(item.get("edge"), int) or not isinstance(item.get("aggregate"), bool):
            raise ValueError(f"place() returned {item!r}, not {{edge: int, aggregate: bool, reason: str}}")
        if item["edge"] not in edges:
            raise ValueError(f"place() named edge {item['edge']}, which the cohort does not have (edges {edges})")
        out[item["edge"]] = {**item, "reason": str(item.get("reason") or "")}
    for edge in edges:
        out.setdefault(edge, {"edge": edge, "aggregate": False, "reason": "the policy did not place it"})
    return out
