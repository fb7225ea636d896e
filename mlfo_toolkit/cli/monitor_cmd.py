"""`mlfo monitor config|up|down` and `mlfo exporter`: Prometheus, Grafana, the socket exporter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.group()
def monitor() -> None:
    """Prometheus scraping every mlfo process and exporter, Grafana with mlfo's dashboard."""


@monitor.command("config")
@click.option("--topology", "topology_file", type=click.Path(dir_okay=False, path_type=Path), help="Targets from this topology (default: the running network, else loopback targets).")
@click.option("--cohorts", type=click.IntRange(1, 89), help="Cohorts of a parameterised topology.")
@click.option("--loopback", is_flag=True, help="Loopback targets (what `mlfo demo` writes), even if a network runs.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@json_option('Print {"config": TEXT, "targets": "loopback"|TOPOLOGY, "written": PATH|null}.')
@pass_config
def config_(cfg: Config, topology_file: Path | None, cohorts: int | None, loopback: bool, output: Path | None, as_json: bool) -> None:
    """Write prometheus.yml: every host's mlfo process and exporters, labelled with role and cohort."""
    from mlfo_toolkit import api

    result = api.monitor_config(cfg, topology=topology_file, cohorts=cohorts, loopback=loopback, output=output)
    if as_json:
        echo_json(result.to_dict())
    elif output:
        click.echo(f"wrote {output} ({result.targets} targets)", err=True)
    else:
        click.echo(result.config, nl=False)


@monitor.command()
@json_option()
@pass_config
def up(cfg: Config, as_json: bool) -> None:
    """Start Prometheus (inside the network's prometheus host, published on loopback; or on loopback for
    `mlfo demo`), node_exporter, and Grafana in Docker when an engine and the image are here."""
    from mlfo_toolkit import api

    result = api.monitor_up(cfg).to_dict()
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
@json_option('Print {"stopped": [...]}.')
@pass_config
def down(cfg: Config, as_json: bool) -> None:
    """Stop what `monitor up` started (Prometheus keeps its data under paths.state_dir)."""
    from mlfo_toolkit import api

    result = api.monitor_down(cfg)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(f"stopped: {', '.join(result.processes) or 'nothing was running'}")


@click.command()
@click.option("--app", default="background", show_default=True, help="Label of the app whose flows are exported.")
@click.option("--match-port", type=click.IntRange(1, 65535), default=5201, show_default=True, help="Export TCP flows to this port (iperf3: 5201).")
@click.option("--host", help="Bind address (default: agent.host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: monitor.app_exporter_port, 9200).")
@pass_config
def exporter(cfg: Config, app: str, match_port: int, host: str | None, port: int | None) -> None:
    """Serve /metrics with TCP RTT, cwnd and bytes of an app's flows (the prototype's ss exporter)."""
    from mlfo_toolkit import api

    api.serve_exporter(cfg, app, match_port, host or cfg.agent.host, cfg.monitor.app_exporter_port if port is None else port)
