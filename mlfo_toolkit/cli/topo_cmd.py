"""`mlfo topo show|up|down|status|exec|ping`: the emulated network."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config, print_table
from mlfo_toolkit.cli._progress import DeployProgress
from mlfo_toolkit.errors import ExitCode
from mlfo_toolkit.net import BACKENDS

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


TOPOLOGY = click.option(
    "--topology", "topology_file", type=click.Path(dir_okay=False, path_type=Path),
    help="Topology YAML (default: topologies/prototype.yaml; a bare name like 'small' looks in topologies/).",
)

PARAM = click.option(
    "--param", "params", multiple=True, metavar="KEY=VALUE",
    help="Set a topology parameter (integer), e.g. --param publish_port=8101. Repeatable.",
)


def _params(params: tuple[str, ...]) -> dict[str, int]:
    parameters: dict[str, int] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise click.BadParameter(f"'{item}' is not KEY=INTEGER", param_hint="--param")
        parameters[key.strip()] = int(value)
    return parameters


@click.group()
def topo() -> None:
    """Build and use an emulated network (Mininet + Open vSwitch; needs root)."""


@topo.command()
@click.argument("topology_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cohorts", type=click.IntRange(1, 89), help="Number of cohorts (FL servers) for a parameterised topology.")
@PARAM
@json_option("Print the expanded topology as JSON.")
def show(topology_file: Path | None, cohorts: int | None, params: tuple[str, ...], as_json: bool) -> None:
    """Print a topology's hosts, addresses, switch ports and DPIDs (no root needed)."""
    from mlfo_toolkit import api

    topology = api.topo_show(topology_file, cohorts=cohorts, params=_params(params))
    if as_json:
        echo_json(topology.to_dict())
        return
    click.echo(f"topology {topology.name} {topology.parameters} from {topology.source}")
    print_table(["host", "role", "ip", "switch:port", "cpus"],
                [(h.name, h.role, h.ip, f"{h.switch}:{h.port}", h.cpus or "-") for h in topology.hosts])
    print_table(["switch", "dpid", "onos id", "ports"],
                [(s.name, s.dpid_hex, s.onos_id, ", ".join(f"{port}->{peer}" for port, peer in topology.links_of(s.name)))
                 for s in topology.switches])
    print_table(["link", "Mbit/s", "delay ms", "kind"],
                [(f"{link.a}:{link.port_a} <-> {link.b}:{link.port_b}", link.bandwidth_mbit or "-", f"{link.delay_ms:g}" if link.delay_ms else "-",
                  "patch" if link.patch else "veth") for link in topology.links])


@topo.command()
@click.argument("cohorts", required=False, type=click.IntRange(1, 89))
@TOPOLOGY
@PARAM
@click.option("--backend", type=click.Choice(BACKENDS), default="mininet", show_default=True,
              help="mininet: hosts are network namespaces; containernet: FL and MLFO hosts are Docker containers "
              "(build the image once with `mlfo image build`).")
@click.option("--controller", metavar="faucet|onos|HOST:PORT",
              help="OpenFlow 1.3 controller. 'faucet': start Faucet on loopback for this network (configured from the "
              "topology; `make faucet` installs it) and let it forward every packet; 'onos': activate onos.apps "
              "(openflow, fwd) over REST and connect the switches to onos.openflow. Default: none, the switches "
              "learn on their own. `mlfo meter` then acts through the same controller.")
@click.option("--detach", is_flag=True, help="Keep the network running in the background and return once it is up.")
@json_option("With --detach: print the network's status as JSON once it is up.")
@pass_config
def up(
    cfg: Config, cohorts: int | None, topology_file: Path | None, params: tuple[str, ...], backend: str,
    controller: str | None, detach: bool, as_json: bool,
) -> None:
    """Build the network for COHORTS cohorts and start the MLFOs and agents inside it.

    Stays in the foreground until Ctrl-C (then tears everything down), or with --detach runs in
    the background until `mlfo topo down`. The campus MLFO's intent port is published on
    loopback (prototype: 8000 -> 8001), so `mlfo intent send FILE --mlfo 127.0.0.1:8001` works.
    Everything made is recorded in paths.state_dir/network.json.
    """
    from mlfo_toolkit import api

    progress = DeployProgress(enabled=True)
    result = api.topo_up(cohorts, cfg, topology=topology_file, params=_params(params), backend=backend,
                         controller=controller, detach=detach, progress=progress, on_ready=_ready)
    if detach:
        if as_json:
            echo_json(result.to_dict())
        else:
            _ready_summary(result.to_dict())
    elif as_json:
        echo_json(result.to_dict())


def _ready(state: Any) -> None:
    _ready_summary({"topology": state.topology, "hosts": state.hosts, "bridges": state.bridges,
                    "published": state.published, "warnings": state.warnings})


def _ready_summary(info: dict[str, Any]) -> None:
    click.echo(f"network {info['topology']} is up: {len(info['hosts'])} hosts, {len(info['bridges'])} switches", err=True)
    for inner, outer in info["published"].items():
        click.echo(f"  {inner} published on {outer}", err=True)
    for warning in info["warnings"]:
        click.secho(f"  warning: {warning}", fg="yellow", err=True)
    click.echo("  stop it with Ctrl-C (foreground) or `mlfo topo down`", err=True)


@topo.command()
@json_option()
@pass_config
def down(cfg: Config, as_json: bool) -> None:
    """Remove exactly what `topo up` recorded: processes, hosts, bridges, interfaces, cgroups.

    Works also after `topo up` was killed with SIGKILL. Never a broad kill, never Mininet's
    global cleanup.
    """
    from mlfo_toolkit import api

    result = api.topo_down(cfg)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(f"network removed (by {result.to_dict()['stopped_by']})", err=True)


@topo.command()
@json_option()
@pass_config
def status(cfg: Config, as_json: bool) -> None:
    """Show the running network: hosts, mlfo processes, published ports, warnings.

    Exit code 0 with no network running ("no network"), as `docker ps` does with no container.
    """
    from mlfo_toolkit import api

    info = api.topo_status(cfg).to_dict()
    if as_json:
        echo_json(info)
        return
    if info["phase"] == "none":
        click.echo("no network is running (start one with `mlfo topo up`)")
        return
    owner = "running" if info["owner"]["alive"] else "gone (use `mlfo topo down`)"
    click.echo(f"network {info['topology']} {info['parameters']}: {info['phase']}, owner {info['owner']['pid']} {owner}")
    dead = [h["name"] for h in info["hosts"] if not h["alive"]]
    click.echo(f"hosts: {len(info['hosts'])}" + (f" ({len(dead)} gone: {', '.join(dead)})" if dead else ", all alive"))
    print_table(["process", "host", "pid", "state"],
                [(p["name"], p["host"] or "(machine)", p["pid"], "alive" if p["alive"] else "DEAD") for p in info["processes"]],
                right=["pid"])
    for inner, outer in info["published"].items():
        click.echo(f"published {inner} on {outer}")
    if info.get("containers"):
        print_table(["container", "host", "state", "cpus", "memory MB"],
                    [(c["container"], c["host"], c["state"], c.get("cpus") or "no limit", c.get("memory_mb", "-")) for c in info["containers"]],
                    right=["memory MB"])
    for host, cpus in info["cpu_limits"].items():
        click.echo(f"cpu limit {host}: {cpus if cpus else 'none'}")
    for host, p in info.get("profiles", {}).items():
        memory = f"{p['memory_mb']:g} MB" if p["memory_mb"] else "no memory limit"
        click.echo(f"profile {host}: {p['profile']} ({p['cpus']:g} cores, {memory}, {p['link_mbit']:g} Mbit/s)")
    for warning in info["warnings"]:
        click.echo(f"warning: {warning}")


@topo.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@json_option('Capture the output and print {"node", "exit_code", "stdout", "stderr"}.')
@pass_config
def exec_(cfg: Config, node: str, command: tuple[str, ...], as_json: bool) -> None:
    """Run COMMAND inside NODE's network namespace (like `docker exec` on the prototype's nodes).

    Exits with COMMAND's exit code. Example: mlfo topo exec fed.1 -- ip -br addr
    """
    from mlfo_toolkit import api

    if as_json:
        result = api.topo_exec(node, list(command), cfg, capture=True)
        echo_json(result.to_dict())
        sys.exit(result.exit_code)
    sys.exit(api.topo_exec(node, list(command), cfg).exit_code)


@topo.command()
@click.argument("a")
@click.argument("b")
@click.argument("trace", required=False)
@click.option("--loop", is_flag=True, help="Start the trace again when it ends (until stopped or `topo down`).")
@click.option("--stop", is_flag=True, help="Stop the trace on the link A-B and give it its configured rate back.")
@json_option("Print what was started (replayer PID, rows, duration, its log of applied rows) or stopped.")
@pass_config
def trace(cfg: Config, a: str, b: str, trace: str | None, loop: bool, stop: bool, as_json: bool) -> None:
    """Make the link between A and B follow TRACE: a CSV of seconds,rate_mbit[,delay_ms,loss_percent].

    TRACE is a path or a shipped trace: leo-pass (a 240 s LEO satellite pass, 29-75 Mbit/s) or
    cellular-drive (300 s of LTE cell edge, 1-80 Mbit/s); topologies/traces/make_traces.py says how
    they were made. A link joins a host and its switch or two switches (`mlfo topo show`). The
    replayer runs in the background, recorded with the network, and writes each row it applied to
    paths.state_dir/logs/trace-A-B.jsonl. Delay and loss need netem, which some kernels lack: then
    only the rate follows the trace, and the result says so.

    Example: mlfo topo trace swCampus1 swEdge0 leo-pass --loop
    """
    from mlfo_toolkit import api

    if stop:
        result = api.topo_trace_stop(cfg, a, b)
        if as_json:
            echo_json(result.to_dict())
        else:
            click.echo(f"stopped: {', '.join(result.stopped) or 'no trace ran on ' + a + '-' + b}")
        return
    if not trace:
        raise click.UsageError("give a TRACE (a CSV path, leo-pass or cellular-drive), or --stop")
    started = api.topo_trace(a, b, trace, cfg, loop=loop).to_dict()
    if as_json:
        echo_json(started)
        return
    click.echo(f"{started['link']} follows {started['trace']}: {started['rows']} rows over {started['duration_s']:g} s"
               f"{' (looped)' if loop else ''}; delay and loss: {started['delay_and_loss']}")
    click.echo(f"  applied rows: {started['log']}; stop with `mlfo topo trace {a} {b} --stop`")


@topo.command()
@json_option('Print {"pairs", "loss_percent", "failed": [[src, dst], ...]}.')
@pass_config
def ping(cfg: Config, as_json: bool) -> None:
    """Every host pings every other host (the prototype's pingtest.sh, in parallel). Exit code 5 if a pair failed."""
    from mlfo_toolkit import api

    result = api.topo_ping(cfg)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(f"{result.pairs} pairs, {result.loss_percent}% loss, {result.seconds} s")
        for src, dst in result.failed:
            click.echo(f"  {src} -> {dst} failed")
    if result.failed:
        sys.exit(int(ExitCode.UNREACHABLE))
