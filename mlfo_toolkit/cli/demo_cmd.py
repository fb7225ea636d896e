"""`mlfo demo`: the embedded default run on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config
from mlfo_toolkit.cli._progress import DeployProgress

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.command()
@click.option("--cohorts", type=click.IntRange(1, 20), help="Number of cohorts (default: as in the cohort file, 2).")
@click.option("--clients", type=click.IntRange(1, 50), help="Clients per cohort (default: as in the cohort file, 5).")
@click.option("--rounds", type=click.IntRange(1, 1000), help="FL rounds per cohort (default: as in the cohort file, 5).")
@click.option("--cohort-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Cohort file to run (default: intents/cohorts.yaml).")
@click.option("--timeout", type=click.FloatRange(min=1), default=900, show_default=True, help="Seconds to wait for the FL runs.")
@click.option("--app", "app", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A Flower app's folder (pyproject.toml with [tool.flwr.app]) to train instead of mlfo's own model.")
@click.option("--aggregation", type=click.Choice(["flat", "hierarchical", "auto"]),
              help="hierarchical: the clients train under edge aggregators; only their aggregates reach the cohort's server. "
                   "auto: the MLFO measures each edge and aggregates where it pays.")
@click.option("--edges", type=click.IntRange(1, 50), help="Edge aggregators per cohort (hierarchical; default: one per 10 clients).")
@click.option("--local-rounds", type=click.IntRange(1, 100), help="The edges' rounds per global round (hierarchical; default 1).")
@json_option("Print one JSON object (cohorts, accuracy and loss per round, run_dir).")
@pass_config
def demo(cfg: Config, cohorts: int | None, clients: int | None, rounds: int | None, cohort_file: Path | None, timeout: float, app: Path | None,
         aggregation: str | None, edges: int | None, local_rounds: int | None, as_json: bool) -> None:
    """Run the whole chain on loopback, no root: intents in, trained Flower models out.

    Starts a cloud MLFO, a campus MLFO and one node agent per FL server and client (each on
    its own free loopback port), sends the example cohort file, shows each round's held-out
    accuracy, writes run.json and accuracy-loss.png to a folder under paths.runs_dir, and
    stops everything it started.

    With --aggregation hierarchical each cohort's clients are split into --edges groups; each
    group's first client host also runs an edge aggregator (an edge SuperLink and a relay to
    the cohort's server), which runs --local-rounds rounds with its clients per global round:

        mlfo demo --clients 6 --aggregation hierarchical --edges 2 --local-rounds 2
    """
    from mlfo_toolkit import api
    from mlfo_toolkit.cli.intent_cmd import print_rounds

    with DeployProgress(enabled=not as_json) as progress:
        result = api.demo(cfg, cohort_file=cohort_file, cohorts=cohorts, clients=clients, rounds=rounds,
                          timeout=timeout, progress=progress, app=app, aggregation=aggregation, edges=edges,
                          local_rounds=local_rounds)
    if as_json:
        echo_json(result.to_dict())
    else:
        print_rounds(result)
        click.echo(f"Took {result.wall_seconds:.1f} s. Run written to {result.run_dir} (run.json, accuracy-loss.png)")
    result.check()
