"""`mlfo init`: the prototype's init.sh on the running network."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config
from mlfo_toolkit.errors import ExitCode

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.command()
@click.option("--cpus", type=click.FloatRange(min=0.01), help="CPU cores for each FL server (default: the topology's `cpus`, prototype 2).")
@click.option("--clients", is_flag=True, help="Limit the FL clients' CPU too.")
@click.option("--bg-rate", default="20M", show_default=True, help="Background traffic app client -> app server (iperf3 -b; 0 = none).")
@click.option("--bg-pattern", type=click.Choice(["constant", "step", "sine", "poisson"]), default="constant", show_default=True,
              help="How the background rate varies: step (on for half a period, off for half), sine (between 0 and the "
              "rate), poisson (on/off spells of exponential length, half a period each on average).")
@click.option("--bg-period", type=click.FloatRange(min=2, max=86400), default=30.0, show_default=True,
              help="The pattern's period in seconds.")
@json_option()
@pass_config
def init(cfg: Config, cpus: float | None, clients: bool, bg_rate: str, bg_pattern: str, bg_period: float, as_json: bool) -> None:
    """Set CPU limits, check the FL servers answer the cloud MLFO, start background traffic.

    Exit code 5 if an FL server cannot be reached from the cloud MLFO host.
    """
    from mlfo_toolkit import api

    result = api.init(cfg, cpus=cpus, clients=clients, bg_rate=bg_rate, bg_pattern=bg_pattern, bg_period=bg_period)
    if as_json:
        echo_json(result.to_dict())
    else:
        for host, limit in result.cpu_limits.items():
            click.echo(f"cpu limit {host}: {limit if limit else 'none'}")
        for host, ok in result.reachable.items():
            click.echo(f"{host} {'reachable' if ok else 'UNREACHABLE'} from the cloud MLFO")
        bg = result.background
        pattern = f" ({bg['pattern']}, period {bg['period_s']:g} s)" if bg.get("pattern") else ""
        click.echo(f"background traffic: {bg['rate']}{pattern} from {bg['from']} to {bg['to']}" if bg["rate"] else "background traffic: none")
    if not all(result.reachable.values()):
        raise SystemExit(int(ExitCode.UNREACHABLE))
