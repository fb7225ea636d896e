"""A running emulated network's lifecycle: bring it up with mlfo's services inside, stop it, tear it down,
restart a service in it. The plumbing of single hosts is `net.hosts`; changes to a running network are
`net.changes`."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ConflictError, MlfoError, NotFoundError, UnreachableError
from mlfo_toolkit.net.builders import get_builder
from mlfo_toolkit.net.faucet import start_faucet, wait_switches_connected
from mlfo_toolkit.net.hosts import ServiceLauncher, make_cgroups, publish_port, set_cpu, set_memory, spawn_in_host, wait_listening
from mlfo_toolkit.net.image import docker_client
from mlfo_toolkit.net.state import (
    TOKEN_FILE,
    NetworkState,
    ProcessRecord,
    leftovers,
    load_state,
    network_token,
    save_state,
    spawn_recorded,
    state_path,
    stop_processes,
    teardown,
)
from mlfo_toolkit.net.topology import AGENT_ROLES, Topology
from mlfo_toolkit.util.files import write_secret
from mlfo_toolkit.util.processes import start_time
from mlfo_toolkit.util.progress import Progress, quiet, say
from mlfo_toolkit.util.signals import terminate_as_interrupt

SERVICE_START_SECONDS = 180.0


def _service_config(config: Config, topology: Topology, state_dir: Path) -> Path:
    """The config file every mlfo process in the network reads (no secrets: the token goes by env)."""
    inner = topology.mlfo_config(config).with_overrides({"api.token": None, "api.southbound_token": None}, origin="topology")
    data = inner.model_dump(mode="json")
    data["fl"]["data_dir"] = str(Path(config.fl.data_dir).resolve())
    data["mlfo"]["network_dir"] = str(state_dir.resolve())  # the campus MLFO's closed loop may change this network's meters
    if config.fl.isolation == "shared":
        data["fl"]["executor_dir"] = str(executor_dir(state_dir))
    path = state_dir / "network-config.yaml"
    write_secret(path, yaml.safe_dump(data, sort_keys=False))
    return path


def executor_dir(state_dir: Path) -> Path:
    """Where the network's client agents register their SuperNodes with the shared executor."""
    return (state_dir / "executor").resolve()


def start_executor(state: NetworkState, state_dir: Path, log_dir: Path) -> None:
    """One ClientApp executor for every client host, in the root namespace (see mlfo_toolkit.fl.executor).

    Each task runs in a child that joins its SuperNode's host: its network namespace (the Runtime API is
    on that host's loopback) and its CPU cgroup (`mlfo init --cpus` limits training there too). The FL
    traffic itself is the SuperNode's, from its own host.
    """
    argv = [sys.executable, "-m", "mlfo_toolkit.fl.executor", "--dir", str(executor_dir(state_dir))]
    state.processes.append(spawn_recorded(argv, log_dir / "executor.log", "clientapp executor"))


def _service_env(base: dict[str, str], state_dir: Path, host: str) -> dict[str, str]:
    return {**base, "MLFO_PATHS__STATE_DIR": str((state_dir / "nodes" / host).resolve())}


def agent_process(state: NetworkState, address: str) -> ProcessRecord:
    """The recorded agent process of the host at `address` (IP or IP:PORT)."""
    ip = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    host = next((h for h in state.hosts if h.ip == ip), None)
    record = next((p for p in state.processes if host is not None and p.host == host.name and p.name == "agent"), None)
    if record is None:
        raise NotFoundError(f"no agent recorded for {address} in the running network")
    return record


def restart_agent(config: Config, host: str) -> ProcessRecord:
    """Start a host's agent again with the argv and environment it had (after it died or was killed)."""
    state_dir = Path(config.paths.state_dir)
    state = load_state(state_dir)
    old = next((p for p in state.processes if p.host == host and p.name == "agent"), None)
    if old is None:
        raise NotFoundError(f"no agent recorded on host {host}")
    if old.alive():
        raise ConflictError(f"the agent on {host} (PID {old.pid}) is running", hint="kill it first")
    base = {"MLFO_API__SOUTHBOUND_TOKEN": network_token(state_dir) or ""}
    if config.api.token:
        base["MLFO_API__TOKEN"] = config.api.token
    new = spawn_in_host(state, host, "agent", old.argv, state_dir / "logs", _service_env(base, state_dir, host))
    state.processes.remove(old)
    save_state(state, state_dir)
    wait_listening(state, [(host, config.agent.port, new)], SERVICE_START_SECONDS)
    return new


def apply_host_profiles(state: NetworkState, topology: Topology, progress: Progress = quiet) -> None:
    """The topology's device profiles (`profile:` on a host): its CPU and memory limits, before anything runs
    there (its link rate was built in). Recorded in the state; `topo status` shows them."""
    applied: dict[str, dict[str, Any]] = {}
    for host in (h for h in topology.hosts if h.profile):
        set_cpu(state, host.name, host.cpus)
        memory = host.memory_mb
        if memory is not None:
            record = state.host(host.name)
            if record.memory_cgroup or record.container:
                set_memory(state, host.name, memory)
            else:
                state.warnings.append(f"{host.name}: no memory cgroup, its profile's {memory:g} MB limit is not applied")
                memory = None
        applied[host.name] = {"profile": host.profile, "cpus": host.cpus, "memory_mb": memory, "link_mbit": host.bandwidth_mbit}
    if applied:
        state.extra["profiles"] = applied
        state.extra["cpu_limits"] = {**state.extra.get("cpu_limits", {}), **{n: p["cpus"] for n, p in applied.items()}}
        say(progress, "topo", f"device profiles on {len(applied)} hosts: "
            + ", ".join(f"{c} x {p}" for p, c in Counter(p["profile"] for p in applied.values()).items()))


def start_services(state: NetworkState, topology: Topology, config: Config, state_dir: Path, progress: Progress,
                   launcher: ServiceLauncher) -> None:
    """MLFOs on their hosts, an agent on every FL host, the published ports on loopback."""
    config_file = _service_config(config, topology, state_dir)
    state.config_file = str(config_file)
    log_dir = state_dir / "logs"
    mlfo = ["--config", str(config_file)]  # the services' CLI arguments start with the network's config
    # Agents and the cloud MLFO listen on host addresses: closed by default. Without a configured
    # token, a random one is made for this network; only the MLFOs (and Prometheus) carry it.
    southbound = config.southbound_token or secrets.token_urlsafe(32)
    write_secret(state_dir / TOKEN_FILE, southbound)
    env_base = {"MLFO_API__SOUTHBOUND_TOKEN": southbound}
    if config.api.token:
        env_base["MLFO_API__TOKEN"] = config.api.token
    services: list[tuple[str, str, list[str], dict[str, str]]] = []
    ports: list[int] = []

    def start(host: str, name: str, args: list[str], port: int) -> None:
        services.append((host, name, [*mlfo, *args], _service_env(env_base, state_dir, host)))
        ports.append(port)

    for host in topology.hosts:
        if host.role == "cloud-mlfo":
            start(host.name, "mlfo-cloud", ["serve", "--role", "cloud", "--host", host.ip, "--port", str(config.mlfo.momo_port)], config.mlfo.momo_port)
        elif host.role == "campus-mlfo":
            start(host.name, "mlfo-campus", ["serve", "--role", "campus", "--host", host.ip, "--port", str(config.mlfo.port)], config.mlfo.port)
        elif host.role in AGENT_ROLES:
            start(host.name, "agent", ["agent", "--host", host.ip, "--port", str(config.agent.port)], config.agent.port)
    say(progress, "topo", f"starting {len(services)} mlfo services inside the hosts (forked from one launcher)")
    started = time.monotonic()
    records = launcher.launch(state, services)
    launcher.close()
    wait_listening(state, [(s[0], port, r) for s, port, r in zip(services, ports, records, strict=True)], SERVICE_START_SECONDS)
    say(progress, "topo", f"{len(records)} services listening in {time.monotonic() - started:.1f} s")
    for host in topology.hosts:
        for inner_port, outer_port in host.publish.items():
            if not outer_port:
                say(progress, "topo", f"not publishing {host.name}:{inner_port} (publish port 0)")
                continue
            listen = publish_port(state, host.name, host.ip, inner_port, outer_port, log_dir)
            say(progress, "topo", f"published {host.name} {host.ip}:{inner_port} on {listen}")


def network_up(
    config: Config,
    topology: Topology,
    *,
    backend: str = "mininet",
    controller: str | None = None,
    controller_kind: str | None = None,
    progress: Progress = quiet,
) -> tuple[NetworkState, Any]:
    """Build the network and start its services; returns the state and the builder (to stop it).

    `controller`: `faucet` (started here, for this network, and recorded), the HOST:PORT of another OpenFlow
    controller (`onos` is resolved to one by the caller, who says so in `controller_kind`), or None (standalone)."""
    state_dir = Path(config.paths.state_dir)
    if state_path(state_dir).exists():
        existing = load_state(state_dir)
        alive = "is running" if existing.owner_alive() else "was left behind by a run that was killed"
        raise MlfoError(f"a network ({existing.topology}) {alive}", hint="`mlfo topo down` removes it first")
    state = NetworkState(topology.name, topology.source, topology.parameters, backend, os.getpid(), start_time(os.getpid()))
    builder = get_builder(backend)
    builder.checkpoint = lambda: save_state(state, state_dir)
    builder.prepare(state_dir)
    save_state(state, state_dir)
    launcher: ServiceLauncher | None = None
    try:
        # The executor (Flower's imports) and the services' launcher (mlfo's) start first: they import while
        # the network is built, which mostly waits on Mininet's shells.
        if config.fl.isolation == "shared":
            start_executor(state, state_dir, state_dir / "logs")
            save_state(state, state_dir)
        launcher = ServiceLauncher(state_dir / "logs")
        say(progress, "topo", f"building {len(topology.switches)} switches, {len(topology.hosts)} hosts, {len(topology.links)} switch links ({backend})")
        started = time.monotonic()
        openflow = None
        if controller == "faucet":
            openflow = start_faucet(config, topology, state, state_dir)
            save_state(state, state_dir)
            say(progress, "topo", f"Faucet listens on {openflow} (config {state.extra['controller']['config']})")
        elif controller:
            openflow = controller
            state.extra["controller"] = {"kind": controller_kind or "remote", "openflow": openflow}
        builder.build(topology, state, openflow)
        save_state(state, state_dir)
        if controller == "faucet":
            wait_switches_connected(state.extra["controller"], topology)
            say(progress, "topo", f"all {len(topology.switches)} switches connected to Faucet")
        say(progress, "topo", f"network built in {time.monotonic() - started:.1f} s")
        for warning in state.warnings:
            say(progress, "topo", f"warning: {warning}")
        make_cgroups(state)
        save_state(state, state_dir)
        apply_host_profiles(state, topology, progress)
        start_services(state, topology, config, state_dir, progress, launcher)
        state.phase = "up"
        save_state(state, state_dir)
    except BaseException:
        if launcher is not None:
            launcher.close()
        save_state(state, state_dir)
        network_stop(state_dir, builder)
        raise
    return state, builder


def network_stop(state_dir: Path, builder: Any = None, progress: Progress = quiet) -> dict[str, list[str]]:
    """Tear down from the state file (re-read: `mlfo init` adds processes), then the builder's own stop."""
    state = load_state(state_dir)
    state.phase = "stopping"
    save_state(state, state_dir)
    started = time.monotonic()
    removed = {"processes": stop_processes(state.processes)}
    say(progress, "topo", f"stopped {len(removed['processes'])} processes in {time.monotonic() - started:.1f} s")
    if builder is not None:
        started = time.monotonic()
        try:
            builder.stop()
        except Exception as err:  # the state-file teardown below still removes what is left
            state.warnings.append(f"builder stop failed: {err}")
        say(progress, "topo", f"{state.backend} stopped its network in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    for key, values in teardown(state).items():
        removed.setdefault(key, []).extend(values)
    say(progress, "topo", f"removed what was left from the state file in {time.monotonic() - started:.1f} s")
    left = leftovers(state)
    if any(left.values()):
        save_state(state, state_dir)
        raise MlfoError(f"could not remove: {left}", hint="remove them by name; the state file is kept")
    state_path(state_dir).unlink(missing_ok=True)
    # Meters lived on the bridges just removed (or on a controller's view of them).
    for name in ("meters.json", "faucet-meters.json", "faucet.yaml"):
        (state_dir / name).unlink(missing_ok=True)
    (state_dir / TOKEN_FILE).unlink(missing_ok=True)
    return removed


def network_down(config: Config, timeout: float = 90.0) -> dict[str, Any]:
    """Stop the owner of the running network (or, if it was killed, tear down from the state file)."""
    state_dir = Path(config.paths.state_dir)
    state = load_state(state_dir)
    if state.owner_alive() and state.owner_pid != os.getpid():
        os.kill(state.owner_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while state.owner_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not state_path(state_dir).exists():
            return {"stopped_by": "owner", "owner_pid": state.owner_pid}
    removed = network_stop(state_dir)
    return {"stopped_by": "state file", "removed": removed}


# --- inspect and use ----------------------------------------------------------------------------
def network_status(config: Config) -> dict[str, Any]:
    state = load_state(Path(config.paths.state_dir))
    left = leftovers(state)
    return {
        "topology": state.topology,
        "parameters": state.parameters,
        "phase": state.phase,
        "owner": {"pid": state.owner_pid, "alive": state.owner_alive()},
        "hosts": [{"name": h.name, "role": h.role, "ip": h.ip, "alive": h.name in left["hosts"]} for h in state.hosts],
        "processes": [{"name": p.name, "host": p.host, "pid": p.pid, "alive": p.alive()} for p in state.processes],
        "bridges": state.bridges,
        "published": state.published,
        "warnings": state.warnings,
        "cpu_limits": state.extra.get("cpu_limits", {}),
        "profiles": state.extra.get("profiles", {}),
        "containers": containers_status(state),
    }


NO_NETEM = ("not emulated: this kernel has no netem qdisc, so link delays and the delay and loss of traces are "
            "left out; rates (HTB) and meters are emulated")


def network_conditions(config: Config) -> dict[str, Any]:
    """What a run on the running network could and could not emulate, for its run.json and report."""
    state = load_state(Path(config.paths.state_dir))
    netem = bool(state.extra.get("netem"))
    return {"topology": state.topology, "backend": state.backend,
            "controller": (state.extra.get("controller") or {}).get("kind", "none"),
            "netem": netem, "delay_and_loss": "emulated (netem)" if netem else NO_NETEM,
            "traces": sorted(p.name.removeprefix("trace ") for p in state.processes if p.name.startswith("trace ") and p.alive())}


def containers_status(state: NetworkState) -> list[dict[str, Any]]:
    """Each Docker host's container: its state, CPU limit (as `docker update --cpus` set it) and the memory
    of the mlfo processes running in it."""
    if not state.containers:
        return []
    import docker  # the optional `containers` extra: only Containernet networks have containers

    client = docker_client()
    out: list[dict[str, Any]] = []
    for host in (h for h in state.hosts if h.container):
        try:
            info = client.api.inspect_container(host.container)
        except docker.errors.NotFound:
            out.append({"host": host.name, "container": host.container, "state": "gone", "cpus": None, "memory_mb": None})
            continue
        config = info.get("HostConfig", {})
        quota, period = config.get("CpuQuota") or 0, config.get("CpuPeriod") or 0
        rss = 0
        for record in (p for p in state.processes if p.host == host.name and p.alive()):
            try:
                tree = [psutil.Process(record.pid), *psutil.Process(record.pid).children(recursive=True)]
                rss += sum(p.memory_info().rss for p in tree)
            except psutil.Error:
                continue
        out.append({"host": host.name, "container": host.container, "state": info.get("State", {}).get("Status"),
                    "cpus": round(quota / period, 2) if quota > 0 and period else None, "memory_mb": round(rss / 1e6, 1)})
    return out


def serve_network(
    config: Config,
    topology: Topology,
    *,
    backend: str = "mininet",
    controller: str | None = None,
    controller_kind: str | None = None,
    progress: Progress = quiet,
    on_ready: Callable[[NetworkState], None] | None = None,
) -> dict[str, Any]:
    """`topo up` in the foreground: build, report ready, wait for Ctrl-C or SIGTERM, tear down."""
    builder = None
    try:
        with terminate_as_interrupt():
            state, builder = network_up(config, topology, backend=backend, controller=controller, controller_kind=controller_kind,
                                        progress=progress)
            if on_ready:
                on_ready(state)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    say(progress, "topo", "tearing down")
    if builder is None:
        return {}
    return network_stop(Path(config.paths.state_dir), builder, progress)


def state_summary(state: NetworkState) -> dict[str, Any]:
    """What `topo up --detach --json` prints once the network is up."""
    return {"topology": state.topology, "parameters": state.parameters, "phase": state.phase, "owner_pid": state.owner_pid,
            "hosts": [h.name for h in state.hosts], "bridges": state.bridges, "published": state.published,
            "warnings": state.warnings}


def detach_network(
    config: Config,
    *,
    topology: Path | str | None,
    cohorts: int | None,
    params: dict[str, int],
    backend: str,
    controller: str | None,
    progress: Progress,
    timeout: float = 900.0,
) -> NetworkState:
    """Run `topo up` in the background, built from these parameters and this config, and wait until it is up."""
    state_dir = Path(config.paths.state_dir)
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "topo-up.log"
    # The child reads exactly this config (secrets included, so the file is the owner's alone).
    config_file = state_dir / "topo-up-config.yaml"
    write_secret(config_file, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    argv = ["--config", str(config_file), "topo", "up"]
    if cohorts:
        argv.append(str(cohorts))
    if topology:
        argv += ["--topology", str(topology)]
    for key, value in params.items():
        argv += ["--param", f"{key}={value}"]
    argv += ["--backend", backend]
    if controller:
        argv += ["--controller", controller]
    say(progress, "topo", f"starting `mlfo {' '.join(argv[2:])}` in the background (log: {log_path})")
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "mlfo_toolkit", *argv], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
            raise MlfoError(f"`topo up` exited with code {child.returncode} before the network was up", hint=tail)
        try:
            state = load_state(state_dir)
            if state.phase == "up" and state.owner_pid == child.pid:
                return state
        except MlfoError:
            pass
        time.sleep(0.5)
    raise UnreachableError(f"the network was not up after {timeout:.0f} s", hint=f"see {log_path}")
