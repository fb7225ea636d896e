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
from mlfo_toolkit.reports.runs import file_sha256, plot_rounds, pyplot, save_figure, write_rows
from mlfo_toolkit.util.files import write_json_atomically, write_text


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


def build_report(run_dir: Path, fmt: str = "png", prometheus_url: str | None = None, extra_inputs: dict[str, Path] | None = None) -> dict[str, Any]:
    """Write RUN_DIR/report/: PNG plots, manifest.json, and index.html with --format html."""
    run = load_run(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    cohorts = run["cohorts"]
    plots = [plot_rounds(cohorts, out / "accuracy-loss.png"), plot_orchestration(cohorts, out / "orchestration.png")]
    split = [(partition_title(c), c["label_counts"]) for c in cohorts if c.get("label_counts")]
    labels = plot_label_distribution(split, out / "labels.png") if split else None
    for optional in (plot_assurance(cohorts, out / "assurance.png"), plot_round_anatomy(cohorts, out / "round-anatomy.png"),
                     plot_traffic(cohorts, out / "traffic.png"), labels):
        if optional:
            plots.append(optional)
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
    if fmt == "html":
        result["html"] = str(write_html(out, run, plots, manifest))
    return result


def write_html(out: Path, run: dict[str, Any], plots: list[Path], manifest: dict[str, Any]) -> Path:
    rows = "".join(
        f"<tr><td>{html.escape(str(c['name']))}</td><td>{html.escape(str(c.get('strategy')))}</td><td>{c.get('clients')}</td>"
        f"<td>{(c['accuracy'] or [float('nan')])[-1]:.3f}</td><td>{(c['loss'] or [float('nan')])[-1]:.3f}</td>"
        f"<td>{c.get('orchestration_seconds') or 0:.2f}</td></tr>"
        for c in run["cohorts"]
    )
    images = "".join(f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"></figure>' for p in plots)
    decisions = decision_rows(run["cohorts"])
    columns = ("cohort", "round", "trigger", "state", "reason", "rules", "action", "part", "status", "detail", "outcome")
    if decisions:
        images += ("<h2>Decisions of the closed loop</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r[c]))}</td>" for c in columns) + "</tr>"
                             for r in decisions) + "</table>")
    page = (
        "<!doctype html><meta charset='utf-8'><title>mlfo run report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}img{max-width:100%}</style>"
        f"<h1>mlfo run {html.escape(str(run.get('run_dir', '')))}</h1>"
        "<table><tr><th>cohort</th><th>strategy</th><th>clients</th><th>final accuracy</th><th>final loss</th><th>orchestration s</th></tr>"
        f"{rows}</table>{images}<h2>Manifest</h2><pre>{html.escape(json.dumps(manifest, indent=2))}</pre>"
    )
    path = out / "index.html"
    write_text(path, page)
    return path
