"""`mlfo config show`: the effective configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.group()
def config() -> None:
    """Inspect the configuration shared by every command."""


@config.command("show")
@json_option("Print JSON instead of YAML.")
@pass_config
def show(cfg: Config, as_json: bool) -> None:
    """Print the effective config (defaults < mlfo.yaml < MLFO_* environment); secrets masked.

    Any key can be set in mlfo.yaml (`mlfo: {port: 8001}`) or in the environment
    (`MLFO_MLFO__PORT=8001`, `MLFO_API__TOKEN=...`).
    """
    if as_json:
        echo_json(cfg.redacted())
    else:
        import yaml

        click.echo(yaml.safe_dump(cfg.redacted(), sort_keys=False).rstrip())
