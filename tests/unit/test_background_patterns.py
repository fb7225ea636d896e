"""Background traffic patterns: what rate the app client sends at, when."""

from __future__ import annotations

import itertools
import math

import pytest

from mlfo_toolkit.net.background import pattern_segments, rate_mbit


def _take(pattern: str, seconds: float, seed: int = 1) -> list[tuple[float, float]]:
    out, total = [], 0.0
    for segment in pattern_segments(pattern, 20.0, 30.0, seed):
        out.append(segment)
        total += segment[0]
        if total >= seconds:
            return out
    return out


def _mean(segments: list[tuple[float, float]]) -> float:
    return sum(s * r for s, r in segments) / sum(s for s, _ in segments)


def test_step_alternates_the_rate_and_nothing_each_half_period() -> None:
    assert list(itertools.islice(pattern_segments("step", 20, 30), 4)) == [(15, 20), (15, 0), (15, 20), (15, 0)]


def test_sine_swings_between_nothing_and_the_rate_once_a_period() -> None:
    segments = _take("sine", 60)
    rates = [r for _, r in segments]
    assert all(s == 1 for s, _ in segments) and min(rates) == pytest.approx(0, abs=0.1) and max(rates) == pytest.approx(20, abs=0.1)
    assert rates[0] == 10 and rates[7] == pytest.approx(10 * (1 + math.sin(2 * math.pi * 7 / 30)), abs=0.01)
    assert _mean(segments) == pytest.approx(10, abs=0.5)


def test_poisson_spells_are_seeded_and_average_half_the_rate() -> None:
    first = _take("poisson", 20_000, seed=3)
    assert first == _take("poisson", 20_000, seed=3) and first[:6] != _take("poisson", 20_000, seed=4)[:6]
    assert _mean(first) == pytest.approx(10, rel=0.1)
    on = [s for s, r in first if r > 0]
    assert sum(on) / len(on) == pytest.approx(15, rel=0.15)  # half a period on average


def test_constant_and_rates() -> None:
    assert next(pattern_segments("constant", 20, 30)) == (86_400.0, 20)
    assert rate_mbit("20M") == 20 and rate_mbit("500k") == 0.5 and rate_mbit("1gbit") == 1000 and rate_mbit("50mbit") == 50
    with pytest.raises(ValueError):
        rate_mbit("fast")
    with pytest.raises(ValueError):
        next(pattern_segments("square", 20, 30))
