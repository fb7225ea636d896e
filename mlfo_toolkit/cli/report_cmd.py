"""`mlfo report RUN_DIR`: plots and a manifest a paper can use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_OR_EXPERIMENT_DIR [EXPERIMENT_DIR ...]",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", default="png", show_default=True, metavar="FORMATS",
              help="Figure formats, a comma list of png, svg, pdf (vector figures for a paper: svg,pdf). index.html is always written.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (default: DIR/report; for several experiments ./report-compare).")
@click.option("--to", "trackers", multiple=True, type=click.Choice(["mlflow", "tensorboard"]),
              help="Also log the runs to an experiment tracker (tracking.mlflow_uri, or a store in the report folder; "
              "tracking.tensorboard_dir, or the report folder). Needs mlfo-toolkit[tracking].")
@click.option("--prometheus", metavar="URL", help="Prometheus to add traffic over time (default: http://127.0.0.1:monitor.prometheus_port if it answers).")
@click.option("--topology", "topology_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Topology file to hash into the manifest.")
@json_option()
@pass_config
def report(cfg: Config, run_dirs: tuple[Path, ...], fmt: str, output: Path | None, trackers: tuple[str, ...],
           prometheus: str | None, topology_file: Path | None, as_json: bool) -> None:
    """Write DIR/report/: figures, their data, a manifest and index.html, of a run or of an experiment's runs.

    \b
    A run folder (mlfo demo, intent send --wait): accuracy and loss per round per cohort,
    orchestration time, round anatomy, traffic, the data split, and manifest.json (mlfo, Flower and
    Python versions, seeds, input hashes).
    An experiment folder (mlfo run): every sweep point's mean and spread over its runs, events
    numbered with a table of them, a table per sweep point, CSV/JSON of every figure.
    Several experiment folders: the same figures with a line per experiment and point (before/after).

    \b
    mlfo report runs/experiments/non-iid --format png,svg,pdf
    mlfo report runs/experiments/non-iid --to mlflow --to tensorboard
    mlfo report before/ after/ -o compare/
    """
    from mlfo_toolkit import api

    result = api.report(list(run_dirs), cfg, fmt=fmt, prometheus=prometheus, topology=topology_file, output=output,
                        trackers=list(trackers))
    if as_json:
        echo_json(result.to_dict())
        return
    for plot in result.plots:
        click.echo(f"plot: {plot}")
    click.echo(f"manifest: {result.manifest}")
    if result.html:
        click.echo(f"page: {result.html}")
    for name, where in (result.to_dict().get("tracked") or {}).items():
        click.echo(f"{name}: {where}")
