"""`mlfo serve`: run a campus or cloud MLFO in the foreground."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import pass_config

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.command()
@click.option("--role", type=click.Choice(["campus", "cloud"]), required=True, help="campus: user intents (POST /receive); cloud: Mo-Mo, allocates FL servers.")
@click.option("--host", help="Bind address (default: mlfo.host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: mlfo.port for campus, mlfo.momo_port for cloud).")
@pass_config
def serve(cfg: Config, role: str, host: str | None, port: int | None) -> None:
    """Run an MLFO until Ctrl-C or SIGTERM.

    \b
    campus: POST /receive (multipart: file=intent.yaml + ipstart, cohortsize, sameserver,
            avgalgo, fracfit, minfit, minav, numround), GET /deployments[/ID]
    cloud:  POST /momo/deploy, POST /momo/release/ID, GET /momo/allocations
    Deployments persist in paths.state_dir; with api.token set every call needs
    'Authorization: Bearer TOKEN'.
    """
    from mlfo_toolkit import api

    port_key = "mlfo.port" if role == "campus" else "mlfo.momo_port"
    api.serve_mlfo(cfg.with_overrides({"mlfo.host": host, port_key: port}), role)
