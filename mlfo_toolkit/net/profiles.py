"""Device profiles: how much CPU and how fast a link each FL client of the emulated network gets, from a named
class or a seeded draw, so that a cohort is as uneven as real devices are.

A profile is applied to a client's host: its CPU limit (the host's cgroup, or `docker update --cpus` under
Containernet, as `mlfo init` does), its memory limit (the host's memory cgroup, or the container's) and the
rate of its access link (Mininet's HTB class on both ends). The memory limit covers everything of the client
on that host: its agent, its SuperNode and its training; past it the kernel reclaims and then kills, as on a
small device.
CPU is a share of one of this machine's cores, not a model of the device's speed: the classes below keep
the devices' order and rough ratios, scaled so that fifty clients fit on a small machine. The training,
which mlfo's executor runs in the client host's cgroup, is what the limit slows down.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlfo_toolkit.errors import ValidationError

# Documented classes: the device, what a client of that class gets here, and why.
# Memory is what the device leaves an FL client after its OS (about half its RAM); a client here needs some
# 150 MB (its agent, SuperNode and training), so even the smallest class runs.
DEVICE_CLASSES: dict[str, dict[str, Any]] = {
    "rpi3": {"cpus": 0.1, "memory_mb": 512.0, "link_mbit": 20.0,
             "device": "Raspberry Pi 3B: 4 x Cortex-A53 1.2 GHz, 1 GB, 100 Mbit/s Ethernet (Wi-Fi some 20 Mbit/s)"},
    "rpi4": {"cpus": 0.25, "memory_mb": 2048.0, "link_mbit": 100.0,
             "device": "Raspberry Pi 4B: 4 x Cortex-A72 1.5 GHz (about 2.5 x a Pi 3 in training), 4 GB, Gigabit Ethernet"},
    "jetson-nano": {"cpus": 0.4, "memory_mb": 2048.0, "link_mbit": 200.0,
                    "device": "NVIDIA Jetson Nano on its CPU: 4 x Cortex-A57 1.43 GHz, 4 GB"},
    "edge-server": {"cpus": 1.0, "memory_mb": None, "link_mbit": 500.0,
                    "device": "one x86 core of an edge server (no memory limit), on the topology's 500 Mbit/s links"},
}
CPU_BOUNDS = (0.02, 2.0)  # a drawn share is clipped to this (a cgroup quota below 2 % of a core starves the agent)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Draw(_Model):
    """A CPU share per client from a distribution (cores of this machine), clipped to [low, high]."""

    distribution: Literal["uniform", "normal", "pareto"]
    low: float = Field(0.05, ge=CPU_BOUNDS[0], le=CPU_BOUNDS[1], description="uniform: the lower end; all: the clip below")
    high: float = Field(1.0, ge=CPU_BOUNDS[0], le=CPU_BOUNDS[1], description="uniform: the upper end; all: the clip above")
    mean: float = Field(0.3, gt=0, le=CPU_BOUNDS[1], description="normal: the mean")
    sd: float = Field(0.1, ge=0, le=CPU_BOUNDS[1], description="normal: the standard deviation")
    shape: float = Field(1.5, gt=0, le=100, description="pareto: the tail index alpha (smaller: more very fast devices)")
    scale: float = Field(0.1, gt=0, le=CPU_BOUNDS[1], description="pareto: the smallest share x_m")
    link_mbit: float | None = Field(None, gt=0, le=100_000, description="every client's access link rate (default: unchanged)")
    memory_mb: float | None = Field(None, ge=128, le=1_000_000, description="every client's memory limit (default: none)")

    @model_validator(mode="after")
    def _ordered(self) -> Draw:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self


class ProfileSpec(_Model):
    """Every FL client of the network at one class, or drawn; `seed` (default: the run's) makes a draw repeatable."""

    class_: str | None = Field(None, alias="class", description=f"one of {', '.join(DEVICE_CLASSES)}")
    draw: Draw | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _one(self) -> ProfileSpec:
        if (self.class_ is None) == (self.draw is None):
            raise ValueError("give either class (e.g. rpi4) or draw (a distribution)")
        if self.class_ is not None and self.class_ not in DEVICE_CLASSES:
            raise ValueError(f"unknown class '{self.class_}' (classes: {', '.join(DEVICE_CLASSES)})")
        return self

    def label(self) -> str:
        """A short name that tells two specs apart (it names runs): the class, or the draw and its parameters."""
        if self.class_:
            return self.class_
        assert self.draw is not None
        d = self.draw
        params = {"uniform": f"{d.low:g}-{d.high:g}", "normal": f"{d.mean:g}sd{d.sd:g}", "pareto": f"{d.shape:g}x{d.scale:g}"}
        return f"{d.distribution}{params[d.distribution]}" + (f"s{self.seed}" if self.seed is not None else "")


@dataclass(frozen=True)
class Profile:
    """What one client's host gets."""

    profile: str  # the class, or the distribution it was drawn from
    cpus: float
    link_mbit: float | None
    memory_mb: float | None = None


def _draw_one(draw: Draw, rng: random.Random) -> float:
    if draw.distribution == "uniform":
        value = rng.uniform(draw.low, draw.high)
    elif draw.distribution == "normal":
        value = rng.gauss(draw.mean, draw.sd)
    else:
        value = draw.scale * rng.paretovariate(draw.shape)
    return round(min(draw.high, max(draw.low, value)), 3)


def assign_profiles(spec: ProfileSpec, clients: list[str], seed: int) -> dict[str, Profile]:
    """A profile for each client host, in the order given (the topology's IP order), from the spec and a seed."""
    if not clients:
        raise ValidationError("the network has no FL clients to give profiles", field="profiles")
    if spec.class_ is not None:
        device = DEVICE_CLASSES[spec.class_]
        return {c: Profile(spec.class_, float(device["cpus"]), float(device["link_mbit"]), device["memory_mb"]) for c in clients}
    assert spec.draw is not None
    rng = random.Random(spec.seed if spec.seed is not None else seed)
    return {c: Profile(spec.draw.distribution, _draw_one(spec.draw, rng), spec.draw.link_mbit, spec.draw.memory_mb) for c in clients}


def profiles_record(spec: ProfileSpec, profiles: dict[str, Profile]) -> dict[str, Any]:
    """What run.json keeps: the spec and each client's profile."""
    shares = [p.cpus for p in profiles.values()]
    return {"spec": spec.model_dump(by_alias=True, exclude_none=True), "clients": {c: asdict(p) for c, p in profiles.items()},
            "cpus_min": min(shares), "cpus_max": max(shares), "cpus_mean": round(sum(shares) / len(shares), 3)}
