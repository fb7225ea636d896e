"""The root `mlfo` group: builds the one config, registers every command, maps errors to exit codes."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from mlfo_toolkit import __version__
from mlfo_toolkit.config import Config, load_config
from mlfo_toolkit.errors import EXIT_CODE_HELP, ExitCode, MlfoError

pass_config = click.make_pass_decorator(Config)


class MlfoGroup(click.Group):
    """A group whose commands turn MlfoError into a message with a hint and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlfoError as err:
            click.secho(f"Error: {err.message}", fg="red", err=True)
            if err.hint:
                click.echo(f"Hint: {err.hint}", err=True)
            ctx.exit(int(err.exit_code))
        except KeyboardInterrupt:
            click.echo("Interrupted; everything started was stopped.", err=True)
            ctx.exit(int(ExitCode.INTERRUPTED))


@click.group(cls=MlfoGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mlfo")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MLFO_CONFIG",
    help="Config file (default: ./mlfo.yaml if present). MLFO_SECTION__KEY variables override it.",
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int) -> None:
    """mlfo: orchestrate federated learning across emulated 5G/edge networks.

    \b
    Start here:
      mlfo demo                      the whole chain on loopback, no root
      mlfo intent validate FILE      check an intent
      mlfo intent plan cohorts.yaml  who gets which server and clients
      mlfo serve --role campus       run an MLFO
      mlfo agent                     run a node agent
      mlfo exit-codes                what each exit code means

    Settings come from defaults < mlfo.yaml (--config) < MLFO_* environment < flags;
    `mlfo config show` prints the result.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        ctx.obj = load_config(config_path)
    except MlfoError as err:
        click.secho(f"Error: {err.message}", fg="red", err=True)
        if err.hint:
            click.echo(f"Hint: {err.hint}", err=True)
        ctx.exit(int(err.exit_code))


@cli.command("exit-codes")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def exit_codes(as_json: bool) -> None:
    """List mlfo's exit codes and what each means."""
    if as_json:
        click.echo(json.dumps({code.name.lower(): {"code": int(code), "help": EXIT_CODE_HELP[code]} for code in ExitCode}))
        return
    for code in ExitCode:
        click.echo(f"{int(code):>4}  {code.name.lower():<20} {EXIT_CODE_HELP[code]}")


def echo_json(data: Any) -> None:
    """One JSON document on stdout, for scripts."""
    click.echo(json.dumps(data, indent=2, default=str))


def _register() -> None:
    from mlfo_toolkit.cli import (
        agent_cmd,
        config_cmd,
        demo_cmd,
        init_cmd,
        intent_cmd,
        meter_cmd,
        monitor_cmd,
        report_cmd,
        serve_cmd,
        topo_cmd,
    )

    cli.add_command(config_cmd.config)
    cli.add_command(intent_cmd.intent)
    cli.add_command(serve_cmd.serve)
    cli.add_command(agent_cmd.agent)
    cli.add_command(demo_cmd.demo)
    cli.add_command(topo_cmd.topo)
    cli.add_command(init_cmd.init)
    cli.add_command(meter_cmd.meter)
    cli.add_command(monitor_cmd.monitor)
    cli.add_command(monitor_cmd.exporter)
    cli.add_command(report_cmd.report)


_register()


def _terminated(signum: int, frame: Any) -> None:
    # SIGTERM ends a command as Ctrl-C does: its finally blocks stop what it started (no orphans).
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    cli(prog_name="mlfo")
