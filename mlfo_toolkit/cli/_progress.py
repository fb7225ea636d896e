"""Progress on long work: a rich bar per cohort on a terminal, one plain line per event otherwise."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import click

from mlfo_toolkit.cli._common import interactive


def _line(event: str, data: dict[str, Any]) -> str | None:
    if event == "setup":
        return f"Starting {data['servers']} FL server agent(s), {data['clients']} client agent(s) on loopback"
    if event == "state":
        reason = f": {data['reason']}" if data.get("reason") else ""
        return f"[{data['cohort']}] {data['state']}{reason}"
    if event == "round":
        sampled, results = data.get("sampled"), data.get("results")
        short = f", only {results} of {sampled} sampled clients answered" if sampled and results is not None and results < sampled else ""
        return (f"[{data['cohort']}] round {data['round']}/{data['rounds_total']}: "
                f"accuracy {data['accuracy']:.3f}, loss {data['loss']:.3f}{short}")
    if event == "lost":
        reason = str(data.get("error") or "").splitlines()[0] if data.get("error") else "no answer"
        return f"[{data['cohort']}] client {data['agent']} (part {data['part']}) lost: {reason}"
    if event == "decision":
        return f"[{data['cohort']}] {decision_line(data)}"
    if event in ("topo", "image"):
        return f"[{event}] {data['message']}"
    return None


def action_text(action: dict[str, Any]) -> str:
    """'restart_client 0 done', or 'add_clients refused (no spare client of the cohort to add)'."""
    part = "" if action.get("part") is None else f" {action['part']}"
    why = f" ({action['detail']})" if action.get("status") != "done" and action.get("detail") else ""
    return f"{action['kind']}{part} {action['status']}{why}"


def decision_line(data: dict[str, Any]) -> str:
    """A decision of the closed loop in a line: 'round 3: at_risk (clients 0, 1 lost) -> restart_client 0 done'."""
    assessment = data.get("assessment") or {}
    acts = [action_text(a) for a in data.get("actions", [])]
    head = f"round {data['round']}: {assessment.get('state', 'policy')}"
    if assessment.get("reason"):
        head += f" ({assessment['reason']})"
    if data.get("error"):
        return f"{head} -> {data['error']}"
    return head + (f" -> {'; '.join(acts)}" if acts else "")


class DeployProgress:
    """A `Progress` callback: `with DeployProgress(enabled) as progress: api.wait(..., progress=progress)`."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> DeployProgress:
        if self.enabled and interactive():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                  console=Console(stderr=True), transient=False)
            self._bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._bars is not None:
            self._bars.stop()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._bars is None or event in ("setup", "topo", "image"):
            line = _line(event, data)
            if line:
                if self._bars is not None:
                    self._bars.console.print(line, markup=False, highlight=False)
                else:
                    click.echo(line, err=True)
            return
        cohort = str(data.get("cohort"))
        if cohort not in self._tasks:
            total = (data.get("params") or {}).get("rounds") or data.get("rounds_total")
            self._tasks[cohort] = self._bars.add_task(cohort, total=total, status="")
        task = self._tasks[cohort]
        if event == "round":
            self._bars.update(task, completed=data["round"], total=data["rounds_total"],
                              status=f"acc {data['accuracy']:.3f} loss {data['loss']:.3f}")
        elif event == "state":
            self._bars.update(task, status=data["state"] + (f": {data['reason']}" if data.get("reason") else ""))
        elif event in ("lost", "decision"):
            self._bars.console.print(_line(event, data) or "", markup=False, highlight=False)
