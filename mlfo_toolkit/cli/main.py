"""The root `mlfo` group: builds the one config, registers every command, maps errors to exit codes.

Command modules import only Click and `_common` at load time and call `mlfo_toolkit.api` inside
their functions, so `mlfo --help` does not import Flower, NumPy or FastAPI.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from mlfo_toolkit import __version__
from mlfo_toolkit.cli._common import wants_json
from mlfo_toolkit.errors import EXIT_CODE_HELP, ExitCode, MlfoError, StorageError
from mlfo_toolkit.util.signals import terminate_as_interrupt


def _fail(ctx: click.Context, code: ExitCode, message: str, *, hint: str | None = None, field: str | None = None,
          kind: str = "Error") -> None:
    """Report an error on stderr (or as JSON on stdout with --json) and exit with `code`."""
    if wants_json(ctx):
        body: dict[str, Any] = {"error": kind, "message": message, "field": field, "exit_code": int(code)}
        if hint:
            body["hint"] = hint
        click.echo(json.dumps(body))
    else:
        click.secho(f"Error: {message}", fg="red", err=True)
        if hint:
            click.echo(f"Hint: {hint}", err=True)
    ctx.exit(int(code))


class MlfoGroup(click.Group):
    """A group whose commands turn MlfoError into a message with a hint and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlfoError as err:
            _fail(ctx, err.exit_code, err.message, hint=err.hint, field=getattr(err, "field", None), kind=type(err).__name__)
        except click.UsageError as err:
            if not wants_json(ctx):
                raise
            _fail(ctx, ExitCode.USAGE, err.format_message(), kind="UsageError")
        except KeyboardInterrupt:
            _fail(ctx, ExitCode.INTERRUPTED, "interrupted; everything started was stopped", kind="Interrupted")
        except OSError as err:
            if err.filename is None:
                raise  # not about a file: a bug, with its traceback
            # A full or read-only disk under a run folder, a report, the state: say which file, exit 13.
            problem = StorageError.from_os_error(err, "write" if err.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT) else "use")
            _fail(ctx, problem.exit_code, problem.message, hint=problem.hint, kind="StorageError")


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
    `mlfo config show` prints the result. Every command takes --json for scripts (errors too).
    """
    from mlfo_toolkit.config import load_config

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        # Connection retries are part of waiting for a service; the final error says what failed.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        ctx.obj = load_config(config_path)
    except MlfoError as err:
        _fail(ctx, err.exit_code, err.message, hint=err.hint, kind=type(err).__name__)


def _register() -> None:
    from mlfo_toolkit.cli import (
        agent_cmd,
        config_cmd,
        data_cmd,
        demo_cmd,
        image_cmd,
        info_cmd,
        init_cmd,
        intent_cmd,
        meter_cmd,
        monitor_cmd,
        report_cmd,
        run_cmd,
        serve_cmd,
        topo_cmd,
    )

    for command in (config_cmd.config, intent_cmd.intent, serve_cmd.serve, agent_cmd.agent, demo_cmd.demo, data_cmd.data, topo_cmd.topo, image_cmd.image,
                    init_cmd.init, run_cmd.run, meter_cmd.meter, monitor_cmd.monitor, monitor_cmd.exporter, report_cmd.report,
                    info_cmd.exit_codes, info_cmd.api_schema, info_cmd.completion):
        cli.add_command(command)


_register()


def main() -> None:
    # SIGTERM ends a command as Ctrl-C does: its finally blocks stop what it started (no orphans).
    with terminate_as_interrupt():
        cli(prog_name="mlfo")


__all__ = ["EXIT_CODE_HELP", "cli", "main"]
