"""Plumbing of a running network's hosts: start a process inside one, wait for its port, its CPU limit,
run a command there, ping between hosts, publish a host's port on loopback.

Everything here takes the `NetworkState` it acts on; the network's lifecycle (`net.network`) and the
changes to a running network (`net.changes`) are built from these.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import MlfoError, UnreachableError, ValidationError
from mlfo_toolkit.net.image import docker_client
from mlfo_toolkit.net.state import HostRecord, NetworkState, ProcessRecord, spawn_recorded
from mlfo_toolkit.util.linux import (
    CFS_PERIOD_US,
    CGROUP_V1_CPU,
    CGROUP_V1_MEMORY,
    listening_tcp_ports,
    read_cpu_quota,
    read_memory_limit,
    set_cpu_quota,
    set_memory_limit,
)
from mlfo_toolkit.util.processes import wait_for_port

MLFO_COMMAND = [sys.executable, "-m", "mlfo_toolkit"]  # how a service's argv is recorded (and restarted)
MEMORY_LIMITED_ROLES = ("fl-client",)  # the hosts device profiles give a memory limit


# --- processes inside hosts ------------------------------------------------------------------
def spawn_in_host(
    state: NetworkState, host: str, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None,
    *, cpu_limited: bool = True,
) -> ProcessRecord:
    """Start argv in a host's namespace and (unless told not to) its CPU cgroup, without a shell; record it."""
    record = state.host(host)
    launcher = [sys.executable, "-m", "mlfo_toolkit.net.inhost", "--pid", str(record.pid)]
    if record.cgroup and cpu_limited:
        launcher += ["--cgroup", record.cgroup]
    if record.memory_cgroup and cpu_limited:
        launcher += ["--cgroup", record.memory_cgroup]
    # In a Docker host this is the container's network namespace and its Docker CPU cgroup (what
    # `docker update --cpus` limits), with the machine's files and /proc: the agent and the shared
    # executor keep seeing one another's PIDs. `topo exec` enters the container's files too.
    process = spawn_recorded([*launcher, "--", *argv], log_dir / f"{host}-{name}.log", name, host=host, env=env)
    process.argv = list(argv)  # what runs inside the host, without the launcher
    state.processes.append(process)
    return process


class ServiceLauncher:
    """Starts mlfo services inside hosts, forked from one pre-imported Python (`cli.launcher`): one Python
    start and one set of imports for all of them, not one per service. Start it early: it imports while
    the network is built."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.log = log_dir / "launcher.log"
        with open(self.log, "ab") as errors:
            self.process = subprocess.Popen([sys.executable, "-m", "mlfo_toolkit.cli.launcher"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errors, text=True)

    def launch(self, state: NetworkState, services: Sequence[tuple[str, str, list[str], dict[str, str]]]) -> list[ProcessRecord]:
        """Start each (host, name, mlfo CLI args, env) in its host's namespace and cgroups, logging to HOST-NAME.log in
        the launcher's folder; each is recorded in the state as soon as it runs."""
        assert self.process.stdin is not None and self.process.stdout is not None
        records: list[ProcessRecord] = []
        for host, name, args, env in services:
            record = state.host(host)
            log = str(self.log_dir / f"{host}-{name}.log")
            request = {"args": args, "env": env, "log": log, "pid": record.pid,
                       "cgroups": [c for c in (record.cgroup, record.memory_cgroup) if c],
                       "title": " ".join([*MLFO_COMMAND, *args])}
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
                line = self.process.stdout.readline()
            except OSError:
                line = ""
            answer = json.loads(line) if line.strip() else {"error": f"the launcher ended (see {self.log})"}
            if "error" in answer:
                raise MlfoError(f"could not start {name} on {host}: {answer['error']}", hint=f"see {self.log}")
            process = ProcessRecord(name, int(answer["pid"]), host, float(answer["create_time"]), [*MLFO_COMMAND, *args], log)
            state.processes.append(process)
            records.append(process)
        return records

    def close(self) -> None:
        """End the launcher (its input ends); the services it started keep running."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_listening(state: NetworkState, waits: list[tuple[str, int, ProcessRecord]], timeout: float) -> None:
    """Wait until each (host, port, process) listens; fail at once when one of the processes exits."""
    deadline = time.monotonic() + timeout
    pending = list(waits)
    while pending and time.monotonic() < deadline:
        ports = {host: listening_tcp_ports(state.host(host).pid) for host in {host for host, _, _ in pending}}
        for item in list(pending):
            host, port, process = item
            if port in ports[host]:
                pending.remove(item)
            elif not process.alive():
                tail = Path(process.log or "").read_text(errors="replace").splitlines()[-5:] if process.log else []
                raise MlfoError(f"{process.name} on {host} exited before listening on port {port}", hint="\n".join(tail))
        if pending:
            time.sleep(0.1)
    if pending:
        raise UnreachableError(
            f"not listening after {timeout:.0f} s: " + ", ".join(f"{h}:{p}" for h, p, _ in pending),
            hint="see the logs under paths.state_dir/logs",
        )


def publish_port(state: NetworkState, host: str, ip: str, inner_port: int, outer_port: int, log_dir: Path) -> str:
    """Relay 127.0.0.1:outer_port to ip:inner_port inside a host; recorded in the state. Returns the address."""
    listen = f"127.0.0.1:{outer_port}"
    relay = [sys.executable, "-m", "mlfo_toolkit.net.relay", "--listen", listen, "--pid", str(state.host(host).pid), "--target", f"{ip}:{inner_port}"]
    state.processes.append(spawn_recorded(relay, log_dir / f"relay-{outer_port}.log", f"publish {host}:{inner_port}"))
    state.published[f"{host}:{inner_port}"] = listen
    wait_for_port("127.0.0.1", outer_port, 30)
    return listen


# --- CPU limits -----------------------------------------------------------------------------------
def make_cgroups(state: NetworkState) -> None:
    """One CPU cgroup per host (cgroup v1 cpu controller), and a memory cgroup per FL client host (device
    profiles limit its memory; unlimited until one does), recorded for removal."""
    if not CGROUP_V1_CPU.is_dir():
        state.warnings.append("no cgroup v1 cpu controller: CPU limits are not available")
        return
    for host, path in _host_cgroups(state, CGROUP_V1_CPU, None):
        host.cgroup = path
    if not CGROUP_V1_MEMORY.is_dir():
        state.warnings.append("no cgroup v1 memory controller: device profiles' memory limits are not available")
        return
    for host, path in _host_cgroups(state, CGROUP_V1_MEMORY, MEMORY_LIMITED_ROLES):
        host.memory_cgroup = path


def _host_cgroups(state: NetworkState, root: Path, roles: tuple[str, ...] | None) -> list[tuple[HostRecord, str]]:
    """A cgroup per namespace host (of `roles`, or all) under root/mlfo-<owner pid>, children recorded before the parent
    (so removal goes leaves first). A Docker host's processes join its container's cgroup, which Docker limits."""
    parent = root / f"mlfo-{state.owner_pid}"
    parent.mkdir(exist_ok=True)
    made = []
    for host in state.hosts:
        if host.container or (roles is not None and host.role not in roles):
            continue
        path = parent / host.name
        path.mkdir(exist_ok=True)
        state.cgroups.append(str(path))
        made.append((host, str(path)))
    state.cgroups.append(str(parent))
    return made


def set_cpu(state: NetworkState, host: str, cpus: float | None) -> None:
    """Limit a host to `cpus` cores (None: unlimited): its cgroup, or its container (`docker update --cpus`)."""
    record = state.host(host)
    if record.container:
        quota = int(cpus * CFS_PERIOD_US) if cpus else -1
        docker_client().containers.get(record.container).update(cpu_period=CFS_PERIOD_US, cpu_quota=quota)
    elif record.cgroup:
        set_cpu_quota(record.cgroup, cpus)
    else:
        raise MlfoError("CPU limits need the cgroup v1 cpu controller", hint="see `mlfo topo status` warnings")


def read_cpu_limit(state: NetworkState, host: str) -> float | None:
    """The host's CPU limit in cores (None: unlimited), as its cgroup or container holds it."""
    record = state.host(host)
    if record.container:
        host_config = docker_client().containers.get(record.container).attrs["HostConfig"]
        quota, period = host_config.get("CpuQuota") or 0, host_config.get("CpuPeriod") or CFS_PERIOD_US
        return round(quota / period, 3) if quota > 0 else None
    if record.cgroup:
        return read_cpu_quota(record.cgroup)
    raise MlfoError(f"host {host} has no CPU cgroup", hint="see `mlfo topo status` warnings")


def set_memory(state: NetworkState, host: str, megabytes: float | None) -> None:
    """Limit a client host's memory (None: unlimited): its memory cgroup, or its container's."""
    record = state.host(host)
    if record.container:
        limit = f"{int(megabytes)}m" if megabytes else -1
        docker_client().containers.get(record.container).update(mem_limit=limit, memswap_limit=limit)
    elif record.memory_cgroup:
        try:
            set_memory_limit(record.memory_cgroup, megabytes)
        except OSError as err:
            raise MlfoError(f"cannot limit {host} to {megabytes} MB: {err.strerror}",
                            hint="the kernel refuses a limit below what the host's processes use now") from None
    else:
        raise MlfoError(f"host {host} has no memory cgroup", hint="needs the cgroup v1 memory controller (see `mlfo topo status` warnings)")


def read_memory(state: NetworkState, host: str) -> float | None:
    """The host's memory limit in MB (None: unlimited)."""
    record = state.host(host)
    if record.container:
        limit = docker_client().containers.get(record.container).attrs["HostConfig"].get("Memory") or 0
        return round(limit / 1024 / 1024, 1) if limit > 0 else None
    if record.memory_cgroup:
        return read_memory_limit(record.memory_cgroup)
    raise MlfoError(f"host {host} has no memory cgroup")


# --- commands inside hosts ------------------------------------------------------------------------
def host_command(state: NetworkState, host: str, argv: Sequence[str]) -> list[str]:
    """argv that runs a command in a host's network namespace (nsenter, no shell); in a Docker host also in its
    mount namespace, so the command is the container's own, as with `docker exec`."""
    record = state.host(host)
    spaces = ["--net", "--mount"] if record.container else ["--net"]
    return ["nsenter", "--target", str(record.pid), *spaces, "--", *argv]


def host_exec(state: NetworkState, host: str, argv: Sequence[str], *, capture: bool = False) -> dict[str, Any]:
    """Run a command in a host (no shell): with this terminal, or with its output captured."""
    if not argv:
        raise ValidationError("no command given", hint="e.g. mlfo topo exec fed.1 -- ip addr")
    command = host_command(state, host, argv)
    if not capture:
        return {"node": host, "exit_code": subprocess.call(command)}
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return {"node": host, "exit_code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def ping(state: NetworkState, source: str, destination_ip: str, timeout_s: int = 2) -> bool:
    """One ping from a host to an address."""
    argv = host_command(state, source, ["ping", "-c", "1", "-W", str(timeout_s), "-q", destination_ip])
    return subprocess.run(argv, capture_output=True, timeout=timeout_s + 10, check=False).returncode == 0


def ping_mesh(state: NetworkState, workers: int = 32, retries: int = 1) -> dict[str, Any]:
    """Every host pings every other once, in parallel (a failed pair is retried once: ARP warm-up)."""
    pairs = [(a.name, b.name, b.ip) for a in state.hosts for b in state.hosts if a.name != b.name]
    started = time.monotonic()

    def attempt(pair: tuple[str, str, str]) -> bool:
        return any(ping(state, pair[0], pair[2]) for _ in range(1 + retries))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(attempt, pairs))
    failed = [[a, b] for (a, b, _), ok in zip(pairs, results) if not ok]
    return {
        "pairs": len(pairs),
        "loss_percent": round(100.0 * len(failed) / len(pairs), 2) if pairs else 0.0,
        "failed": failed,
        "seconds": round(time.monotonic() - started, 2),
    }
