"""`mlfo topo show|up|down|status|exec|ping`: the emulated network."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mlfo_toolkit.cli.main import echo_json, pass_config
from mlfo_toolkit.config import Config
from mlfo_toolkit.net.builders import BACKENDS
from mlfo_toolkit.net.state import NetworkState
from mlfo_toolkit.net.topology import load_topology

TOPOLOGY = click.option(
    "--topology", "topology_file", type=click.Path(dir_okay=False, path_type=Path),
    help="Topology YAML (default: topologies/prototype.yaml; a bare name like 'small' looks in topologies/).",
)


PARAM = click.option(
    "--param", "params", multiple=True, metavar="KEY=VALUE",
    help="Set a topology parameter (integer), e.g. --param publish_port=8101. Repeatable.",
)


def _load(topology_file: Path | None, cohorts: int | None, params: tuple[str, ...] = ()) -> Any:
    parameters: dict[str, int] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise click.BadParameter(f"'{item}' is not KEY=INTEGER", param_hint="--param")
        parameters[key.strip()] = int(value)
    if cohorts:
        parameters["cohorts"] = cohorts
    return load_topology(topology_file, parameters or None)


def _progress(message: str) -> None:
    click.echo(f"[topo] {message}", err=True)


@click.group()
def topo() -> None:
    """Build and use an emulated network (Mininet + Open vSwitch; needs root)."""


@topo.command()
@click.argument("topology_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cohorts", type=click.IntRange(1, 89), help="Number of cohorts (FL servers) for a parameterised topology.")
@PARAM
@click.option("--json", "as_json", is_flag=True, help="Print the expanded topology as JSON.")
def show(topology_file: Path | None, cohorts: int | None, params: tuple[str, ...], as_json: bool) -> None:
    """Print a topology's hosts, addresses, switch ports and DPIDs (no root needed)."""
    topology = _load(topology_file, cohorts, params)
    if as_json:
        echo_json(topology.to_dict())
        return
    click.echo(f"topology {topology.name} {topology.parameters} from {topology.source}")
    click.echo(f"{'host':<10} {'role':<12} {'ip':<13} switch:port  cpus")
    for h in topology.hosts:
        click.echo(f"{h.name:<10} {h.role:<12} {h.ip:<13} {h.switch}:{h.port:<4} {h.cpus or '-'}")
    for s in topology.switches:
        ports = ", ".join(f"{port}->{peer}" for port, peer in topology.links_of(s.name))
        click.echo(f"switch {s.name:<10} dpid {s.dpid_hex} ({s.onos_id})  {ports}")
    for link in topology.links:
        delay = f", {link.delay_ms:g} ms" if link.delay_ms else ""
        click.echo(f"link {link.a}:{link.port_a} <-> {link.b}:{link.port_b}  {link.bandwidth_mbit or '-'} Mbit/s{delay}")


@topo.command()
@click.argument("cohorts", required=False, type=click.IntRange(1, 89))
@TOPOLOGY
@PARAM
@click.option("--backend", type=click.Choice(BACKENDS), default="mininet", show_default=True, help="Builder that realises the topology.")
@click.option("--controller", metavar="onos|HOST:PORT",
              help="OpenFlow 1.3 controller. 'onos': activate onos.apps (openflow, fwd) over REST and connect the "
              "switches to onos.openflow. Default: none, the switches learn on their own.")
@click.option("--detach", is_flag=True, help="Keep the network running in the background and return once it is up.")
@pass_config
def up(
    cfg: Config, cohorts: int | None, topology_file: Path | None, params: tuple[str, ...], backend: str,
    controller: str | None, detach: bool,
) -> None:
    """Build the network for COHORTS cohorts and start the MLFOs and agents inside it.

    Stays in the foreground until Ctrl-C (then tears everything down), or with --detach runs in
    the background until `mlfo topo down`. The campus MLFO's intent port is published on
    loopback (prototype: 8000 -> 8001), so `mlfo intent send FILE --mlfo 127.0.0.1:8001` works.
    Everything made is recorded in paths.state_dir/network.json.
    """
    from mlfo_toolkit.net.network import detach_network, serve_network

    topology = _load(topology_file, cohorts, params)
    if detach:
        argv = [a for a in sys.argv[1:] if a != "--detach"]
        state = detach_network(argv, cfg, _progress)
        _ready(state)
        return
    serve_network(cfg, topology, backend=backend, controller=controller, progress=_progress, on_ready=_ready)


def _ready(state: NetworkState) -> None:
    click.echo(f"network {state.topology} is up: {len(state.hosts)} hosts, {len(state.bridges)} switches", err=True)
    for inner, outer in state.published.items():
        click.echo(f"  {inner} published on {outer}", err=True)
    for warning in state.warnings:
        click.secho(f"  warning: {warning}", fg="yellow", err=True)
    click.echo("  stop it with Ctrl-C (foreground) or `mlfo topo down`", err=True)


@topo.command()
@pass_config
def down(cfg: Config) -> None:
    """Remove exactly what `topo up` recorded: processes, hosts, bridges, interfaces, cgroups.

    Works also after `topo up` was killed with SIGKILL. Never a broad kill, never Mininet's
    global cleanup.
    """
    from mlfo_toolkit.net.network import network_down

    result = network_down(cfg)
    click.echo(f"network removed (by {result['stopped_by']})", err=True)


@topo.command()
@click.option("--json", "as_json", is_flag=True)
@pass_config
def status(cfg: Config, as_json: bool) -> None:
    """Show the running network: hosts, mlfo processes, published ports, warnings."""
    from mlfo_toolkit.net.network import network_status

    info = network_status(cfg)
    if as_json:
        echo_json(info)
        return
    owner = "running" if info["owner"]["alive"] else "gone (use `mlfo topo down`)"
    click.echo(f"network {info['topology']} {info['parameters']}: {info['phase']}, owner {info['owner']['pid']} {owner}")
    dead = [h["name"] for h in info["hosts"] if not h["alive"]]
    click.echo(f"hosts: {len(info['hosts'])}" + (f" ({len(dead)} gone: {', '.join(dead)})" if dead else ", all alive"))
    for p in info["processes"]:
        click.echo(f"  {p['name']:<16} {p['host'] or '(machine)':<10} pid {p['pid']:<8} {'alive' if p['alive'] else 'DEAD'}")
    for inner, outer in info["published"].items():
        click.echo(f"published {inner} on {outer}")
    for host, cpus in info["cpu_limits"].items():
        click.echo(f"cpu limit {host}: {cpus if cpus else 'none'}")
    for warning in info["warnings"]:
        click.echo(f"warning: {warning}")


@topo.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_config
def exec_(cfg: Config, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside NODE's network namespace (like `docker exec` on the prototype's nodes).

    Example: mlfo topo exec fed.1 -- ip -br addr
    """
    from mlfo_toolkit.net.network import host_exec

    sys.exit(host_exec(cfg, node, list(command)))


@topo.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"pairs", "loss_percent", "failed": [[src, dst], ...]}.')
@pass_config
def ping(cfg: Config, as_json: bool) -> None:
    """Every host pings every other host (the prototype's pingtest.sh, in parallel)."""
    from mlfo_toolkit.net.network import ping_mesh

    result = ping_mesh(cfg)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"{result['pairs']} pairs, {result['loss_percent']}% loss, {result['seconds']} s")
        for src, dst in result["failed"]:
            click.echo(f"  {src} -> {dst} failed")
    if result["failed"]:
        sys.exit(5)
