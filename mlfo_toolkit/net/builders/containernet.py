"""The Containernet builder: the same topology with Docker containers as the FL and MLFO hosts.

Hosts of roles fl-server, fl-client, campus-mlfo and cloud-mlfo become Docker containers (the
prototype's layout); the app hosts and Prometheus stay namespace hosts. Switches, links, IP plan,
DPIDs and port numbers are the Mininet builder's. Containers are named `mlfo-<network id>.<host>`
and each name is written to the state file before the container is created, so `topo down`
removes exactly those, also after a SIGKILL of `topo up`. The only module that imports Containernet.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import MissingDependencyError
from mlfo_toolkit.net.builders.mininet import MininetBuilder
from mlfo_toolkit.net.image import bind_mounts, docker_client, require_image
from mlfo_toolkit.net.state import HostRecord, NetworkState
from mlfo_toolkit.net.topology import AGENT_ROLES
from mlfo_toolkit.util.linux import CGROUP_V1_CPU

DOCKER_ROLES = (*AGENT_ROLES, "campus-mlfo", "cloud-mlfo")


def _docker_class() -> Any:
    try:
        from mininet.node import Docker
    except ImportError:
        raise MissingDependencyError(
            "Containernet is not installed (this mininet has no Docker hosts)",
            hint="`make install-test` installs it from vendor/containernet/; elsewhere: "
            "pip install --no-deps git+https://github.com/containernet/containernet",
        ) from None

    class PrefixedDocker(Docker):  # type: ignore[misc]
        """Containernet's Docker host with a container name prefix of our own (it hard-codes 'mn')."""

        prefix = "mn"

        @property
        def dnameprefix(self) -> str:
            return self.prefix

        @dnameprefix.setter
        def dnameprefix(self, value: str) -> None:
            pass  # Docker.__init__ sets 'mn'; ours stays

    return PrefixedDocker


class ContainernetBuilder(MininetBuilder):
    name = "containernet"

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"mlfo-{uuid.uuid4().hex[:6]}"
        self._docker: Any = None
        self._image = ""
        self._mounts: list[str] = []

    def _network(self, **params: Any) -> Any:
        from mininet.net import Containernet

        client = docker_client()
        self._image = require_image(client)
        self._docker = _docker_class()
        self._docker.prefix = self.prefix
        return Containernet(**params)

    def prepare(self, state_dir: Path) -> None:
        self._mounts = bind_mounts(state_dir)

    def _add_host(self, net: Any, host: Any, state: NetworkState) -> None:
        if host.role not in DOCKER_ROLES:
            super()._add_host(net, host, state)
            return
        name = f"{self.prefix}.{host.name}"
        state.containers.append(name)
        self.checkpoint()  # the name is on record before the container exists
        net.addDocker(host.name, cls=self._docker, ip=f"{host.ip}/{host.prefix_len}", dimage=self._image,
                      volumes=self._mounts, environment={"PYTHONDONTWRITEBYTECODE": "1"})

    def _record(self, host: Any, node: Any) -> HostRecord:
        record = super()._record(host, node)
        if host.role in DOCKER_ROLES:
            record.container = f"{self.prefix}.{host.name}"
            # Docker's cgroup (cgroupfs, cgroup_parent /docker): processes started in this host join it,
            # so `docker update --cpus` (what `mlfo init` does here) limits them.
            record.cgroup = str(CGROUP_V1_CPU / "docker" / node.did)
        return record
