"""`mlfo intent validate|plan|send`: intents and cohort files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlfo_toolkit.cli.main import echo_json, pass_config
from mlfo_toolkit.config import Config
from mlfo_toolkit.monitoring.runs import cohort_summary, manifest, new_run_dir, write_run
from mlfo_toolkit.orchestrator.cohorts import load_cohort_file, plan_cohorts
from mlfo_toolkit.orchestrator.intents import Catalog, load_intent_file
from mlfo_toolkit.orchestrator.sending import raise_for_failures, send_cohorts, wait_for_deployments

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def intent() -> None:
    """Validate, plan and send intents and cohort files."""


@intent.command()
@click.argument("file", type=FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the intent and its pipeline as JSON.")
@pass_config
def validate(cfg: Config, file: Path, as_json: bool) -> None:
    """Check an intent YAML file and show the ML pipeline its operand maps to.

    Exit code 4 (invalid input) names the field and line of the first problem.
    """
    parsed = load_intent_file(file)
    catalog = Catalog.load(cfg.mlfo.catalog)
    pipelines = [catalog.resolve(parsed, i).to_dict() for i in range(len(parsed.targets))]
    if as_json:
        echo_json({"intent": parsed.model_dump(), "pipelines": pipelines})
        return
    click.echo(f"{file}: valid intent '{parsed.intentID}'")
    for target, pipeline in zip(parsed.targets, pipelines):
        fl = "federated learning" if pipeline["federated"] else "no federated learning"
        click.echo(
            f"  {target.id}: {target.operation} {target.operand} -> "
            f"source {pipeline['source']}, model {pipeline['model']}, sink {pipeline['sink']} ({fl})"
        )


@intent.command()
@click.argument("cohort_file", type=FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@pass_config
def plan(cfg: Config, cohort_file: Path, as_json: bool) -> None:
    """Show which FL server and client agents each cohort gets, without contacting anything.

    Reads both forms of cohort file (readable `cohorts:` list or the prototype's
    `cohortdistr`/`intentdist`/... lists). Servers are assigned as a freshly started cloud MLFO
    would assign them from ip_plan.servers.
    """
    plans = plan_cohorts(load_cohort_file(cohort_file, cfg), cfg)
    if as_json:
        echo_json({"cohorts": [p.to_dict() for p in plans]})
        return
    for p in plans:
        shared = f" (shared with {p.shares_server_with})" if p.shares_server_with else ""
        click.echo(f"{p.name}: intent {p.intent_id}, {p.strategy}, {p.rounds} rounds")
        click.echo(f"  FL server agent: {p.server}{shared}")
        click.echo(f"  clients (ipstart {p.ipstart}): {', '.join(p.clients)}")


@intent.command()
@click.argument("cohort_file", type=FILE)
@click.option("--mlfo", "mlfo_address", metavar="HOST:PORT", help="Campus MLFO (default: the file's mlfo/mlfoadd, else mlfo.host:mlfo.port).")
@click.option("--wait", is_flag=True, help="Follow every deployment until its FL run ends; write a run record.")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True, help="Seconds --wait waits.")
@click.option("--json", "as_json", is_flag=True, help="Print the deployments as JSON.")
@pass_config
def send(cfg: Config, cohort_file: Path, mlfo_address: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Send each cohort of COHORT_FILE to the campus MLFO, as the prototype's sendintent.py did.

    Every cohort is one multipart POST /receive (field `file` = the intent, plus ipstart,
    cohortsize, sameserver, avgalgo, fracfit, minfit, minav, numround); client ranges follow on
    from one cohort to the next. Exit code 7 if a deployment failed.
    """
    parsed = load_cohort_file(cohort_file, cfg)
    address = mlfo_address or parsed.mlfo or f"{cfg.mlfo.host}:{cfg.mlfo.port}"
    sent = send_cohorts(parsed, cfg, address)
    if not as_json:
        for cohort in sent:
            click.echo(f"{cohort.name}: deployment {cohort.deployment_id} (ipstart {cohort.ipstart})", err=wait)
    if not wait:
        if as_json:
            echo_json({"mlfo": address, "deployments": [{"name": c.name, "id": c.deployment_id, "ipstart": c.ipstart} for c in sent]})
        return
    wait_for_deployments(sent, cfg, address, timeout=timeout, progress=None if as_json else print_progress)
    run_dir = new_run_dir(Path(cfg.paths.runs_dir), "send")
    summary: dict[str, Any] = {
        "cohorts": [cohort_summary(c) for c in sent],
        "orchestration_seconds": [c.record.get("orchestration_seconds") for c in sent],
        "run_dir": str(run_dir),
        "manifest": manifest({"cohort_file": cohort_file}, {"fl.seed": cfg.fl.seed}),
    }
    write_run(run_dir, summary)
    if as_json:
        echo_json(summary)
    else:
        print_table(summary["cohorts"])
        click.echo(f"Run written to {run_dir}")
    raise_for_failures(sent)


def print_progress(event: str, data: dict[str, Any]) -> None:
    """One stderr line per state change and per finished round."""
    if event == "setup":
        click.echo(f"Starting {data['servers']} FL server agent(s), {data['clients']} client agent(s) on loopback", err=True)
    elif event == "state":
        reason = f": {data['reason']}" if data.get("reason") else ""
        click.echo(f"[{data['cohort']}] {data['state']}{reason}", err=True)
    elif event == "round":
        sampled, results = data.get("sampled"), data.get("results")
        short = f", only {results} of {sampled} sampled clients answered" if sampled and results is not None and results < sampled else ""
        click.echo(
            f"[{data['cohort']}] round {data['round']}/{data['rounds_total']}: "
            f"accuracy {data['accuracy']:.3f}, loss {data['loss']:.3f}{short}",
            err=True,
        )
    elif event == "lost":
        click.echo(f"[{data['cohort']}] client {data['agent']} (part {data['part']}) lost: {data.get('error')}", err=True)


def print_table(cohorts: list[dict[str, Any]]) -> None:
    """Accuracy and loss by round, a row per cohort and round."""
    click.echo(f"{'cohort':<14} {'strategy':<10} {'round':>5} {'accuracy':>9} {'loss':>8}")
    for cohort in cohorts:
        for i, (acc, loss) in enumerate(zip(cohort["accuracy"], cohort["loss"]), start=1):
            click.echo(f"{cohort['name']:<14} {cohort['strategy']:<10} {i:>5} {acc:>9.3f} {loss:>8.3f}")
        orchestration = cohort.get("orchestration_seconds")
        if orchestration is not None:
            click.echo(f"{'':<14} orchestration took {orchestration:.2f} s, state {cohort['state']}")
