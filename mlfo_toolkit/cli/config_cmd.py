"""`mlfo config show`: the effective configuration."""

from __future__ import annotations

import click
import yaml

from mlfo_toolkit.cli.main import echo_json, pass_config
from mlfo_toolkit.config import Config


@click.group()
def config() -> None:
    """Inspect the configuration shared by every command."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@pass_config
def show(cfg: Config, as_json: bool) -> None:
    """Print the effective config (defaults < mlfo.yaml < MLFO_* environment); secrets masked.

    Any key can be set in mlfo.yaml (`mlfo: {port: 8001}`) or in the environment
    (`MLFO_MLFO__PORT=8001`, `MLFO_API__TOKEN=...`).
    """
    if as_json:
        echo_json(cfg.redacted())
    else:
        click.echo(yaml.safe_dump(cfg.redacted(), sort_keys=False).rstrip())
