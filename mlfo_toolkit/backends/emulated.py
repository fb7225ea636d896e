"""The emulated-network backend: the running network (`mlfo topo up`), or one brought up for the block
and taken down after it. Cohorts go to the network's campus MLFO through its port published on loopback."""

from __future__ import annotations

import os
from pathlib import Path

from mlfo_toolkit.backends.base import BackendKind, StartedBackend
from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import NeedsRootError, ValidationError
from mlfo_toolkit.net.network import detach_network, network_down
from mlfo_toolkit.net.state import NetworkState, load_state, state_path
from mlfo_toolkit.util.progress import Progress, quiet, say


def published_campus(state: NetworkState, config: Config) -> str:
    """The loopback address a network publishes its campus MLFO's intent API on."""
    published = next((outer for inner, outer in state.published.items() if inner.endswith(f":{config.mlfo.port}")), None)
    if published is None:
        raise ValidationError("the running network publishes no campus MLFO port on loopback", field="topology",
                              hint="give the topology's campus host a publish port")
    return published


class EmulatedBackend(StartedBackend):
    """The emulated network; `topology` (a file or shipped name, its parameters and builder) is brought up
    when no network runs, and then taken down when the block ends."""

    kind: BackendKind = "network"

    def __init__(self, config: Config, *, topology: str = "small", params: dict[str, int] | None = None,
                 builder: str = "mininet", controller: str | None = None, progress: Progress = quiet) -> None:
        self.config = config
        self.topology, self.params, self.builder, self.controller = topology, dict(params or {}), builder, controller
        self.progress = progress
        self.started_here = False
        self.campus = ""

    def start(self) -> None:
        if os.geteuid() != 0:
            raise NeedsRootError("the emulated network needs root (namespaces, Open vSwitch, cgroups)", hint="run it with sudo")
        state_dir = Path(self.config.paths.state_dir)
        if not state_path(state_dir).exists():
            say(self.progress, "topo", f"bringing up topology {self.topology}")
            detach_network(self.config, topology=self.topology, cohorts=None, params=self.params, backend=self.builder,
                           controller=self.controller, progress=self.progress)
            self.started_here = True
        self.campus = published_campus(load_state(state_dir), self.config)

    def close(self) -> None:
        if self.started_here:
            say(self.progress, "topo", "taking the network down")
            network_down(self.config)
            self.started_here = False
