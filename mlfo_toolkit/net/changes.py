"""Changes to a running emulated network: a link's rate, a link down or up, a host's CPU limit,
background traffic. `mlfo init` and the experiment timeline both use these.

Every function reads what it changes from the state file and the topology, and returns what was
there before, so the caller can put it back.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MlfoError, ValidationError
from mlfo_toolkit.net.state import NetworkState, network_topology, save_state, stop_processes
from mlfo_toolkit.net.topology import Topology, interface_name
from mlfo_toolkit.processes import run_tool

BACKGROUND_PORT = 5201
BACKGROUND_NAMES = ("iperf3-server", "iperf3-client", "app-exporter")


# --- links ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkEnd:
    node: str
    interface: str
    host: bool  # a host's end lives in its network namespace; a switch's in the machine's


def link_ends(topology: Topology, a: str, b: str) -> tuple[list[LinkEnd], float | None]:
    """Both ends of the link between nodes a and b (a host and its switch, or two switches), and its rate."""
    hosts = {h.name: h for h in topology.hosts}
    for first, second in ((a, b), (b, a)):
        host = hosts.get(first)
        if host is not None and host.switch == second:
            return [LinkEnd(host.name, host.interface, True),
                    LinkEnd(second, interface_name(second, host.port), False)], host.bandwidth_mbit
    for link in topology.links:
        if {link.a, link.b} == {a, b}:
            return [LinkEnd(link.a, link.interface_a, False), LinkEnd(link.b, link.interface_b, False)], link.bandwidth_mbit
    raise ValidationError(f"no link between '{a}' and '{b}' in topology {topology.name}", field="link",
                          hint="a link joins a host and its switch, or two switches (`mlfo topo show`)")


def _in_node(state: NetworkState, end: LinkEnd, argv: list[str]) -> subprocess.CompletedProcess[str]:
    from mlfo_toolkit.net.network import host_command

    command = host_command(state, end.node, argv) if end.host else argv
    return run_tool(command)


def set_link(state: NetworkState, ends: list[LinkEnd], *, rate_mbit: float | None = None, up: bool | None = None) -> None:
    """Shape both ends to `rate_mbit` (Mininet's HTB class 5:1), and/or set them up or down."""
    for end in ends:
        steps: list[list[str]] = []
        if rate_mbit is not None:
            if "htb 5:" not in _in_node(state, end, ["tc", "qdisc", "show", "dev", end.interface]).stdout:
                # A link the topology did not shape: give it Mininet's layout first.
                steps.append(["tc", "qdisc", "replace", "dev", end.interface, "root", "handle", "5:", "htb", "default", "1"])
            steps.append(["tc", "class", "replace", "dev", end.interface, "parent", "5:", "classid", "5:1", "htb",
                          "rate", f"{rate_mbit:g}mbit", "burst", "15k"])
        if up is not None:
            steps.append(["ip", "link", "set", "dev", end.interface, "up" if up else "down"])
        for argv in steps:
            done = _in_node(state, end, argv)
            if done.returncode != 0:
                raise MlfoError(f"{' '.join(argv[:3])} on {end.node} ({end.interface}) failed: {done.stderr.strip()[:200]}")


def remove_shaping(state: NetworkState, ends: list[LinkEnd]) -> None:
    """Take the HTB shaping off both ends (a link the topology did not shape)."""
    for end in ends:
        _in_node(state, end, ["tc", "qdisc", "del", "dev", end.interface, "root"])


def read_link(state: NetworkState, ends: list[LinkEnd]) -> dict[str, Any]:
    """What each end's kernel reports: operational state and the HTB rate, if shaped."""
    out = {}
    for end in ends:
        link = _in_node(state, end, ["ip", "-o", "link", "show", "dev", end.interface]).stdout
        shaped = re.search(r"class htb 5:1 .*?rate (\S+)", _in_node(state, end, ["tc", "class", "show", "dev", end.interface]).stdout)
        out[f"{end.node}:{end.interface}"] = {"up": ",UP" in link or "<UP" in link, "rate": shaped.group(1) if shaped else None}
    return out


# --- CPU limits ---------------------------------------------------------------------------------
def read_cpu_limit(state: NetworkState, host: str) -> float | None:
    """The host's CPU limit in cores (None: unlimited), as its cgroup or container holds it."""
    from mlfo_toolkit.net.network import CFS_PERIOD_US

    record = state.host(host)
    if record.container:
        from mlfo_toolkit.net.image import docker_client

        host_config = docker_client().containers.get(record.container).attrs["HostConfig"]
        quota, period = host_config.get("CpuQuota") or 0, host_config.get("CpuPeriod") or CFS_PERIOD_US
    elif record.cgroup:
        quota = int((Path(record.cgroup) / "cpu.cfs_quota_us").read_text())
        period = int((Path(record.cgroup) / "cpu.cfs_period_us").read_text())
    else:
        raise MlfoError(f"host {host} has no CPU cgroup", hint="see `mlfo topo status` warnings")
    return round(quota / period, 3) if quota > 0 else None


def set_cpu(state: NetworkState, host: str, cpus: float | None) -> None:
    """Limit a host to `cpus` cores (None: unlimited), through its cgroup or its container."""
    from mlfo_toolkit.net.network import set_container_cpu_limit, set_cpu_limit

    record = state.host(host)
    if record.container:
        set_container_cpu_limit(record.container, cpus)
    elif record.cgroup:
        set_cpu_limit(record.cgroup, cpus)
    else:
        raise MlfoError("CPU limits need the cgroup v1 cpu controller", hint="see `mlfo topo status` warnings")


# --- background traffic ---------------------------------------------------------------------------
def stop_background(state: NetworkState, state_dir: Path) -> list[str]:
    """Stop the background iperf3 pair and its exporter, if running; names of what was stopped."""
    old = [p for p in state.processes if p.name in BACKGROUND_NAMES]
    stopped = stop_processes(old) if old else []
    state.processes = [p for p in state.processes if p not in old]
    state.extra["background"] = {"rate": None}
    save_state(state, state_dir)
    return stopped


def start_background(state: NetworkState, topology: Topology, config: Config, state_dir: Path, rate: str) -> dict[str, Any]:
    """iperf3 at `rate` from the app-client host to the app-server host (the prototype's init.sh), with the
    socket exporter on the app client; replaces any running background traffic."""
    from mlfo_toolkit.net.network import spawn_in_host, wait_listening

    stop_background(state, state_dir)
    sink, source = topology.one("app-server"), topology.one("app-client")
    log_dir = state_dir / "logs"
    server = spawn_in_host(state, sink.name, "iperf3-server", ["iperf3", "-s", "-B", sink.ip, "-p", str(BACKGROUND_PORT)], log_dir)
    wait_listening(state, [(sink.name, BACKGROUND_PORT, server)], 20)
    spawn_in_host(state, source.name, "iperf3-client",
                  ["iperf3", "-c", sink.ip, "-p", str(BACKGROUND_PORT), "-b", rate, "-t", "86400", "--connect-timeout", "5000",
                   "-i", "1", "--forceflush"], log_dir)
    exporter_port = config.monitor.app_exporter_port
    exporter = spawn_in_host(state, source.name, "app-exporter",
                             [sys.executable, "-m", "mlfo_toolkit", "exporter", "--app", "background",
                              "--match-port", str(BACKGROUND_PORT), "--host", source.ip, "--port", str(exporter_port)], log_dir)
    wait_listening(state, [(source.name, exporter_port, exporter)], 60)
    background = {"rate": rate, "from": f"{source.name} ({source.ip})", "to": f"{sink.name} ({sink.ip}):{BACKGROUND_PORT}",
                  "exporter": f"{source.ip}:{exporter_port}"}
    state.extra["background"] = background
    save_state(state, state_dir)
    return background


def background_mbit(state: NetworkState, wait: float = 2.5) -> float | None:
    """The background sender's rate over its last one-second interval (from its log), None if it is not running."""
    client = next((p for p in state.processes if p.name == "iperf3-client"), None)
    if client is None or client.log is None or not client.alive():
        return None
    time.sleep(wait)  # a few intervals after a start
    rates = re.findall(r"\]\s+\S+-\S+\s+sec\s+\S+ \S+\s+(\S+) (\w)bits/sec", Path(client.log).read_text(errors="replace"))
    if not rates:
        return None
    value, unit = rates[-1]
    return round(float(value) * {"K": 1e-3, "M": 1.0, "G": 1e3}.get(unit, 1e-6), 2)


def running_network(config: Config) -> tuple[NetworkState, Topology, Path]:
    state_dir = Path(config.paths.state_dir)
    state, topology = network_topology(state_dir)
    if state.phase != "up":
        raise MlfoError(f"the network is {state.phase}, not up", hint="wait for `mlfo topo up` to finish")
    return state, topology, state_dir
