"""Run records: one folder per run with run.json, the manifest and a plot of accuracy and loss."""

from __future__ import annotations

import csv
import hashlib
import io
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MlfoError, StorageError
from mlfo_toolkit.fl.data import load_dataset
from mlfo_toolkit.fl.partitions import PartitionSpec, cached_split, label_counts
from mlfo_toolkit.fl.userapps import is_app
from mlfo_toolkit.orchestrator.records import Deployment
from mlfo_toolkit.orchestrator.sending import SentCohort
from mlfo_toolkit.reports import style
from mlfo_toolkit.util.files import write_json_atomically, write_text


def new_run_dir(runs_dir: Path, kind: str) -> Path:
    """runs/KIND-YYYYmmdd-HHMMSS (suffixed when two runs start in the same second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{i}" for i in range(2, 100)]:
        candidate = runs_dir / f"{kind}-{stamp}{suffix}"
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"too many runs named {kind}-{stamp} in {runs_dir}")


def partition_summary(record: Deployment, config: Config) -> dict[str, Any]:
    """How the cohort's clients split the data, with the samples of each label per client (from the
    split the clients computed and cached; nothing is computed for an app, which reads its own data)."""
    fl = config.fl
    spec = PartitionSpec.model_validate(record.params.partition) if record.params.partition else PartitionSpec.configured(fl)
    seed = spec.seed if spec.seed is not None else (record.params.seed if record.params.seed is not None else fl.seed)
    out: dict[str, Any] = {"partition": {**spec.model_dump(), "seed": seed}}
    if is_app(str(record.pipeline.get("model", ""))):
        return out
    try:
        data_dir = fl.data_dir.resolve()
        dataset = load_dataset(str(record.pipeline.get("source")), data_dir)
        parts = cached_split(dataset.y_train, record.params.cohortsize, spec, seed, data_dir / ".partitions")
        out["label_counts"] = label_counts(dataset.y_train, parts, dataset.num_classes)
    except MlfoError as err:  # the data or flwr-datasets is not here (a run of a remote network): say why
        out["label_counts_missing"] = err.message
    return out


def cohort_summary(cohort: SentCohort, config: Config | None = None) -> dict[str, Any]:
    """The per-cohort part of run.json (and `mlfo demo --json`); with `config`, also how its clients split the data."""
    record = cohort.record
    if record is None:
        return {"name": cohort.name, "deployment": cohort.deployment_id, "state": None, "reason": "never followed",
                "accuracy": [], "loss": []}
    rounds = sorted(record.rounds, key=lambda r: r.round)
    return {**(partition_summary(record, config) if config is not None else {}),
        "name": cohort.name,
        "deployment": cohort.deployment_id,
        "state": record.state,
        "reason": record.reason,
        "strategy": record.params.strategy,
        "fraction_fit": record.params.fraction_fit,
        "clients": len(record.clients),
        "client_agents": [{"part": c.part, "agent": c.agent} for c in record.clients],
        "server": record.server.server if record.server else None,
        "aggregation": record.params.aggregation,
        "local_rounds": record.params.local_rounds if record.tiers else None,
        "tiers": [{"edge": t.edge, "name": t.name, "kind": t.kind, "agent": t.agent, "server": t.server, "parts": t.parts,
                   "state": t.state, "error": t.error, "handled": t.handled, "parts_before": t.parts_before, "lost_at": t.lost_at,
                   "traffic": t.traffic}
                  for t in record.tiers],
        "accuracy": [r.accuracy for r in rounds],
        "loss": [r.loss for r in rounds],
        "round_seconds": record.round_seconds(),
        "sampled": [r.sampled for r in rounds],
        "results": [r.results for r in rounds],
        "short_rounds": record.short_rounds,
        "phases": [r.phases for r in rounds],
        "client_train_seconds": [r.client_train_seconds for r in rounds],
        "lost_clients": [{"agent": c.agent, "part": c.part, "lost_at": c.lost_at, "error": c.error}
                         for c in record.clients if c.state == "lost"],
        "restarted_clients": [{"agent": c.agent, "part": c.part, **r.to_json()} for c in record.clients for r in c.restarts],
        "orchestration_seconds": record.orchestration_seconds,
        "client_ready_seconds": record.client_ready_seconds,
        "traffic": record.traffic,
        "policy": record.policy,
        "target": record.target,
        "assurance": record.assurance,
        "decisions": [d.model_dump(exclude_none=True) for d in record.decisions],
        "control": record.control,
        "created": record.created,
        "finished": record.finished,
    }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(inputs: dict[str, Path | None], seeds: dict[str, int]) -> dict[str, Any]:
    """Versions, seeds and input hashes, so a run can be reproduced and compared."""
    def _version(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {
        "mlfo": _version("mlfo-toolkit"),
        "flwr": _version("flwr"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "seeds": seeds,
        "inputs": {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in inputs.items() if p and p.is_file()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def pyplot() -> Any:
    """matplotlib's pyplot with the report style (reports/style.py), imported when a figure is drawn."""
    return style.pyplot()


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Save a figure and free it; a full or read-only disk is a StorageError naming the file."""
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as err:
        raise StorageError.from_os_error(err if err.filename else OSError(err.errno, err.strerror, str(path))) from None
    finally:
        pyplot().close(fig)
    return path


def write_run(run_dir: Path, summary: dict[str, Any]) -> Path:
    """run.json plus accuracy-loss.png in `run_dir`; returns the JSON path."""
    path = run_dir / "run.json"
    write_json_atomically(path, summary)
    plot_rounds(summary["cohorts"], run_dir / "accuracy-loss.png")
    return path


def plot_rounds(cohorts: list[dict[str, Any]], out: Path) -> Path:
    """Accuracy and loss by round, one line per cohort, side by side."""
    plt = pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for cohort in cohorts:
        rounds = list(range(1, len(cohort["accuracy"]) + 1))
        label = f"{cohort['name']} ({cohort['strategy']}, {cohort['clients']} clients)"
        acc_ax.plot(rounds, cohort["accuracy"], marker="o", label=label)
        loss_ax.plot(rounds, cohort["loss"], marker="o", label=label)
    acc_ax.set(title="Held-out accuracy of the global model", xlabel="round", ylabel="accuracy", ylim=(0, 1))
    loss_ax.set(title="Held-out loss of the global model", xlabel="round", ylabel="cross-entropy loss")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    return out


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as CSV, columns in the order they first appear."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
