"""`mlfo run EXPERIMENT`: an experiment file, all its runs, events tied to FL rounds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config, print_table
from mlfo_toolkit.cli._progress import DeployProgress

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.command()
@click.argument("experiment", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--track", multiple=True, type=click.Choice(["mlflow", "tensorboard"]),
              help="Log each run, as it finishes, to MLflow and/or TensorBoard (see `mlfo report --to`).")
@click.option("--dry-run", is_flag=True, help="Check the file and print the runs, events and expected duration; start nothing.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Experiment folder (default: paths.runs_dir/experiments/NAME). Finished runs in it are skipped.")
@json_option()
@pass_config
def run(cfg: Config, experiment: Path, track: tuple[str, ...], dry_run: bool, output: Path | None, as_json: bool) -> None:
    """Run an experiment file: cohorts, a timeline of events fired at FL rounds, repetitions, sweeps.

    \b
    Example (experiments/kill-a-client.yaml):
      mlfo run experiments/kill-a-client.yaml --dry-run
      mlfo run experiments/kill-a-client.yaml
      mlfo report runs/experiments/kill-a-client

    Each run gets a folder with run.json and its events (when each fired, the round and phase it
    fell into, what it did). Ctrl-C stops what was started and keeps what was measured; running
    the same command again resumes. Exit code 4 names the field and line of a bad file, 7 if a
    run's deployment failed.
    """
    from mlfo_toolkit import api

    if dry_run:
        plan = api.plan_experiment(experiment, cfg)
        if as_json:
            echo_json(plan.to_dict())
            return
        click.echo(f"experiment {plan.experiment} ({plan.backend}): {len(plan.runs)} runs, about {plan.expected_seconds} s")
        print_table(["run", "seed", "cohorts"], [(r["key"], r["seed"], "; ".join(
            f"{c['name']} {c['clients']} clients x {c['rounds']} rounds {c['strategy']}" + (f", policy {c['policy']}" if c.get('policy') else "") for c in r["cohorts"])) for r in plan.runs])
        for event in plan.events:
            click.echo(f"event: {event['kind']} {event['what']} at {event['at']}")
        for run in plan.runs:
            if run.get("absences") is not None:
                spells = ", ".join(f"part {a['part']} rounds {a['away']}-{a['back'] - 1 if a['back'] else 'end'}" for a in run["absences"])
                click.echo(f"away in {run['key']}: {spells or 'nobody'}")
        return

    def progress(event: str, data: dict[str, object]) -> None:
        if event == "run":
            click.echo(f"[{data['run']}] {data['state']}", err=True)
        else:
            lines(event, data)

    with DeployProgress(enabled=not as_json) as lines:
        result = api.run_experiment(experiment, cfg, out_dir=output, progress=progress if not as_json else None,
                                    track=list(track))
    if as_json:
        echo_json(result.to_dict())
    else:
        print_table(["run", "seed", "state"], [(r["key"], r["seed"], r["state"]) for r in result.runs])
        click.echo(f"Experiment written to {result.folder}; compare the runs with `mlfo report {result.folder}`")
    failed = [r["key"] for r in result.runs if str(r["state"]).startswith("failed")]
    if failed:
        from mlfo_toolkit.errors import DeploymentFailed

        raise DeploymentFailed(f"runs with a failed deployment: {', '.join(failed)}", hint="see run.json in each run's folder")
