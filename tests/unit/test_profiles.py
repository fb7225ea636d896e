"""Device profiles: classes as documented, seeded draws from each distribution, and the experiment field checked."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from pydantic import ValidationError as PydanticError

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.experiments.spec import load_experiment
from mlfo_toolkit.net.profiles import CPU_BOUNDS, DEVICE_CLASSES, ProfileSpec, assign_profiles, profiles_record

CLIENTS = [f"fc.{i}" for i in range(10, 60)]


def test_a_class_gives_every_client_its_documented_share_and_link() -> None:
    assigned = assign_profiles(ProfileSpec.model_validate({"class": "rpi4"}), CLIENTS, seed=1)
    assert {(p.cpus, p.link_mbit, p.memory_mb, p.profile) for p in assigned.values()} == {(0.25, 100.0, 2048.0, "rpi4")}
    assert all(c["device"] and 0 < c["cpus"] <= 1 for c in DEVICE_CLASSES.values())
    shares = [DEVICE_CLASSES[n]["cpus"] for n in ("rpi3", "rpi4", "jetson-nano", "edge-server")]
    assert shares == sorted(shares)  # the classes keep the devices' order


@pytest.mark.parametrize("draw", [
    {"distribution": "uniform", "low": 0.1, "high": 0.5},
    {"distribution": "normal", "mean": 0.3, "sd": 0.1, "low": 0.05, "high": 1.0},
    {"distribution": "pareto", "shape": 1.5, "scale": 0.05, "high": 1.0},
])
def test_draws_are_seeded_clipped_and_spread(draw: dict[str, object]) -> None:
    spec = ProfileSpec.model_validate({"draw": draw})
    first = assign_profiles(spec, CLIENTS, seed=3)
    assert first == assign_profiles(spec, CLIENTS, seed=3) and first != assign_profiles(spec, CLIENTS, seed=4)
    assert assign_profiles(spec.model_copy(update={"seed": 9}), CLIENTS, 3) == assign_profiles(spec.model_copy(update={"seed": 9}), CLIENTS, 4)
    shares = [p.cpus for p in first.values()]
    low = float(draw.get("low", 0.05))  # type: ignore[arg-type]
    assert all(low <= s <= float(draw["high"]) for s in shares)  # type: ignore[arg-type]
    assert len(set(shares)) > 25 and statistics.pstdev(shares) > 0.03
    if draw["distribution"] == "pareto":  # heavy tail: most clients near the scale, a few far above it
        assert statistics.median(shares) < 0.1 and max(shares) > 0.25
    record = profiles_record(spec, first)
    assert record["cpus_min"] == min(shares) and set(record["clients"]) == set(CLIENTS)


def test_bad_profiles_are_refused() -> None:
    with pytest.raises(PydanticError, match="unknown class 'rpi9'"):
        ProfileSpec.model_validate({"class": "rpi9"})
    with pytest.raises(PydanticError, match="either class"):
        ProfileSpec.model_validate({})
    with pytest.raises(PydanticError):
        ProfileSpec.model_validate({"draw": {"distribution": "uniform", "low": 0.001}})
    assert CPU_BOUNDS[0] > 0
    with pytest.raises(PydanticError, match="above high"):
        ProfileSpec.model_validate({"draw": {"distribution": "uniform", "low": 0.8, "high": 0.2}})
    with pytest.raises(ValidationError):
        assign_profiles(ProfileSpec.model_validate({"class": "rpi3"}), [], seed=1)


def test_the_shipped_profile_sweep_names_its_runs_and_loopback_is_refused(tmp_path: Path) -> None:
    from tests.helpers import REPO

    experiment = load_experiment(REPO / "experiments" / "device-profiles.yaml")
    keys = [r.key for r in experiment.runs]
    assert len(keys) == len(set(keys)) == 3 and keys[0].startswith("profiles_edge-server")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbackend: loopback\ncohorts: x.yaml\nprofiles: {class: rpi3}\n")
    with pytest.raises(ValidationError) as caught:
        load_experiment(bad)
    assert caught.value.field == "profiles" and caught.value.line == 4
