"""`mlfo report RUN_DIR`: plots and a manifest a paper can use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.command()
@click.argument("run_dir", metavar="RUN_OR_EXPERIMENT_DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["png", "html"]), default="png", show_default=True, help="html adds index.html with the plots and a table.")
@click.option("--prometheus", metavar="URL", help="Prometheus to add traffic over time (default: http://127.0.0.1:monitor.prometheus_port if it answers).")
@click.option("--topology", "topology_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Topology file to hash into the manifest.")
@json_option()
@pass_config
def report(cfg: Config, run_dir: Path, fmt: str, prometheus: str | None, topology_file: Path | None, as_json: bool) -> None:
    """Write RUN_DIR/report/: plots and a manifest of a run, or the comparison of an experiment's runs.

    \b
    A run folder (mlfo demo, intent send --wait): accuracy and loss per round per cohort,
    orchestration time, round anatomy, traffic (PNG), and manifest.json (mlfo, Flower and Python
    versions, seeds, input hashes).
    An experiment folder (mlfo run): every run side by side, events marked, a table per sweep
    point, CSV/JSON of every figure and index.html.
    """
    from mlfo_toolkit import api

    result = api.report(run_dir, cfg, fmt=fmt, prometheus=prometheus, topology=topology_file)
    if as_json:
        echo_json(result.to_dict())
        return
    for plot in result.plots:
        click.echo(f"plot: {plot}")
    click.echo(f"manifest: {result.manifest}")
    if result.html:
        click.echo(f"page: {result.html}")
