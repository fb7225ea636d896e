"""Hierarchical deployments: which clients train under which edge aggregator, and what each edge runs.

A cohort with `aggregation: hierarchical` trains under edge aggregators (mlfo_toolkit.fl.edge): an edge
SuperLink for a group of its clients, and a relay SuperNode of the cohort's global SuperLink, on one
host. In an emulated network the groups are the network's edges (the topology's `edge: N` hosts,
ip_plan.edges), each under its aggregator host; on loopback they are `edges` groups of neighbouring
client parts, each aggregated on its first client's host. The global server sees one client per edge
and samples all of them every round.
"""

from __future__ import annotations

import math
from typing import Any

from mlfo_toolkit.config import Config, with_port
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


def plan_tiers(record: Deployment, config: Config) -> list[EdgeTier]:
    """The deployment's edges. In a network that declares its edges (ip_plan.edges, from the topology) the
    clients group by the edge their host is on, under that edge's aggregator host (else their first
    client's); a client on no edge talks to the global server. Elsewhere (loopback) the parts split into
    `edges` groups of neighbours, each aggregated on its first client's host."""
    params = record.params
    agents = {c.part: c.agent for c in record.clients}
    if not config.ip_plan.edges:
        groups = split_parts(params.cohortsize, params.edges or default_edges(params.cohortsize))
        return [EdgeTier(edge=i, agent=agents[parts[0]], parts=parts, name=f"edge{i + 1}") for i, parts in enumerate(groups)]
    port = config.agent.port
    edge_of = {with_port(client, port): edge for edge in config.ip_plan.edges for client in edge.clients}
    grouped: dict[str, list[int]] = {}
    for part in sorted(agents):
        edge = edge_of.get(agents[part])
        if edge is not None:
            grouped.setdefault(edge.name, []).append(part)
    tiers: list[EdgeTier] = []
    for edge in config.ip_plan.edges:
        parts = grouped.get(edge.name)
        if not parts:
            continue
        tiers.append(EdgeTier(edge=len(tiers), agent=with_port(edge.aggregator, port) if edge.aggregator else agents[parts[0]],
                              parts=parts, name=edge.name, kind=edge.kind,
                              link={"bandwidth_mbit": edge.bandwidth_mbit, "delay_ms": edge.delay_ms}))
    return tiers


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


def global_members(record: Deployment) -> int:
    """How many clients the global FL server of a hierarchical deployment has: one relay per live edge, and every
    client part on no edge (those of an edge that was lost and re-homed too)."""
    live = sum(1 for t in record.tiers if t.state in ("planned", "starting", "running"))
    # A dropped edge's clients are spare, out of the run; a re-homed edge's are the global server's own.
    return live + sum(1 for c in record.clients if record.tier_of(c.part) is None and c.state != "spare")


def edge_traffic(status: dict[str, Any], tier: EdgeTier) -> dict[str, Any] | None:
    """An edge's FL bytes from its agent's /status: those of its own edge SuperLink, if that still runs there."""
    server = status.get("server") or {}
    traffic = server.get("traffic")
    return traffic if server.get("address") == tier.server and isinstance(traffic, dict) else None
