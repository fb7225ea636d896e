"""`mlfo monitor config|up|down` and `mlfo exporter`: Prometheus, Grafana, the socket exporter."""

from __future__ import annotations

from pathlib import Path

import click

from mlfo_toolkit.cli.main import echo_json, pass_config
from mlfo_toolkit.config import Config


@click.group()
def monitor() -> None:
    """Prometheus scraping every mlfo process and exporter, Grafana with mlfo's dashboard."""


@monitor.command("config")
@click.option("--topology", "topology_file", type=click.Path(dir_okay=False, path_type=Path), help="Targets from this topology (default: the running network, else loopback targets).")
@click.option("--cohorts", type=click.IntRange(1, 89), help="Cohorts of a parameterised topology.")
@click.option("--loopback", is_flag=True, help="Loopback targets (what `mlfo demo` writes), even if a network runs.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@pass_config
def config_(cfg: Config, topology_file: Path | None, cohorts: int | None, loopback: bool, output: Path | None) -> None:
    """Write prometheus.yml: every host's mlfo process and exporters, labelled with role and cohort."""
    from mlfo_toolkit.monitoring.prometheus import check_config, render_config, running_topology
    from mlfo_toolkit.net.topology import load_topology

    topology = None
    if topology_file or cohorts:
        topology = load_topology(topology_file, {"cohorts": cohorts} if cohorts else None)
    elif not loopback and (running := running_topology(cfg)):
        topology = running[1]
    text = render_config(cfg, topology)
    if output:
        output.write_text(text)
        check_config(output)
        click.echo(f"wrote {output} ({'topology ' + topology.name if topology else 'loopback'} targets)", err=True)
    else:
        click.echo(text, nl=False)


@monitor.command()
@click.option("--json", "as_json", is_flag=True)
@pass_config
def up(cfg: Config, as_json: bool) -> None:
    """Start Prometheus (inside the network's prometheus host, published on loopback; or on loopback for
    `mlfo demo`), node_exporter, and Grafana in Docker when an engine and the image are here."""
    from mlfo_toolkit.monitoring.prometheus import monitor_up

    result = monitor_up(cfg)
    if as_json:
        echo_json(result)
        return
    click.echo(f"Prometheus ({result['mode']}): {result['prometheus']}  [{', '.join(result['processes'])}]")
    grafana = result["grafana"]
    if grafana.get("started"):
        click.echo(f"Grafana: {grafana['url']} (container {grafana['container']}, dashboard provisioned)")
    else:
        click.secho(f"Grafana: not started: {grafana['why']}", fg="yellow")


@monitor.command()
@pass_config
def down(cfg: Config) -> None:
    """Stop what `monitor up` started (Prometheus keeps its data under paths.state_dir)."""
    from mlfo_toolkit.monitoring.prometheus import monitor_down

    stopped = monitor_down(cfg)["stopped"]
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@click.command()
@click.option("--app", default="background", show_default=True, help="Label of the app whose flows are exported.")
@click.option("--match-port", type=click.IntRange(1, 65535), default=5201, show_default=True, help="Export TCP flows to this port (iperf3: 5201).")
@click.option("--host", help="Bind address (default: agent.host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: monitor.app_exporter_port, 9200).")
@pass_config
def exporter(cfg: Config, app: str, match_port: int, host: str | None, port: int | None) -> None:
    """Serve /metrics with TCP RTT, cwnd and bytes of an app's flows (the prototype's ss exporter)."""
    from mlfo_toolkit.http.service import run_exporter

    run_exporter(cfg, app, match_port, host or cfg.agent.host, cfg.monitor.app_exporter_port if port is None else port)
