"""Changes to a running emulated network: a link's rate, a link down or up, background traffic, and
`mlfo init` (CPU limits and background traffic). The experiment timeline uses these too; a host's CPU
limit itself is `net.hosts.set_cpu`.

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
from mlfo_toolkit.net.background import rate_mbit
from mlfo_toolkit.net.hosts import host_command, ping, set_cpu, spawn_in_host, wait_listening
from mlfo_toolkit.net.state import NetworkState, running_network, save_state, stop_processes
from mlfo_toolkit.net.topology import Topology, interface_name
from mlfo_toolkit.util.processes import run_tool

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
            if link.patch:
                raise ValidationError(f"link {link.a}-{link.b} is a patch link (OVS patch ports): it has no rate, delay or state to change",
                                      field="link", hint="make it a veth link in the topology (`patch: false`)")
            return [LinkEnd(link.a, link.interface_a, False), LinkEnd(link.b, link.interface_b, False)], link.bandwidth_mbit
    raise ValidationError(f"no link between '{a}' and '{b}' in topology {topology.name}", field="link",
                          hint="a link joins a host and its switch, or two switches (`mlfo topo show`)")


def _in_node(state: NetworkState, end: LinkEnd, argv: list[str]) -> subprocess.CompletedProcess[str]:
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


# --- background traffic ---------------------------------------------------------------------------
def stop_background(state: NetworkState, state_dir: Path) -> list[str]:
    """Stop the background iperf3 pair and its exporter, if running; names of what was stopped."""
    old = [p for p in state.processes if p.name in BACKGROUND_NAMES]
    stopped = stop_processes(old) if old else []
    state.processes = [p for p in state.processes if p not in old]
    state.extra["background"] = {"rate": None}
    save_state(state, state_dir)
    return stopped


def start_background(state: NetworkState, topology: Topology, config: Config, state_dir: Path, rate: str,
                     pattern: str = "constant", period: float = 30.0, seed: int = 1) -> dict[str, Any]:
    """iperf3 at `rate` from the app-client host to the app-server host (the prototype's init.sh), with the
    socket exporter on the app client; replaces any running background traffic. A `pattern` other than
    constant (step, sine, poisson; see net.background) varies the rate over `period` seconds."""
    stop_background(state, state_dir)
    sink, source = topology.one("app-server"), topology.one("app-client")
    log_dir = state_dir / "logs"
    server = spawn_in_host(state, sink.name, "iperf3-server", ["iperf3", "-s", "-B", sink.ip, "-p", str(BACKGROUND_PORT)], log_dir)
    wait_listening(state, [(sink.name, BACKGROUND_PORT, server)], 20)
    if pattern == "constant":
        sender = ["iperf3", "-c", sink.ip, "-p", str(BACKGROUND_PORT), "-b", rate, "-t", "86400", "--connect-timeout", "5000",
                  "-i", "1", "--forceflush"]
    else:
        sender = [sys.executable, "-m", "mlfo_toolkit.net.background", "--to", f"{sink.ip}:{BACKGROUND_PORT}",
                  "--rate-mbit", f"{rate_mbit(rate):g}", "--pattern", pattern, "--period", f"{period:g}", "--seed", str(seed)]
    spawn_in_host(state, source.name, "iperf3-client", sender, log_dir)
    exporter_port = config.monitor.app_exporter_port
    exporter = spawn_in_host(state, source.name, "app-exporter",
                             [sys.executable, "-m", "mlfo_toolkit", "exporter", "--app", "background",
                              "--match-port", str(BACKGROUND_PORT), "--host", source.ip, "--port", str(exporter_port)], log_dir)
    wait_listening(state, [(source.name, exporter_port, exporter)], 60)
    background = {"rate": rate, "from": f"{source.name} ({source.ip})", "to": f"{sink.name} ({sink.ip}):{BACKGROUND_PORT}",
                  "exporter": f"{source.ip}:{exporter_port}",
                  **({"pattern": pattern, "period_s": period, "seed": seed} if pattern != "constant" else {})}
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


def init_network(config: Config, *, cpus: float | None, clients: bool, bg_rate: str | None, bg_pattern: str = "constant",
                 bg_period: float = 30.0) -> dict[str, Any]:
    """The prototype's init.sh: CPU limits, FL-server reachability from the cloud MLFO, background traffic."""
    state, topology, state_dir = running_network(config)
    limits: dict[str, float | None] = {}
    for host in topology.hosts:
        if host.role == "fl-server" or (clients and host.role == "fl-client"):
            limits[host.name] = cpus if cpus is not None else host.cpus
            set_cpu(state, host.name, limits[host.name])
        elif host.role == "fl-aggregator" and host.cpus:  # an edge aggregator gets the CPU its topology gives it
            limits[host.name] = host.cpus
            set_cpu(state, host.name, host.cpus)
    state.extra["cpu_limits"] = limits
    cloud = topology.one("cloud-mlfo")
    reachable = {h.name: ping(state, cloud.name, h.ip) for h in topology.fl_servers()}
    if bg_rate and bg_rate not in ("0", "off"):
        background = start_background(state, topology, config, state_dir, bg_rate, bg_pattern, bg_period, config.fl.seed)
    else:
        stop_background(state, state_dir)
        background = {"rate": None}
    save_state(state, state_dir)
    return {"cpu_limits": limits, "reachable": reachable, "background": background}
