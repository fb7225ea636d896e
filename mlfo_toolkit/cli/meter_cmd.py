"""`mlfo meter set|show|clear|verify`: throttle a cohort with OpenFlow meters."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config

CONTROLLERS = ("ovs", "onos", "faucet")
DIRECTIONS = ("up", "down", "both")

PORT = click.option("--port", "cohort", type=click.IntRange(min=1), required=True, help="Cohort N: the clients of campus switch N (the prototype's IN_PORT N).")
RATE = click.option("--rate", default="100mbit", show_default=True, help="Meter rate: 100mbit, 10M, 500kbit, ...")
BURST = click.option("--burst", help="Burst size in bits (e.g. 1mbit; default: a fifth of a second of the rate).")
CONTROLLER = click.option("--controller", type=click.Choice(CONTROLLERS),
                          help="ovs: ovs-ofctl on the bridges; onos: ONOS REST (onos.url, onos.user, onos.password); "
                          "faucet: meters and ACLs in the network's Faucet configuration, reloaded. "
                          "Default: the controller the network was brought up with, else ovs.")


@click.group()
def meter() -> None:
    """Throttle cohorts with OpenFlow 1.3 meters on the running network."""


@meter.command("set")
@PORT
@RATE
@BURST
@click.option("--direction", type=click.Choice(DIRECTIONS), default="both", show_default=True,
              help="up: clients -> uplink on the campus switch; down: towards the clients on the edge switch.")
@CONTROLLER
@json_option()
@pass_config
def set_(cfg: Config, cohort: int, rate: str, burst: str | None, direction: str, controller: str | None, as_json: bool) -> None:
    """Meter cohort N; switches, DPIDs and ports come from the running topology.

    Running it again with another rate replaces the meter and its flows.
    """
    from mlfo_toolkit import api

    result = api.meter_set(cohort, rate, cfg, burst=burst, direction=direction, controller=controller).to_dict()
    if as_json:
        echo_json(result)
        return
    for record in result["installed"]:
        click.echo(f"cohort {cohort} {record['direction']}link: meter {record['meter_id']} on {record['switch']}, "
                   f"{record['rate_kbps'] / 1000:g} Mbit/s, {record['flows']} flows ({result['controller']})")


@meter.command()
@json_option()
@pass_config
def show(cfg: Config, as_json: bool) -> None:
    """List the meters mlfo set (and, for OVS, what the switches report)."""
    from mlfo_toolkit import api

    meters = api.meter_show(cfg).to_dict()
    if as_json:
        echo_json(meters)
        return
    if not meters:
        click.echo("no meters set by mlfo")
    for cohort, entry in meters.items():
        click.echo(f"cohort {cohort}: {entry['rate_kbps'] / 1000:g} Mbit/s {entry['direction']} via {entry['controller']}")
        for observed in entry["observed"]:
            for line in observed["meters"] + observed["flows"]:
                click.echo(f"  {observed['switch']}: {line}")


@meter.command()
@click.option("--port", "cohort", type=click.IntRange(min=1), help="Only cohort N (default: every meter mlfo set).")
@json_option('Print {"cleared": [N, ...]}.')
@pass_config
def clear(cfg: Config, cohort: int | None, as_json: bool) -> None:
    """Remove the meters and flows mlfo added, and nothing else."""
    from mlfo_toolkit import api

    cleared = api.meter_clear(cfg, cohort)
    if as_json:
        echo_json(cleared.to_dict())
    else:
        click.echo(f"cleared cohorts: {', '.join(map(str, cleared.cohorts)) or 'none'}")


@meter.command()
@PORT
@click.option("--rate", default="10mbit", show_default=True, help="Meter rate to verify.")
@BURST
@CONTROLLER
@click.option("--seconds", type=click.IntRange(1, 60), default=3, show_default=True, help="Length of each iperf3 measurement.")
@json_option('Print {"port", "rate_mbit", "unmetered_mbit", "metered_mbit", "other_cohort_mbit"}.')
@pass_config
def verify(cfg: Config, cohort: int, rate: str, burst: str | None, controller: str | None, seconds: int, as_json: bool) -> None:
    """Measure with iperf3: a client of cohort N to its FL server, unmetered then metered, and a
    client of another cohort while the meter is on. The meter stays set afterwards."""
    from mlfo_toolkit import api

    result = api.meter_verify(cohort, rate, cfg, burst=burst, controller=controller, seconds=seconds).to_dict()
    if as_json:
        echo_json(result)
        return
    click.echo(f"cohort {cohort} ({result['client']} -> {result['server']}): unmetered {result['unmetered_mbit']:.1f} Mbit/s, "
               f"metered at {result['rate_mbit']:g} Mbit/s: {result['metered_mbit']:.1f} Mbit/s")
    click.echo(f"other cohort ({result['other_client']}) meanwhile: {result['other_cohort_mbit']:.1f} Mbit/s")
