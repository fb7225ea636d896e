"""Client availability: the seeded draw keeps the asked share away, merges spells, and becomes kill and restart events."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError as PydanticError

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.experiments.availability import absences, availability_events, availability_record, away_by_round
from mlfo_toolkit.experiments.spec import Availability, load_experiment


def test_a_draw_keeps_the_share_away_in_every_round_and_is_seeded() -> None:
    plan = Availability(cohort="c", away_fraction=0.3, hold_rounds=2, from_round=2)
    spells = absences(plan, clients=10, rounds=12, seed=4)
    by_round = away_by_round(spells, 10, 12)
    assert by_round[1] == [] and all(len(by_round[r]) == 3 for r in range(2, 13))
    assert spells == absences(plan, clients=10, rounds=12, seed=4)
    assert spells != absences(plan, clients=10, rounds=12, seed=5)
    assert absences(plan.model_copy(update={"seed": 9}), 10, 12, 4) == absences(plan.model_copy(update={"seed": 9}), 10, 12, 5)
    # a client drawn again as its spell ends stays away: one spell, no kill and restart in the same round
    for part in range(10):
        mine = sorted((s.away, s.back) for s in spells if s.part == part)
        assert all(a_back is not None and a_back < b_away for (_, a_back), (b_away, _) in zip(mine, mine[1:], strict=False))
    assert all(s.back is None or s.back <= 12 for s in spells)


def test_the_events_kill_as_a_spell_starts_and_restart_as_it_ends_kills_first() -> None:
    plan = Availability(cohort="c", absences=[{"part": 1, "away": 3, "back": 5}, {"part": 2, "away": 5}])
    spells = absences(plan, clients=4, rounds=6, seed=1)
    events = availability_events(plan, spells)
    assert [(e.kind, e.at.round, getattr(e, e.kind).part) for e in events] == [("kill", 3, 1), ("kill", 5, 2), ("restart", 5, 1)]
    record = availability_record(plan, spells, 4, 6)
    assert record["away_share_by_round"] == {"1": 0.0, "2": 0.0, "3": 0.25, "4": 0.25, "5": 0.25, "6": 0.25}
    assert record["absences"] == [{"part": 1, "away": 3, "back": 5}, {"part": 2, "away": 5, "back": None}]


def test_bad_availability_is_refused_naming_the_field() -> None:
    with pytest.raises(PydanticError, match="either away_fraction"):
        Availability(cohort="c")
    with pytest.raises(PydanticError, match="must come after away"):
        Availability(cohort="c", absences=[{"part": 0, "away": 4, "back": 3}])
    with pytest.raises(ValidationError) as caught:
        absences(Availability(cohort="c", absences=[{"part": 7, "away": 2}]), clients=4, rounds=6, seed=1)
    assert caught.value.field == "availability.absences.part"
    with pytest.raises(ValidationError, match="leaves none"):
        absences(Availability(cohort="c", away_fraction=0.9), clients=2, rounds=6, seed=1)


def test_the_shipped_availability_experiment_plans_its_absences(tmp_path: Path) -> None:
    from mlfo_toolkit.config import Config
    from mlfo_toolkit.experiments.runner import plan_summary
    from tests.helpers import REPO

    experiment = load_experiment(REPO / "experiments" / "availability.yaml")
    plan = plan_summary(experiment, Config())
    (run,) = plan["runs"]
    clients = run["cohorts"][0]["clients"]
    spells = run["absences"]
    assert spells and all(0 <= s["part"] < clients for s in spells)
    rounds = run["cohorts"][0]["rounds"]
    away = {r: sum(1 for s in spells if s["away"] <= r and (s["back"] is None or r < s["back"])) for r in range(2, rounds + 1)}
    assert set(away.values()) == {round(0.3 * clients)}
