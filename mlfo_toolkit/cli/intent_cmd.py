"""`mlfo intent validate|plan|send|status|stop|restart-client`: intents, cohort files, their deployments."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config, print_table
from mlfo_toolkit.cli._progress import DeployProgress, action_text

if TYPE_CHECKING:
    from mlfo_toolkit.api import RunResult
    from mlfo_toolkit.config import Config

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def intent() -> None:
    """Validate, plan and send intents and cohort files; follow how their deployments stand against their targets."""


@intent.command()
@click.argument("file", type=FILE)
@json_option("Print the intent and its pipeline as JSON.")
@pass_config
def validate(cfg: Config, file: Path, as_json: bool) -> None:
    """Check an intent YAML file and show the ML pipeline its operand maps to.

    Exit code 4 (invalid input) names the field and line of the first problem.
    """
    from mlfo_toolkit import api

    checked = api.validate_intent(file, cfg)
    if as_json:
        echo_json(checked.to_dict())
        return
    click.echo(f"{file}: valid intent '{checked.intent_id}'")
    for target, pipeline, read in zip(checked.intent["targets"], checked.pipelines, checked.understood):
        fl = "federated learning" if pipeline["federated"] else "no federated learning"
        click.echo(
            f"  {target['id']}: {target['operation']} {target['operand']} -> "
            f"source {pipeline['source']}, model {pipeline['model']}, sink {pipeline['sink']} ({fl})"
        )
        click.echo(f"    assured: {describe_target(read)}")
        if read["unread_constraints"]:
            click.echo(f"    recorded, not acted on: {', '.join(read['unread_constraints'])}")


def describe_target(read: dict[str, Any] | None) -> str:
    """A target as the MLFO reads it, in one line: 'accuracy >= 0.93 within 12 rounds, at most 4 clients'."""
    if not read or not read.get("assured", True):
        return "nothing (no value, deadline or bound: the run goes its rounds)"
    wanted = read.get("wanted")
    if wanted is None and read.get("value") is not None:  # a Target record (GET /deployments/ID)
        relation = "<=" if read.get("metric") == "loss" or read.get("operation") == "minimise" else ">="
        wanted = f"{read['metric']} {relation} {read['value']:g}"
    deadline = read.get("deadline")
    if deadline is None and (read.get("deadline_rounds") or read.get("deadline_seconds")):
        deadline = f"{read['deadline_rounds']} rounds" if read.get("deadline_rounds") else f"{read['deadline_seconds']:g} s"
    parts = [wanted or f"{read.get('operation')} {read.get('metric')}"]
    if deadline:
        parts[0] += f" within {deadline}"
    for key, text in (("max_clients", "at most {:g} clients"), ("max_round_seconds", "rounds of at most {:g} s"),
                      ("max_traffic_mb", "at most {:g} MB of traffic")):
        if read.get(key) is not None:
            parts.append(text.format(read[key]))
    return ", ".join(parts)


ANY_PATH = click.option("--any-intent-path", is_flag=True,
                        help="Let the cohort file name intent files outside its folder and the shipped catalog.")


@intent.command()
@click.argument("cohort_file", type=FILE)
@ANY_PATH
@json_option("Print the plan as JSON.")
@pass_config
def plan(cfg: Config, cohort_file: Path, any_intent_path: bool, as_json: bool) -> None:
    """Show which FL server and client agents each cohort gets, without contacting anything.

    Reads both forms of cohort file (readable `cohorts:` list or the prototype's
    `cohortdistr`/`intentdist`/... lists). Servers are assigned as a freshly started cloud MLFO
    would assign them from ip_plan.servers.
    """
    from mlfo_toolkit import api

    planned = api.plan(cohort_file, cfg, any_intent_path=any_intent_path)
    if as_json:
        echo_json(planned.to_dict())
        return
    for p in planned.cohorts:
        shared = f" (shared with {p.shares_server_with})" if p.shares_server_with else ""
        click.echo(f"{p.name}: intent {p.intent_id}, {p.strategy}, {p.rounds} rounds")
        click.echo(f"  FL server agent: {p.server}{shared}")
        click.echo(f"  clients (ipstart {p.ipstart}): {', '.join(p.clients)}")
        if p.target is not None:
            click.echo(f"  assured: {describe_target(p.target)} (policy {p.policy or 'the MLFO default'})")


@intent.command()
@click.argument("deployment")
@click.option("--mlfo", "mlfo_address", metavar="HOST:PORT", help="Campus MLFO (default: mlfo.host:mlfo.port).")
@json_option("Print the whole deployment record (GET /deployments/ID) as JSON.")
@pass_config
def status(cfg: Config, deployment: str, mlfo_address: str | None, as_json: bool) -> None:
    """Show how DEPLOYMENT stands against its intent's target, and what the closed loop decided.

    \b
    Example: mlfo intent status 3f2a9c1b7d4e --mlfo 127.0.0.1:8001

    One line for the target and its assurance state (on_track, at_risk, met, missed) with the
    reason, then a row per decision: the round, what triggered it, the rule that fired, each
    action (done, refused by its bound, or failed) and what the next round showed. Exit code 4
    if there is no such deployment.
    """
    from mlfo_toolkit import api

    found = api.deployment_status(deployment, cfg, mlfo=mlfo_address)
    if as_json:
        echo_json(found.to_dict())
        return
    accuracy = [a for a in found.accuracy if a is not None]
    last = f", accuracy {accuracy[-1]:.4f} after round {len(found.accuracy)}" if accuracy else ""
    click.echo(f"{found.name} ({found.deployment}): {found.state}{last}" + (f" - {found.reason}" if found.reason else ""))
    click.echo(f"  target: {describe_target(found.target)}; policy {found.policy or 'none'}")
    if found.assurance:
        click.echo(f"  assurance: {found.assurance['state']} - {found.assurance['reason']}")
    rows = []
    for d in found.decisions:
        acts = "; ".join(action_text(a) for a in d.get("actions", []))
        state = (d.get("assessment") or {}).get("state", "")
        rows.append((d["round"], d["trigger"], state, ", ".join(d.get("rules", [])) or "-", acts or d.get("error") or "-",
                     d.get("outcome") or ""))
    if rows:
        print_table(["round", "trigger", "state", "rule", "actions", "then"], rows, right=["round"])
    else:
        click.echo("  no decisions yet")


@intent.command()
@click.argument("deployment")
@click.option("--mlfo", "mlfo_address", metavar="HOST:PORT", help="Campus MLFO (default: mlfo.host:mlfo.port).")
@json_option()
@pass_config
def stop(cfg: Config, deployment: str, mlfo_address: str | None, as_json: bool) -> None:
    """Stop running DEPLOYMENT: its FL clients and server stop, and it ends failed, 'stopped on request'.

    Exit code 12 if it is not running, 4 if there is no such deployment.
    """
    from mlfo_toolkit import api

    answer = api.stop_deployment(deployment, cfg, mlfo=mlfo_address)
    if as_json:
        echo_json(answer.to_dict())
    else:
        click.echo(f"deployment {deployment} stopped ({answer.state})")


@intent.command("restart-client")
@click.argument("deployment")
@click.argument("part", type=click.IntRange(min=0))
@click.option("--mlfo", "mlfo_address", metavar="HOST:PORT", help="Campus MLFO (default: mlfo.host:mlfo.port).")
@json_option()
@pass_config
def restart_client(cfg: Config, deployment: str, part: int, mlfo_address: str | None, as_json: bool) -> None:
    """Start client PART of DEPLOYMENT again, once the campus MLFO sees it lost.

    \b
    Example: mlfo intent restart-client 3f2a9c1b7d4e 1 --mlfo 127.0.0.1:8001

    The agent that ran it starts a new SuperNode, which joins the running FL server; Flower
    samples it from the next round on. Exit code 12 if the client is not lost or the deployment
    is not running, 4 if there is no such deployment or part.
    """
    from mlfo_toolkit import api

    answer = api.restart_client(deployment, part, cfg, mlfo=mlfo_address)
    if as_json:
        echo_json(answer.to_dict())
    else:
        click.echo(f"client part {part} of {deployment} restarted on {answer.agent} (PID {answer.pid}, {answer.seconds} s)")


@intent.command()
@click.argument("cohort_file", type=FILE)
@click.option("--mlfo", "mlfo_address", metavar="HOST:PORT", help="Campus MLFO (default: the file's mlfo/mlfoadd, else mlfo.host:mlfo.port).")
@click.option("--trust-file-mlfo", is_flag=True,
              help="Send api.token to the MLFO the cohort file names too (by default only to --mlfo or the config's).")
@click.option("--wait", is_flag=True, help="Follow every deployment until its FL run ends; write a run record.")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True, help="Seconds --wait waits.")
@ANY_PATH
@json_option("Print the deployments (with --wait: the run summary) as JSON.")
@pass_config
def send(cfg: Config, cohort_file: Path, mlfo_address: str | None, trust_file_mlfo: bool, wait: bool, timeout: float,
         any_intent_path: bool, as_json: bool) -> None:
    """Send each cohort of COHORT_FILE to the campus MLFO, as the prototype's sendintent.py did.

    Every cohort is one multipart POST /receive (field `file` = the intent, plus ipstart,
    cohortsize, sameserver, avgalgo, fracfit, minfit, minav, numround); client ranges follow on
    from one cohort to the next. With --wait, a progress bar per cohort on a terminal (plain
    lines on stderr otherwise). Exit code 7 if a deployment failed.
    """
    from mlfo_toolkit import api

    sent = api.send_cohorts(cohort_file, cfg, mlfo=mlfo_address, any_intent_path=any_intent_path, trust_file_address=trust_file_mlfo)
    if not as_json:
        for cohort in sent.sent:
            click.echo(f"{cohort.name}: deployment {cohort.deployment_id} (ipstart {cohort.ipstart})", err=wait)
    if not wait:
        if as_json:
            echo_json(sent.to_dict())
        return
    with DeployProgress(enabled=not as_json) as progress:
        result = api.wait(sent, cfg, timeout=timeout, progress=progress)
    if as_json:
        echo_json(result.to_dict())
    else:
        print_rounds(result)
        click.echo(f"Run written to {result.run_dir}")
    result.check()


def print_rounds(result: RunResult) -> None:
    """Accuracy and loss by round, a row per cohort and round, then each cohort's orchestration time."""
    rows = []
    for cohort in result.cohorts:
        for i, (acc, loss) in enumerate(zip(cohort.accuracy, cohort.loss), start=1):
            rows.append((cohort.name, cohort.strategy, i, f"{acc:.3f}", f"{loss:.3f}"))
    print_table(["cohort", "strategy", "round", "accuracy", "loss"], rows, right=["round", "accuracy", "loss"])
    for cohort in result.cohorts:
        if cohort.orchestration_seconds is not None:
            click.echo(f"{cohort.name}: orchestration took {cohort.orchestration_seconds:.2f} s, state {cohort.state}")

