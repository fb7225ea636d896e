"""Find the shipped data folders (intents/, topologies/, monitoring/) installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

from mlfo_toolkit.errors import MissingDependencyError

_PACKAGE = Path(__file__).resolve().parent.parent  # mlfo_toolkit/


def resource_path(relative: str) -> Path:
    """`intents/catalog.yaml` -> the file inside the wheel, or beside the package in a checkout."""
    for base in (_PACKAGE / "_shipped", _PACKAGE.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    raise MissingDependencyError(
        f"shipped file '{relative}' is missing from this installation",
        hint="reinstall mlfo (`make install`)",
    )
