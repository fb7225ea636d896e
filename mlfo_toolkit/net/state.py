"""The state file of a running emulated network: everything `topo up` made, so `topo down` can remove exactly that."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MlfoError, NotFoundError
from mlfo_toolkit.net.image import docker_client
from mlfo_toolkit.net.topology import Topology, load_topology
from mlfo_toolkit.util.files import write_json_atomically
from mlfo_toolkit.util.processes import run_tool, same_process, spawn, start_time, stop_trees

STATE_FILE = "network.json"


@dataclass
class ProcessRecord:
    """A process we started (inside a host or on the machine), by PID and start time."""

    name: str
    pid: int
    host: str | None
    create_time: float
    argv: list[str] = field(default_factory=list)
    log: str | None = None

    def alive(self) -> bool:
        """True only for the very process we started (PIDs are reused)."""
        return same_process(self.pid, self.create_time)


@dataclass
class HostRecord:
    name: str
    role: str
    ip: str
    pid: int  # the host's shell: its network namespace lives as long as it does
    create_time: float
    interface: str
    cgroup: str | None = None
    container: str | None = None  # a Containernet host: its Docker container's name
    memory_cgroup: str | None = None


@dataclass
class NetworkState:
    """What one `mlfo topo up` created; written before and while building, read by every other topo command."""

    topology: str
    topology_file: str
    parameters: dict[str, int]
    backend: str
    owner_pid: int
    owner_create_time: float
    phase: str = "building"  # building, up, stopping
    created: float = field(default_factory=time.time)
    bridges: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    hosts: list[HostRecord] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    # Docker containers of Containernet hosts, by name, recorded before each is created.
    containers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    published: dict[str, str] = field(default_factory=dict)
    config_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def host(self, name: str) -> HostRecord:
        for host in self.hosts:
            if host.name == name:
                return host
        raise NotFoundError(f"no host '{name}' in the running network", hint=f"hosts: {', '.join(h.name for h in self.hosts)}")

    def owner_alive(self) -> bool:
        """Whether the `topo up` that owns the network still runs (a zombie nobody reaped yet does not)."""
        return same_process(self.owner_pid, self.owner_create_time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkState:
        data = dict(data)
        data["hosts"] = [HostRecord(**h) for h in data.get("hosts", [])]
        data["processes"] = [ProcessRecord(**p) for p in data.get("processes", [])]
        return cls(**data)


TOKEN_FILE = "southbound-token"


def network_token(state_dir: Path) -> str | None:
    """The southbound token `topo up` generated for the running network, if it did."""
    path = Path(state_dir) / TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def save_state(state: NetworkState, state_dir: Path) -> None:
    write_json_atomically(state_path(state_dir), state.to_dict())


def spawn_recorded(
    argv: list[str], log: Path, name: str, *, host: str | None = None, env: dict[str, str] | None = None
) -> ProcessRecord:
    """Start a process (no shell) in its own session, output to `log`, and return its record."""
    proc = spawn(argv, log, env={**os.environ, **env} if env else None)
    return ProcessRecord(name, proc.pid, host, start_time(proc.pid), argv, str(log))


def network_topology(state_dir: Path) -> tuple[NetworkState, Topology]:
    """The running network's state and its topology (as `topo up` expanded it); NotFoundError if none runs."""
    state = load_state(state_dir)
    return state, load_topology(Path(state.topology_file), state.parameters)


def running_topology(state_dir: Path) -> tuple[NetworkState, Topology] | None:
    """Like network_topology, but None when no network runs."""
    return network_topology(state_dir) if state_path(state_dir).exists() else None


def running_network(config: Config) -> tuple[NetworkState, Topology, Path]:
    """The network that is up: its state, topology and state folder; an error if none is, or it is not up yet."""
    state_dir = Path(config.paths.state_dir)
    state, topology = network_topology(state_dir)
    if state.phase != "up":
        raise MlfoError(f"the network is {state.phase}, not up", hint="wait for `mlfo topo up` to finish")
    return state, topology, state_dir


def load_state(state_dir: Path) -> NetworkState:
    path = state_path(state_dir)
    if not path.exists():
        raise NotFoundError("no emulated network is running (no state file)", hint="start one with `mlfo topo up N`")
    try:
        return NetworkState.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise MlfoError(f"the state file {path} is damaged: {err}", hint="remove leftovers by hand, then delete it") from None


def stop_processes(records: list[ProcessRecord]) -> list[str]:
    """Stop recorded processes with their descendants; names of those stopped."""
    stopped = set(stop_trees([(r.pid, r.create_time) for r in records]))
    return [f"{r.name} ({r.pid})" for r in records if r.pid in stopped]


def remove_bridges(names: list[str]) -> list[str]:
    """Delete these OVS bridges, with their ports, in one ovs-vsctl; the names of those that were there and are gone."""
    if not names:
        return []
    existing = set(run_tool(["ovs-vsctl", "--timeout=10", "list-br"]).stdout.split())
    there = [b for b in names if b in existing]
    if there:
        run_tool(["ovs-vsctl", "--timeout=30", *[a for b in there for a in ("--", "--if-exists", "del-br", b)][1:]])
    left = set(run_tool(["ovs-vsctl", "--timeout=10", "list-br"]).stdout.split())
    return [b for b in there if b not in left]


def remove_interfaces(names: list[str]) -> list[str]:
    """Delete these interfaces of the machine's namespace in one `ip -batch` (a veth pair goes with either end, also
    from a host's namespace); the names of those that were there and are gone."""
    there = [i for i in names if Path(f"/sys/class/net/{i}").exists()]
    if there:
        # -force: go on past one that went with its peer or is gone already.
        run_tool(["ip", "-force", "-batch", "-"], timeout=120, input="".join(f"link del {i}\n" for i in there))
    return [i for i in there if not Path(f"/sys/class/net/{i}").exists()]


def teardown(state: NetworkState) -> dict[str, list[str]]:
    """Remove exactly what the state lists: processes, host namespaces, bridges, interfaces, cgroups."""
    removed: dict[str, list[str]] = {"processes": stop_processes(state.processes), "hosts": [], "bridges": [], "interfaces": [],
                                     "cgroups": [], "containers": remove_containers(state.containers)}
    # A host is an interactive shell holding a namespace; it ignores SIGTERM and has nothing to save.
    gone = set(stop_trees([(h.pid, h.create_time) for h in state.hosts], timeout=2, first_signal=signal.SIGKILL))
    removed["hosts"] = [h.name for h in state.hosts if h.pid in gone]
    removed["bridges"] = remove_bridges(state.bridges)
    removed["interfaces"] = remove_interfaces(state.interfaces)
    for cgroup in state.cgroups:
        path = Path(cgroup)
        if path.is_dir():
            try:
                path.rmdir()
                removed["cgroups"].append(cgroup)
            except OSError:
                pass
    return removed


def _containers(names: list[str], *, remove: bool) -> list[str]:
    """Of these containers (by name, never by pattern), those that exist; removed first if `remove`."""
    if not names:
        return []
    import docker  # the optional `containers` extra: only Containernet networks have containers

    client = docker_client()
    found = []
    for name in names:
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            continue
        if remove:
            if container.status == "paused":
                container.unpause()  # Docker will not kill a paused container
            container.remove(force=True)
        found.append(name)
    return found


def remove_containers(names: list[str]) -> list[str]:
    """Remove exactly these containers; the names of those removed."""
    return _containers(names, remove=True)


def existing_containers(names: list[str]) -> list[str]:
    return _containers(names, remove=False)


def leftovers(state: NetworkState) -> dict[str, list[str]]:
    """What of the state still exists (empty lists after a clean teardown)."""
    bridges = set(run_tool(["ovs-vsctl", "--timeout=10", "list-br"]).stdout.split()) if state.bridges else set()
    return {
        "processes": [p.name for p in state.processes if p.alive()],
        "hosts": [h.name for h in state.hosts if ProcessRecord(h.name, h.pid, h.name, h.create_time).alive()],
        "bridges": [b for b in state.bridges if b in bridges],
        "interfaces": [i for i in state.interfaces if Path(f"/sys/class/net/{i}").exists()],
        "cgroups": [c for c in state.cgroups if Path(c).is_dir()],
        "containers": existing_containers(state.containers),
    }
