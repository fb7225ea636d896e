"""`mlfo report EXPERIMENT_DIR`: every run of an experiment side by side.

Writes EXPERIMENT_DIR/report/: accuracy and loss by round (a line per run, the mean and spread of
each sweep point over its repetitions), time per round with the timeline's events marked and
rounds with fewer results than sampled crossed, FL traffic per round, and a table per sweep point
(final accuracy, time to the target accuracy, total traffic). Each figure's data is also written as
CSV and JSON, and index.html shows it all.
"""

from __future__ import annotations

import html
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import NotFoundError
from mlfo_toolkit.fl.partitions import PartitionSpec
from mlfo_toolkit.reports.report import partition_title, plot_label_distribution
from mlfo_toolkit.reports.runs import pyplot, save_figure, write_rows
from mlfo_toolkit.util.files import write_json_atomically, write_text


def is_experiment(folder: Path) -> bool:
    return (folder / "index.json").is_file() and (folder / "runs").is_dir()


def load_runs(folder: Path) -> list[dict[str, Any]]:
    index = json.loads((folder / "index.json").read_text())
    runs = []
    for entry in index.get("runs", []):
        path = Path(entry["dir"]) / "run.json"
        if not path.is_file():
            path = folder / "runs" / entry["key"] / "run.json"
        if path.is_file():
            runs.append({**entry, "run": json.loads(path.read_text())})
    if not runs:
        raise NotFoundError(f"{folder} lists no finished runs", hint="run the experiment with `mlfo run FILE`")
    return runs


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_plain(k, v)}" for k, v in point.items()) or "base"


def _plain(key: str, value: Any) -> str:
    """A sweep value as a reader writes it: a partition as `dirichlet alpha=0.1`, not a dict's repr."""
    if key == "partition" and isinstance(value, dict):
        return PartitionSpec.model_validate(value).label()
    return str(value)


def _time_to(accuracy: list[float], seconds: list[float | None], target: float) -> float | None:
    elapsed = 0.0
    for acc, took in zip(accuracy, seconds):
        elapsed += took or 0.0
        if acc >= target:
            return round(elapsed, 2)
    return None


def build_experiment_report(folder: Path, target: float = 0.9) -> dict[str, Any]:
    plt = pyplot()
    runs = load_runs(folder)
    out = folder / "report"
    out.mkdir(exist_ok=True)
    points: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in runs:
        points[point_label(entry["point"])].append(entry)
    colours = {label: plt.cm.tab10(i % 10) for i, label in enumerate(points)}

    # Accuracy and loss by round: a thin line per run, the mean of each point bold, its spread shaded.
    rows: list[dict[str, Any]] = []
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, entries in points.items():
        curves = []
        for entry in entries:
            for cohort in entry["run"]["cohorts"]:
                curves.append((cohort["accuracy"], cohort["loss"]))
                for i, (acc, loss) in enumerate(zip(cohort["accuracy"], cohort["loss"]), start=1):
                    rows.append({"point": label, "run": entry["key"], "cohort": cohort["name"], "round": i, "accuracy": acc, "loss": loss})
                rounds = range(1, len(cohort["accuracy"]) + 1)
                acc_ax.plot(rounds, cohort["accuracy"], color=colours[label], alpha=0.35, linewidth=1)
                loss_ax.plot(rounds, cohort["loss"], color=colours[label], alpha=0.35, linewidth=1)
        length = min(len(c[0]) for c in curves)
        if length:
            xs = range(1, length + 1)
            for ax, which in ((acc_ax, 0), (loss_ax, 1)):
                values = [[c[which][i] for c in curves] for i in range(length)]
                ax.plot(xs, [statistics.fmean(v) for v in values], color=colours[label], linewidth=2.5, label=f"{label} (n={len(curves)})")
                ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=colours[label], alpha=0.15)
    acc_ax.set(xlabel="round", ylabel="held-out accuracy", title="Accuracy by round")
    loss_ax.set(xlabel="round", ylabel="held-out loss", title="Loss by round")
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    figures = {"accuracy-loss": _save(fig, plt, out / "accuracy-loss.png", rows)}

    # How each point's clients split the data (its first cohort with a known split).
    split = []
    for label, entries in points.items():
        cohort = next((c for e in entries for c in e["run"]["cohorts"] if c.get("label_counts")), None)
        if cohort is not None:
            split.append((f"{label}\n{partition_title(cohort)}", cohort["label_counts"]))
    if split:
        figures["labels"] = plot_label_distribution(split, out / "labels.png")
        write_rows(out / "labels.csv", [{"point": title.split("\n")[0], "client": client, "label": label, "samples": n}
                                        for title, counts in split for client, row in enumerate(counts)
                                        for label, n in enumerate(row)])

    # Time per round, events marked in the round they fell into, short rounds crossed.
    rows = []
    fig, ax = plt.subplots(figsize=(12, 4.5))
    marks: dict[int, dict[str, list[str]]] = {}
    for label, entries in points.items():
        for entry in entries:
            for cohort in entry["run"]["cohorts"]:
                seconds = cohort.get("round_seconds") or []
                numbers = list(range(1, len(seconds) + 1))
                ax.plot(numbers, seconds, marker="o", color=colours[label], alpha=0.7, linewidth=1)
                short = [r for r in cohort.get("short_rounds", []) if r <= len(seconds)]
                ax.scatter(short, [seconds[r - 1] for r in short], marker="x", s=90, color="red", zorder=3)
                for i, took in enumerate(seconds, start=1):
                    rows.append({"point": label, "run": entry["key"], "cohort": cohort["name"], "round": i, "seconds": took,
                                 "short": i in cohort.get("short_rounds", [])})
            for event in entry["run"].get("events", []):
                if event.get("round"):
                    marks.setdefault(int(event["round"]), {}).setdefault(event["kind"], []).append(entry["key"])
                rows.append({"point": label, "run": entry["key"], "event": event["kind"], "round": event.get("round"),
                             "phase": event.get("phase"), "offset_seconds": event.get("offset_seconds"), "ok": event.get("ok"),
                             "effect": effect_text(event.get("effect") or {})})
    for number, kinds in marks.items():  # one label per round: labels of one round would overprint
        ax.axvline(number - 0.5, color="black", linestyle="--", linewidth=1)
        label = "; ".join(f"{kind} ({', '.join(runs)})" for kind, runs in kinds.items())
        ax.annotate(label, (number - 0.5, ax.get_ylim()[1] * 0.95), rotation=90, fontsize=7, va="top", ha="right")
    ax.set(xlabel="round (dashed: an event fired as this round began; x: fewer results than sampled)", ylabel="seconds",
           title="Time per round")
    fig.tight_layout()
    figures["round-time"] = _save(fig, plt, out / "round-time.png", rows)

    # FL traffic per round (the run's total over its rounds).
    rows = []
    fig, ax = plt.subplots(figsize=(8, 4))
    labels: list[str] = []
    megabytes: list[float] = []
    for label, entries in points.items():
        for entry in entries:
            for cohort in entry["run"]["cohorts"]:
                traffic = cohort.get("traffic") or {}
                total = int(traffic.get("bytes_sent", 0)) + int(traffic.get("bytes_received", 0))
                per_round = total / max(1, len(cohort["accuracy"]))
                labels.append(f"{entry['key']}\n{cohort['name']}")
                megabytes.append(per_round / 1e6)
                rows.append({"point": label, "run": entry["key"], "cohort": cohort["name"], "bytes_total": total, "bytes_per_round": round(per_round)})
    ax.bar(range(len(megabytes)), megabytes, color="tab:blue")
    ax.set_xticks(range(len(megabytes)), labels, fontsize=7)
    ax.set(ylabel="MB per round (server side, both directions)", title="FL traffic per round")
    fig.tight_layout()
    figures["traffic"] = _save(fig, plt, out / "traffic.png", rows)

    # Meter events: the rate the cohort measured just before and just after each one.
    rows = []
    for entry in runs:
        for event in entry["run"].get("events", []):
            effect = event.get("effect") or {}
            if "measured_mbit_before" in effect:
                rows.append({"point": point_label(entry["point"]), "run": entry["key"], "event": event["kind"], "round": event.get("round"),
                             "rate": effect.get("rate") or effect.get("link"), "before_mbit": effect["measured_mbit_before"], "after_mbit": effect["measured_mbit_after"]})
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["before_mbit"] for r in rows], width=0.4, label="just before")
        ax.bar([x + 0.2 for x in xs], [r["after_mbit"] for r in rows], width=0.4, label="just after")
        ax.set_xticks(list(xs), [f"{r['run']}\n{r['event']} {r['rate'] or ''} (round {r['round']})" for r in rows], fontsize=7)
        ax.set(ylabel="Mbit/s (iperf3, client to FL server)", title="Measured rate around each meter or link event")
        ax.legend()
        fig.tight_layout()
        figures["meter-rates"] = _save(fig, plt, out / "meter-rates.png", rows)

    # The table per sweep point.
    table = []
    for label, entries in points.items():
        finals, times, traffic, lengths, run_seconds, states, wants = [], [], [], [], [], [], set()
        actions: dict[str, int] = defaultdict(int)
        for entry in entries:
            for cohort in entry["run"]["cohorts"]:
                if cohort["accuracy"]:
                    finals.append(cohort["accuracy"][-1])
                # A cohort with a target of its own is measured against it; else against --target.
                wanted = (cohort.get("target") or {}).get("value")
                wanted = wanted if wanted is not None and (cohort.get("target") or {}).get("metric") == "accuracy" else target
                wants.add(wanted)
                times.append(_time_to(cohort["accuracy"], cohort.get("round_seconds") or [], wanted))
                t = cohort.get("traffic") or {}
                traffic.append(int(t.get("bytes_sent", 0)) + int(t.get("bytes_received", 0)))
                lengths.append(len(cohort["accuracy"]))
                run_seconds.append(sum(s for s in cohort.get("round_seconds") or [] if s))
                states.append((cohort.get("assurance") or {}).get("state"))
                for decision in cohort.get("decisions") or []:
                    for action in decision.get("actions", []):
                        if action.get("status") == "done":
                            actions[action["kind"]] += 1
        reached = [t for t in times if t is not None]
        assured = [s for s in states if s is not None]
        table.append({
            "point": label, "runs": len(entries),
            "final_accuracy_mean": round(statistics.fmean(finals), 4) if finals else None,
            "final_accuracy_spread": round(max(finals) - min(finals), 4) if finals else None,
            "target_accuracy": ", ".join(f"{w:g}" for w in sorted(wants)),
            "seconds_to_target": round(statistics.fmean(reached), 2) if reached else None,
            "reached_target": f"{len(reached)}/{len(times)}",
            "traffic_mb_mean": round(statistics.fmean(traffic) / 1e6, 2) if traffic else None,
            "rounds_mean": round(statistics.fmean(lengths), 2) if lengths else None,
            "round_seconds_total_mean": round(statistics.fmean(run_seconds), 1) if run_seconds else None,
            "target_met": f"{assured.count('met')}/{len(assured)}" if assured else None,
            "actions": ", ".join(f"{k} x{v}" for k, v in sorted(actions.items())) or None,
            "events": sorted({e["kind"] for entry in entries for e in entry["run"].get("events", [])}),
        })
    write_rows(out / "table.csv", table)
    write_json_atomically(out / "table.json", table)
    page = _html(out, folder.name, figures, table)
    return {"report": str(out), "plots": [str(p) for p in figures.values()], "table": table, "html": str(page),
            "data": sorted(str(p) for p in out.glob("*.csv"))}


def _save(fig: Any, plt: Any, path: Path, rows: list[dict[str, Any]]) -> Path:
    save_figure(fig, path, dpi=110)
    write_rows(path.with_suffix(".csv"), rows)
    write_json_atomically(path.with_suffix(".json"), rows)
    return path


def _html(out: Path, name: str, figures: dict[str, Path], table: list[dict[str, Any]]) -> Path:
    columns = list(table[0]) if table else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>" for row in table)
    images = "".join(f'<h2>{html.escape(key)}</h2><img src="{p.name}"><p><a href="{p.with_suffix(".csv").name}">data (CSV)</a></p>'
                     for key, p in figures.items())
    page = out / "index.html"
    write_text(page, f"<!doctype html><title>{html.escape(name)}</title><h1>Experiment {html.escape(name)}</h1>"
                     f"<table border=1><tr>{head}</tr>{body}</table>{images}")
    return page


def effect_text(effect: dict[str, Any]) -> str:
    """An event's effect in one line for tables: its scalar values, key=value."""
    return ", ".join(f"{k}={v}" for k, v in effect.items() if isinstance(v, (str, int, float, bool)) or v is None)
