"""Hierarchical deployments: which clients train under which edge aggregator, and what each edge runs.

A cohort with `aggregation: hierarchical` is split into `edges` groups of neighbouring client parts
(the IP plan numbers a campus's clients in a row, so a group is a network neighbourhood). Each group's
first client host also runs its edge aggregator (mlfo_toolkit.fl.edge): an edge SuperLink for the
group, and a relay SuperNode of the cohort's global SuperLink. The global server sees one client per
edge and samples all of them every round.
"""

from __future__ import annotations

import math
from typing import Any

from mlfo_toolkit.orchestrator.records import Deployment, EdgeTier


def split_parts(size: int, edges: int) -> list[list[int]]:
    """Parts 0..size-1 in `edges` groups of neighbours, sizes differing by at most one."""
    edges = max(1, min(edges, size))
    base, extra = divmod(size, edges)
    groups, start = [], 0
    for edge in range(edges):
        count = base + (1 if edge < extra else 0)
        groups.append(list(range(start, start + count)))
        start += count
    return groups


def default_edges(size: int) -> int:
    """One edge per ten clients (the seed's campus), at least one."""
    return max(1, math.ceil(size / 10))


def plan_tiers(record: Deployment) -> list[EdgeTier]:
    """The deployment's edges: each group's aggregator on the host of its first client part."""
    params = record.params
    groups = split_parts(params.cohortsize, params.edges or default_edges(params.cohortsize))
    agents = {c.part: c.agent for c in record.clients}
    return [EdgeTier(edge=i, agent=agents[parts[0]], parts=parts) for i, parts in enumerate(groups)]


def edge_server_fields(record: Deployment, tier: EdgeTier) -> dict[str, Any]:
    """The agent's /serv fields for an edge run: the cohort's strategy and sampling, scaled to the edge."""
    params, size = record.params, len(tier.parts)
    share = size / params.cohortsize
    fields = {
        "algo": params.strategy, "fracfit": params.fraction_fit,
        "minfit": max(1, min(size, math.ceil(params.min_fit * share))),
        "minav": max(1, min(size, math.ceil(params.min_available * share))),
        "numround": params.rounds, "source": record.pipeline["source"], "model": record.pipeline["model"],
        "deployment": record.id, "cohort": record.name, "seed": params.seed, "roundtimeout": params.round_timeout,
        "tier": "edge", "localrounds": params.local_rounds,
    }
    return {k: v for k, v in fields.items() if v is not None}


def relay_fields(record: Deployment, tier: EdgeTier, global_server: str) -> dict[str, Any]:
    """The agent's /cli fields for an edge's relay: one client of the global server, part = the edge."""
    fields = {"source": record.pipeline["source"], "model": record.pipeline["model"], "server": global_server,
              "cohsize": len(record.tiers), "part": tier.edge, "deployment": record.id, "cohort": record.name,
              "seed": record.params.seed, "relay": True}
    return {k: v for k, v in fields.items() if v is not None}
