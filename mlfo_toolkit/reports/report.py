"""`mlfo report`: plots and a manifest from a run folder (and from Prometheus when it is reachable)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import NotFoundError, ValidationError
from mlfo_toolkit.fl.anatomy import PHASES
from mlfo_toolkit.fl.partitions import PartitionSpec
from mlfo_toolkit.monitoring.prometheus import query_range
from mlfo_toolkit.reports.page import conditions_text, html_table, plain, write_page_file
from mlfo_toolkit.reports.runs import file_sha256, plot_rounds, pyplot, save_figure, write_rows
from mlfo_toolkit.util.files import write_json_atomically


def load_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise NotFoundError(f"{run_dir} holds no run.json", hint="pass a folder written by `mlfo demo` or `mlfo intent send --wait`")
    try:
        run = json.loads(path.read_text())
    except ValueError as err:
        raise ValidationError(f"{path} is not JSON: {err}") from None
    if not isinstance(run, dict) or not isinstance(run.get("cohorts"), list):
        raise ValidationError(f"{path} has no 'cohorts' list")
    return run


def plot_orchestration(cohorts: list[dict[str, Any]], out: Path) -> Path:
    """Seconds from intent to running FL clients, one bar per cohort."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [c["name"] for c in cohorts]
    ax.bar(names, [c.get("orchestration_seconds") or 0 for c in cohorts], color="tab:blue")
    ax.set(title="Orchestration time per cohort", ylabel="seconds (intent -> clients started)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    return out


def plot_label_distribution(panels: list[tuple[str, list[list[int]]]], out: Path) -> Path:
    """Samples of each label per client, stacked, one panel per (title, counts): how skewed each split is."""
    plt = pyplot()
    widest = max(len(counts) for _, counts in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 0.3 * widest + 2) * len(panels), 3.8), squeeze=False,
                             sharey=True)
    for ax, (title, counts) in zip(axes[0], panels):
        colours = plt.get_cmap("tab10" if len(counts[0]) <= 10 else "tab20")
        bottom = [0] * len(counts)
        for cls in range(len(counts[0])):
            heights = [row[cls] for row in counts]
            ax.bar(range(len(counts)), heights, bottom=bottom, color=colours(cls % colours.N), label=str(cls), width=0.85)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set(title=title, xlabel="client (partition id)")
        ax.set_xticks(range(len(counts)))
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("samples")
    axes[0][-1].legend(title="label", fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    return out


def partition_title(cohort: dict[str, Any]) -> str:
    spec = cohort.get("partition") or {}
    return f"{cohort.get('name')}: {PartitionSpec.model_validate(spec).label()}, seed {spec.get('seed')}"


def plot_traffic(cohorts: list[dict[str, Any]], out: Path) -> Path | None:
    """Bytes the FL server of each cohort sent and received over the run (from the run records)."""
    measured = [c for c in cohorts if c.get("traffic")]
    if not measured:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [c["name"] for c in measured]
    sent = [c["traffic"]["bytes_sent"] / 1e6 for c in measured]
    received = [c["traffic"]["bytes_received"] / 1e6 for c in measured]
    positions = range(len(names))
    ax.bar([p - 0.2 for p in positions], sent, width=0.4, label="server sent")
    ax.bar([p + 0.2 for p in positions], received, width=0.4, label="server received")
    ax.set_xticks(list(positions), names)
    ax.set(title="FL traffic per cohort (at the FL server)", ylabel="MB")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    return out


def plot_traffic_rate(prometheus_url: str, cohorts: list[dict[str, Any]], out: Path) -> Path | None:
    """FL traffic rate over time per cohort, from Prometheus, over the run's time window."""
    starts = [c["created"] for c in cohorts if c.get("created")]
    ends = [c["finished"] for c in cohorts if c.get("finished")]
    if not starts or not ends:
        return None
    promql = (
        'sum by (cohort) (rate(mlfo_fl_bytes_sent_total{side="server"}[30s]) + '
        'rate(mlfo_fl_bytes_received_total{side="server"}[30s]))'
    )
    series = query_range(prometheus_url, promql, min(starts) - 10, max(ends) + 10, 2)
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    t0 = min(starts)
    for item in series:
        points = [(float(t) - t0, float(v) / 1e3) for t, v in item["values"]]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=item["metric"].get("cohort", "?"))
    ax.set(title="FL traffic rate per cohort (Prometheus)", xlabel="seconds since the first intent", ylabel="kB/s")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    return out


PHASE_COLORS = {
    "sampling": "tab:gray", "send": "tab:purple", "receive": "tab:orange", "train": "tab:green",
    "upload": "tab:cyan", "aggregate": "tab:brown", "evaluate": "tab:olive", "idle": "lightgray",
}


def plot_round_anatomy(cohorts: list[dict[str, Any]], out: Path) -> Path | None:
    """Where each round's time went: a stacked bar per round (phases), a panel per cohort.

    A round marked with a red count got fewer results than it sampled.
    """
    measured = [c for c in cohorts if any(c.get("phases") or [])]
    if not measured:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(measured), 1, figsize=(8, 2.6 * len(measured)), squeeze=False, sharex=True)
    for ax, cohort in zip(axes[:, 0], measured):
        rounds = [(i + 1, p) for i, p in enumerate(cohort["phases"]) if p]
        positions = [r for r, _ in rounds]
        bottom = [0.0] * len(rounds)
        for phase in PHASES:
            heights = [p.get(phase, 0.0) for _, p in rounds]
            ax.bar(positions, heights, bottom=bottom, color=PHASE_COLORS[phase], label=phase, width=0.8)
            bottom = [b + h for b, h in zip(bottom, heights)]
        for index, (results, sampled) in enumerate(zip(cohort.get("results") or [], cohort.get("sampled") or [])):
            if sampled and results is not None and results < sampled:
                top = sum((cohort["phases"][index] or {}).values())
                ax.annotate(f"{results}/{sampled}", (index + 1, top), ha="center", va="bottom", color="red", fontsize=8)
        ax.set(title=f"{cohort['name']}: time per round by phase", ylabel="seconds")
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("round (red: results/sampled when fewer clients answered)")
    axes[0, 0].legend(ncol=4, fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    return out


def plot_assurance(cohorts: list[dict[str, Any]], out: Path) -> Path | None:
    """Each assured cohort's metric by round against its target: the target value dashed, the deadline
    dotted, and a mark at every decision of the closed loop that did something (its action kinds)."""
    assured = [c for c in cohorts if c.get("target")]
    if not assured:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(assured), 1, figsize=(8, 3.2 * len(assured)), squeeze=False)
    for ax, cohort in zip(axes[:, 0], assured):
        target = cohort["target"]
        metric = target.get("metric", "accuracy")
        values = cohort.get(metric) or []
        ax.plot(range(1, len(values) + 1), values, marker="o", color="tab:blue", label=metric)
        if target.get("value") is not None:
            ax.axhline(target["value"], color="tab:green", linestyle="--", label=f"target {target['value']:g}")
        if target.get("deadline_rounds"):
            ax.axvline(target["deadline_rounds"], color="gray", linestyle=":", label=f"deadline (round {target['deadline_rounds']})")
        for decision in cohort.get("decisions") or []:
            done = [a["kind"] for a in decision.get("actions", []) if a.get("status") == "done"]
            if not done:
                continue
            x = max(decision["round"], 0) + 0.5  # it acts on the round after the one it saw
            ax.axvline(x, color="tab:red", linewidth=1, alpha=0.7)
            ax.annotate(", ".join(sorted(set(done))), (x, ax.get_ylim()[0]), rotation=90, fontsize=7, va="bottom", ha="right",
                        color="tab:red")
        state = (cohort.get("assurance") or {}).get("state")
        ax.set(title=f"{cohort['name']}: {metric} against its target ({state or 'not assessed'}, policy {cohort.get('policy')})",
               xlabel="round (red: the closed loop acted before this round)", ylabel=metric)
        ax.legend(fontsize=7, loc="lower right" if metric == "accuracy" else "upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    return out


def decision_rows(cohorts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The closed loop's decisions of every cohort, one row per action (or per decision without one)."""
    rows = []
    for cohort in cohorts:
        for d in cohort.get("decisions") or []:
            base = {"cohort": cohort["name"], "round": d.get("round"), "trigger": d.get("trigger"), "policy": d.get("policy"),
                    "state": (d.get("assessment") or {}).get("state"), "reason": (d.get("assessment") or {}).get("reason"),
                    "rules": ", ".join(d.get("rules", [])), "outcome": d.get("outcome"), "error": d.get("error")}
            for action in d.get("actions") or [{}]:
                rows.append({**base, "action": action.get("kind"), "part": action.get("part"), "status": action.get("status"),
                             "detail": action.get("detail")})
    return rows


def build_report(run_dir: Path, formats: tuple[str, ...] = ("png",), prometheus_url: str | None = None,
                 extra_inputs: dict[str, Path] | None = None) -> dict[str, Any]:
    """Write RUN_DIR/report/: the plots in each of `formats` (png, svg, pdf), manifest.json and index.html."""
    run = load_run(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    cohorts = run["cohorts"]
    split = [(partition_title(c), c["label_counts"]) for c in cohorts if c.get("label_counts")]
    drawers: list[tuple[str, Any]] = [
        ("accuracy-loss", lambda path: plot_rounds(cohorts, path)),
        ("orchestration", lambda path: plot_orchestration(cohorts, path)),
        ("assurance", lambda path: plot_assurance(cohorts, path)),
        ("round-anatomy", lambda path: plot_round_anatomy(cohorts, path)),
        ("traffic", lambda path: plot_traffic(cohorts, path)),
        ("labels", lambda path: plot_label_distribution(split, path) if split else None),
    ]
    plots: list[Path] = []
    for name, draw in drawers:
        for i, fmt in enumerate(formats):
            drawn = draw(out / f"{name}.{fmt}")
            if drawn is None:
                break  # nothing to draw for this run
            if i == 0:
                plots.append(drawn)
    decisions = decision_rows(cohorts)
    if decisions:
        write_rows(out / "decisions.csv", decisions)
    prometheus_used = None
    if prometheus_url:
        try:
            rate_plot = plot_traffic_rate(prometheus_url, cohorts, out / "traffic-rate.png")
            if rate_plot:
                plots.append(rate_plot)
                prometheus_used = prometheus_url
        except Exception as err:  # Prometheus is optional: the records alone make a report
            prometheus_used = f"unreachable: {err.__class__.__name__}"
    manifest = dict(run.get("manifest") or {})
    inputs = dict(manifest.get("inputs", {}))
    for name, path in (extra_inputs or {}).items():
        inputs[name] = {"path": str(path), "sha256": file_sha256(path)}
    manifest.update({
        "inputs": inputs,
        "run": str(run_dir),
        "run_json_sha256": file_sha256(run_dir / "run.json"),
        "cohorts": [{k: c.get(k) for k in ("name", "deployment", "strategy", "clients", "state")} for c in cohorts],
        "plots": [p.name for p in plots],
        "prometheus": prometheus_used,
    })
    write_json_atomically(out / "manifest.json", manifest)
    result: dict[str, Any] = {"report_dir": str(out), "plots": [str(p) for p in plots], "manifest": str(out / "manifest.json")}
    result["html"] = str(write_html(out, run, plots, manifest))
    return result


RUN_CAPTIONS = {
    "accuracy-loss": "Held-out accuracy and loss of the global model by round, per cohort.",
    "orchestration": "Seconds from the intent to the cohort's FL clients running.",
    "assurance": "The closed loop: the target and what the MLFO decided, by round.",
    "round-anatomy": "Where each round's time went, phase by phase (they add up to the round's wall time).",
    "traffic": "FL traffic per cohort at the FL server.",
    "labels": "Samples of each label per client: how each cohort's clients split the data.",
    "traffic-rate": "FL traffic over time, from Prometheus.",
}


def write_html(out: Path, run: dict[str, Any], plots: list[Path], manifest: dict[str, Any]) -> Path:
    """index.html of a run: its cohorts, every figure with its caption and other formats, decisions, manifest."""
    cohorts = [{"cohort": c["name"], "state": c.get("state"), "strategy": c.get("strategy"), "clients": c.get("clients"),
                "rounds": len(c.get("accuracy") or []), "final_accuracy": (c.get("accuracy") or [None])[-1],
                "final_loss": (c.get("loss") or [None])[-1], "partition": c.get("partition"),
                "orchestration_s": c.get("orchestration_seconds"), "short_rounds": c.get("short_rounds"),
                "lost_clients": len(c.get("lost_clients") or [])} for c in run["cohorts"]]
    for row in cohorts:
        for key in ("final_accuracy", "final_loss", "orchestration_s"):
            if isinstance(row[key], float):
                row[key] = round(row[key], 4)
    facts = {"folder": str(run.get("run_dir", "")), "wall seconds": run.get("wall_seconds"),
             "network": conditions_text(run.get("conditions")),
             "versions": ", ".join(f"{k} {manifest[k]}" for k in ("mlfo", "flwr", "numpy", "python") if manifest.get(k)),
             "seeds": plain(manifest.get("seeds")), "machine": manifest.get("platform"),
             "inputs": ", ".join(f"{k}: {v.get('path')}" for k, v in (manifest.get("inputs") or {}).items())}
    parts = [f"<h1>mlfo run {html.escape(out.parent.name)}</h1><p id='missing'></p>",
             "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items() if v) + "</dl>",
             "<h2>Cohorts</h2>", html_table(cohorts)]
    for plot in plots:
        others = [p for p in sorted(out.glob(f"{plot.stem}.*")) if p.suffix in (".png", ".svg", ".pdf", ".csv")]
        links = " ".join(f"<a href='{html.escape(p.name)}'>{p.suffix[1:].upper()}</a>" for p in others)
        parts.append(f"<h2>{html.escape(plot.stem.replace('-', ' ').capitalize())}</h2><figure>"
                     f"<img src='{html.escape(plot.name)}' alt='{html.escape(plot.stem)}'>"
                     f"<figcaption>{html.escape(RUN_CAPTIONS.get(plot.stem, ''))}</figcaption><p class='links'>{links}</p></figure>")
    decisions = decision_rows(run["cohorts"])
    if decisions:
        parts += ["<h2>Decisions of the closed loop</h2>", html_table(decisions)]
    parts.append(f"<h2>Manifest</h2><pre>{html.escape(json.dumps(manifest, indent=2))}</pre>")
    return write_page_file(out / "index.html", f"mlfo run {out.parent.name}", "".join(parts))
