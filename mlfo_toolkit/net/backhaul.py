"""The bytes that cross each edge's backhaul, counted on the link's own interface (not computed).

In an emulated network every switch port is an interface in the machine's own namespace; the backhaul
of an edge (topology `edges()`) is a switch-to-switch link. A `BackhaulCounter` reads that link's
interface counters (rx + tx, so both directions) a few times a second while a run goes on; afterwards
`per_round` splits the bytes by a cohort's global rounds, using the wall time at which each round's
evaluation ended. Everything on the link counts: FL updates, and the MLFO's and Prometheus's polls
of the hosts behind it.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

SAMPLE_SECONDS = 0.25


def interface_bytes(interface: str) -> int | None:
    """rx + tx bytes of an interface in this namespace (None if it does not exist)."""
    base = Path("/sys/class/net") / interface / "statistics"
    try:
        return int((base / "rx_bytes").read_text()) + int((base / "tx_bytes").read_text())
    except (OSError, ValueError):
        return None


class BackhaulCounter:
    """Samples each edge's backhaul interface every SAMPLE_SECONDS in a thread, until stopped."""

    def __init__(self, edges: list[dict[str, Any]]) -> None:
        self.edges = [e for e in edges if e.get("interfaces")]
        self.samples: list[tuple[float, list[int | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="backhaul")

    def __enter__(self) -> BackhaulCounter:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def sample(self) -> None:
        self.samples.append((time.time(), [interface_bytes(e["interfaces"][0]) for e in self.edges]))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def at(self, when: float) -> list[int | None]:
        """Each edge's counter at the first sample at or after `when` (the last one if none is)."""
        times = [t for t, _ in self.samples]
        index = min(bisect_left(times, when), len(self.samples) - 1)
        return self.samples[index][1]

    def per_round(self, round_ends: list[float]) -> list[dict[str, Any]]:
        """Bytes over each edge's backhaul in each round: from the end of the previous round (the first: of the
        initial evaluation) to the end of this one. `round_ends` = [initial, round 1, round 2, ...] wall times."""
        out = []
        for number, (start, end) in enumerate(zip(round_ends, round_ends[1:]), start=1):
            before, after = self.at(start), self.at(end)
            edges = {e["name"]: (a - b if a is not None and b is not None else None) for e, b, a in zip(self.edges, before, after)}
            known = [v for v in edges.values() if v is not None]
            out.append({"round": number, "bytes": edges, "total": sum(known) if known else None})
        return out

    def summary(self, round_ends: list[float]) -> dict[str, Any]:
        """Per-round bytes, and per edge and per link kind the mean per round (rounds 2 on: round 1 also carries the
        clients' registration and the first model)."""
        rounds = self.per_round(round_ends)
        steady = rounds[1:] or rounds
        per_edge: dict[str, float | None] = {}
        per_kind: dict[str, float] = {}
        for edge in self.edges:
            values = [r["bytes"][edge["name"]] for r in steady if r["bytes"].get(edge["name"]) is not None]
            mean = sum(values) / len(values) if values else None
            per_edge[edge["name"]] = round(mean) if mean is not None else None
            if mean is not None:
                kind = edge.get("kind") or "unnamed"
                per_kind[kind] = per_kind.get(kind, 0.0) + mean
        totals = [r["total"] for r in steady if r["total"] is not None]
        return {
            "edges": [{"name": e["name"], "kind": e.get("kind"), "interface": e["interfaces"][0],
                       "declared_mbit": e.get("bandwidth_mbit"), "declared_delay_ms": e.get("delay_ms")} for e in self.edges],
            "per_round": rounds,
            "mean_per_round": round(sum(totals) / len(totals)) if totals else None,
            "mean_per_round_by_edge": per_edge,
            "mean_per_round_by_kind": {k: round(v) for k, v in per_kind.items()},
        }
