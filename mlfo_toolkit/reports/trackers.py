"""Runs in the experiment trackers researchers already use: MLflow and TensorBoard.

Each cohort of each run becomes a tracked run (`RUN_KEY/COHORT`): its parameters (the sweep point,
seed, strategy, fraction_fit, clients, partition), per-round metrics with the round as the step
(accuracy, loss, round seconds and each phase, sampled and results), its traffic, and the
timeline's events (tags `event.N` in MLflow, a text table in TensorBoard). The report's figures
are artifacts of a parent run (MLflow) or images (TensorBoard).

MLflow: `tracking.mlflow_uri`, else a SQLite store `mlflow.db` (artifacts in `mlartifacts/`) in the
report folder; a run already logged (tag `mlfo.key`) is not logged twice. TensorBoard: event files
under `tracking.tensorboard_dir`, else `tensorboard/` in the report folder; a run logged again
replaces its files. Both libraries are optional (`pip install 'mlfo-toolkit[tracking]'`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import MissingDependencyError
from mlfo_toolkit.fl.anatomy import PHASES

TRACKERS = ("mlflow", "tensorboard")


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    return "" if value is None else str(value)


def tracked_runs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One tracked run per cohort of each run entry ({key, point, seed, run}): name, params, metrics by round, events."""
    out = []
    for entry in entries:
        run = entry["run"]
        for cohort in run["cohorts"]:
            params = {**{f"point.{k}": _plain(v) for k, v in (entry.get("point") or {}).items()},
                      "seed": entry.get("seed", run.get("seed")), "cohort": cohort["name"], "strategy": cohort.get("strategy"),
                      "fraction_fit": cohort.get("fraction_fit"), "clients": cohort.get("clients"),
                      "partition": _plain(cohort.get("partition")), "policy": cohort.get("policy")}
            steps: dict[int, dict[str, float]] = {}
            series: dict[str, list[Any]] = {"accuracy": cohort.get("accuracy") or [], "loss": cohort.get("loss") or [],
                                            "round_seconds": cohort.get("round_seconds") or [], "sampled": cohort.get("sampled") or [],
                                            "results": cohort.get("results") or []}
            for name, values in series.items():
                for step, value in enumerate(values, start=1):
                    if isinstance(value, (int, float)):
                        steps.setdefault(step, {})[name] = float(value)
            for step, phases in enumerate(cohort.get("phases") or [], start=1):
                for phase in PHASES:
                    if isinstance((phases or {}).get(phase), (int, float)):
                        steps.setdefault(step, {})[f"phase.{phase}"] = float(phases[phase])
            traffic = cohort.get("traffic") or {}
            events = [{"number": i, "round": e.get("round"), "kind": e.get("kind"), "target": _plain(e.get("what") or {}),
                       "ok": e.get("ok"), "effect": _plain({k: v for k, v in (e.get("effect") or {}).items()
                                                           if isinstance(v, (str, int, float, bool))})}
                      for i, e in enumerate(run.get("events") or [], start=1)]
            out.append({"key": f"{entry['key']}/{cohort['name']}", "params": {k: v for k, v in params.items() if v not in (None, "")},
                        "steps": steps, "events": events,
                        "totals": {k: float(traffic[k]) for k in ("bytes_sent", "bytes_received") if isinstance(traffic.get(k), (int, float))}})
    return out


def to_mlflow(entries: list[dict[str, Any]], experiment: str, uri: str | None, report_dir: Path,
              artifacts: list[Path]) -> str:
    """Log the runs (and the report's files as a parent run's artifacts) to MLflow; the tracking URI."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MissingDependencyError("mlflow is not installed", hint="pip install 'mlfo-toolkit[tracking]'") from None
    uri = uri or f"sqlite:///{(report_dir / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(
        experiment, artifact_location=(report_dir / "mlartifacts").resolve().as_uri())
    parent = _find(client, experiment_id, "report")
    if parent is None:
        parent = client.create_run(experiment_id, run_name="report", tags={"mlfo.key": "report"}).info.run_id
    for path in artifacts:
        if path.is_file():
            client.log_artifact(parent, str(path))
    for tracked in tracked_runs(entries):
        if _find(client, experiment_id, tracked["key"]) is not None:
            continue  # logged earlier (mlfo run --track, or an earlier report)
        run_id = client.create_run(experiment_id, run_name=tracked["key"],
                                   tags={"mlfo.key": tracked["key"], "mlflow.parentRunId": parent}).info.run_id
        metrics = [Metric(name, value, 0, step) for step, values in sorted(tracked["steps"].items()) for name, value in values.items()]
        metrics += [Metric(name, value, 0, 0) for name, value in tracked["totals"].items()]
        tags = [RunTag(f"event.{e['number']}", f"round {e['round']}: {e['kind']} {e['target']} ({'ok' if e['ok'] else 'failed'})")
                for e in tracked["events"]]
        params = [Param(k, str(v)[:6000]) for k, v in tracked["params"].items()]
        for start in range(0, max(len(metrics), 1), 900):  # MLflow takes at most 1000 entries a batch
            client.log_batch(run_id, metrics=metrics[start:start + 900], params=params if start == 0 else [],
                             tags=tags if start == 0 else [])
        client.log_text(run_id, json.dumps(tracked["events"], indent=2), "events.json")
        client.set_terminated(run_id)
    client.set_terminated(parent)
    return uri


def _find(client: Any, experiment_id: str, key: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlfo.key` = '{key}'", max_results=1)
    return str(runs[0].info.run_id) if runs else None


def to_tensorboard(entries: list[dict[str, Any]], logdir: Path, figures: list[Path]) -> str:
    """Write TensorBoard event files: a folder per tracked run, and the report's PNG figures; the log folder."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise MissingDependencyError("tensorboardX is not installed", hint="pip install 'mlfo-toolkit[tracking]'") from None
    logdir.mkdir(parents=True, exist_ok=True)
    for tracked in tracked_runs(entries):
        folder = logdir / tracked["key"]
        if folder.exists():
            shutil.rmtree(folder)  # ours: written again whole, not twice
        with SummaryWriter(str(folder)) as writer:
            for step, values in sorted(tracked["steps"].items()):
                for name, value in values.items():
                    writer.add_scalar(name.replace(".", "/"), value, step)
            for name, value in tracked["totals"].items():
                writer.add_scalar(f"traffic/{name}", value, 0)
            writer.add_text("params", "\n".join(f"* {k}: {v}" for k, v in tracked["params"].items()), 0)
            if tracked["events"]:
                rows = "\n".join(f"| {e['number']} | {e['round']} | {e['kind']} | {e['target']} | {e['effect']} |" for e in tracked["events"])
                writer.add_text("events", "| # | round | kind | target | effect |\n|---|---|---|---|---|\n" + rows, 0)
    pngs = [p for p in figures if p.suffix == ".png" and p.is_file()]
    if pngs:
        from matplotlib import image

        report = logdir / "report"
        if report.exists():
            shutil.rmtree(report)
        with SummaryWriter(str(report)) as writer:
            for path in pngs:
                writer.add_image(path.stem, image.imread(str(path))[..., :3], 0, dataformats="HWC")
    return str(logdir)
