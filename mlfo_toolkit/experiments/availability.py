"""Client availability during a run: who is away in which rounds, and the kill and restart events that
carry it out. A pure function of the experiment's `availability` section, the cohort's size and rounds
and a seed, so a run's absences are known (and printed by `--dry-run`) before it starts."""

from __future__ import annotations

import random
from typing import Any

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.experiments.spec import Absence, At, Availability, Event, Kill, Restart


def absences(availability: Availability, clients: int, rounds: int, seed: int) -> list[Absence]:
    """Each client's spells away, merged (a client drawn again as its spell ends stays away), sorted by round."""
    if availability.absences is not None:
        for absence in availability.absences:
            if absence.part >= clients:
                raise ValidationError(f"client part {absence.part} does not exist: the cohort has {clients} clients (parts 0-{clients - 1})",
                                      field="availability.absences.part")
        return sorted(availability.absences, key=lambda a: (a.away, a.part))
    assert availability.away_fraction is not None
    rng = random.Random(availability.seed if availability.seed is not None else seed)
    away_count = max(1, round(availability.away_fraction * clients))
    if away_count >= clients:
        raise ValidationError(f"away_fraction {availability.away_fraction} of {clients} clients leaves none to train",
                              field="availability.away_fraction")
    spells: dict[int, list[list[int | None]]] = {}
    for start in range(availability.from_round, rounds + 1, availability.hold_rounds):
        end = start + availability.hold_rounds
        for part in sorted(rng.sample(range(clients), away_count)):
            mine = spells.setdefault(part, [])
            if mine and mine[-1][1] == start:
                mine[-1][1] = end  # still away
            else:
                mine.append([start, end])
    out = [Absence(part=part, away=int(away or 0), back=back if back is not None and back <= rounds else None)
           for part, spans in spells.items() for away, back in spans]
    return sorted(out, key=lambda a: (a.away, a.part))


def availability_events(availability: Availability, spells: list[Absence]) -> list[Event]:
    """A kill as each spell starts and a restart as it ends; at one round, the kills come first (they are quick,
    a restart waits until the MLFO saw its client lost)."""
    cohort = availability.cohort
    kills = [Event(at=At(cohort=cohort, round=s.away), kill=Kill(cohort=cohort, part=s.part)) for s in spells]
    restarts = [Event(at=At(cohort=cohort, round=s.back), restart=Restart(cohort=cohort, part=s.part)) for s in spells if s.back]
    return sorted([*kills, *restarts], key=lambda e: (e.at.round or 0, e.kind != "kill"))


def away_by_round(spells: list[Absence], clients: int, rounds: int) -> dict[int, list[int]]:
    """The parts away in each round (as the round starts)."""
    return {r: sorted(s.part for s in spells if s.away <= r and (s.back is None or r < s.back)) for r in range(1, rounds + 1)}


def availability_record(availability: Availability, spells: list[Absence], clients: int, rounds: int) -> dict[str, Any]:
    """What run.json keeps: the plan, each spell, and the share away per round."""
    by_round = away_by_round(spells, clients, rounds)
    return {"cohort": availability.cohort, "clients": clients, "rounds": rounds,
            "source": "absences" if availability.absences is not None else "draw",
            "away_fraction": availability.away_fraction, "hold_rounds": availability.hold_rounds,
            "absences": [s.model_dump() for s in spells],
            "away_share_by_round": {str(r): round(len(parts) / clients, 3) for r, parts in by_round.items()}}
