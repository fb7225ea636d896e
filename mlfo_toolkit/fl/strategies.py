"""Flower strategies by name, as cohort files and intents name them."""

from __future__ import annotations

import inspect
from typing import Any

from mlfo_toolkit.errors import ValidationError

# Flower 1.42's flwr.serverapp.strategy classes that train a NumPy model without extra setup.
KNOWN_STRATEGIES = (
    "FedAvg",
    "FedProx",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "FedAvgM",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "QFedAvg",
)
_BY_LOWER = {name.lower(): name for name in KNOWN_STRATEGIES}


def canonical_strategy(name: str, field: str = "strategy") -> str:
    """The Flower class name for `name` (case-insensitive); ValidationError naming the known ones."""
    try:
        return _BY_LOWER[str(name).strip().lower()]
    except KeyError:
        raise ValidationError(
            f"unknown FL strategy '{name}'",
            field=field,
            hint=f"known strategies: {', '.join(KNOWN_STRATEGIES)}",
        ) from None


def make_strategy(name: str, **options: Any) -> Any:
    """Instantiate a Flower strategy, passing only the options its constructor takes."""
    from flwr.serverapp import strategy as flwr_strategies  # only the ServerApp needs Flower here; names are checked without it

    cls = getattr(flwr_strategies, canonical_strategy(name))
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})
