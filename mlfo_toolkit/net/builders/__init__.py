"""Builders realise a topology spec: each backend in its own module, chosen by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.net import BACKENDS
from mlfo_toolkit.net.builders.containernet import ContainernetBuilder
from mlfo_toolkit.net.builders.mininet import MininetBuilder
from mlfo_toolkit.net.state import NetworkState
from mlfo_toolkit.net.topology import Topology


class Builder(Protocol):
    """Creates the switches, hosts and links of a topology and records them in the state."""

    name: str
    checkpoint: Any  # set by the caller: saves the state file

    def prepare(self, state_dir: Path) -> None:
        """Learn the state folder before building (Containernet bind-mounts it into containers)."""

    def build(self, topology: Topology, state: NetworkState, controller: str | None) -> None:
        """Create everything; append every bridge, interface and host to `state` before making it."""

    def stop(self) -> None:
        """Remove what build() made (the state-file teardown covers anything left)."""


def get_builder(name: str) -> Builder:
    if name == "mininet":
        return MininetBuilder()
    if name == "containernet":
        return ContainernetBuilder()
    raise ValidationError(f"unknown backend '{name}'", field="backend", hint=f"known: {', '.join(BACKENDS)}")
