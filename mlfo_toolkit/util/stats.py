"""Small summary statistics over measured seconds (nearest-rank percentiles, no NumPy import)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0-100) of `values`; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def spread(values: Iterable[float]) -> dict[str, float | None]:
    """p50 and p95 of `values`, rounded to milliseconds."""
    values = list(values)
    return {key: None if (v := percentile(values, q)) is None else round(v, 3) for key, q in (("p50", 50), ("p95", 95))}
