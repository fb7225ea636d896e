"""`mlfo report EXPERIMENT_DIR [EXPERIMENT_DIR ...]`: every run of one or more experiments side by side.

Writes the report folder (EXPERIMENT_DIR/report/, or the one given for several experiments):

* accuracy and loss by round: per sweep point its mean over the repetitions, a band from the lowest
  to the highest run, and each run thin; a legend entry per point;
* time per round, the same way, with the timeline's events marked by number at the round they fell
  into (the numbers are explained in the events table) and rounds with fewer results than sampled
  crossed;
* FL traffic per round per point (mean, and the range of the runs), how each point's clients split
  the data, and the measured rate around meter and link events;
* a table per sweep point (final accuracy, time to the target accuracy, traffic, ...);
* index.html: the experiment (name, description, file, grid, seeds, versions), the tables and every
  figure with its caption and data (CSV, JSON) links; one folder, it opens from disk.

A sweep point keeps its colour, marker and line style in every figure (reports/style.py). Figures are
written in each of `formats` (png, svg, pdf), sized for a paper's column or its width.
"""

from __future__ import annotations

import html
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlfo_toolkit.errors import NotFoundError
from mlfo_toolkit.reports.page import conditions_text, html_table, plain, write_page_file
from mlfo_toolkit.reports.report import partition_title, plot_label_distribution
from mlfo_toolkit.reports.runs import write_rows
from mlfo_toolkit.reports.style import COLUMN, WIDE, integer_rounds, pyplot, save, series
from mlfo_toolkit.util.files import write_json_atomically


def is_experiment(folder: Path) -> bool:
    return (folder / "index.json").is_file() and (folder / "runs").is_dir()


def load_index(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "index.json").read_text()))


def load_runs(folder: Path) -> list[dict[str, Any]]:
    index = load_index(folder)
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
    return ", ".join(f"{k}={plain(v, k)}" for k, v in point.items()) or "base"


def _time_to(accuracy: list[float], seconds: list[float | None], target: float) -> float | None:
    elapsed = 0.0
    for acc, took in zip(accuracy, seconds):
        elapsed += took or 0.0
        if acc is not None and acc >= target:
            return round(elapsed, 2)
    return None


@dataclass
class Point:
    """A sweep point (of one experiment): its runs, and its look in every figure."""

    label: str
    index: int
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def style(self) -> dict[str, Any]:
        return series(self.index)

    def cohorts(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(entry, cohort) for entry in self.entries for cohort in entry["run"]["cohorts"]]


@dataclass
class NumberedEvent:
    number: int
    round: int | None
    kind: str
    target: str
    effect: str
    runs: list[str]


def _target_text(what: dict[str, Any]) -> str:
    return ", ".join(f"{k}={plain(v)}" for k, v in what.items() if v not in (None, False, "")) if what else ""


def number_events(points: list[Point]) -> list[NumberedEvent]:
    """The timeline's events of every run, numbered once per (round, kind, target) in round order."""
    found: dict[tuple[Any, ...], NumberedEvent] = {}
    for point in points:
        for entry in point.entries:
            for event in entry["run"].get("events", []):
                target = _target_text(event.get("what") or {})
                key = (event.get("round") or 0, event["kind"], target)
                if key not in found:
                    found[key] = NumberedEvent(0, event.get("round"), event["kind"], target,
                                               effect_text(event.get("effect") or {}), [])
                found[key].runs.append(entry["key"])
    ordered = sorted(found.values(), key=lambda e: (e.round or 0, e.kind, e.target))
    for number, event in enumerate(ordered, start=1):
        event.number = number
    return ordered


def _mean_and_band(ax: Any, point: Point, curves: list[list[float]], label: str) -> None:
    """Each run thin, the mean bold with its markers, the band from the lowest to the highest run."""
    style = point.style
    for curve in curves:
        ax.plot(range(1, len(curve) + 1), curve, color=style["color"], alpha=0.3, linewidth=0.7, linestyle=style["linestyle"])
    length = min((len(c) for c in curves), default=0)
    if not length:
        return
    xs = list(range(1, length + 1))
    values = [[c[i] for c in curves] for i in range(length)]
    ax.plot(xs, [statistics.fmean(v) for v in values], label=label, linewidth=1.8, **style)
    if len(curves) > 1:
        ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=style["color"], alpha=0.15, linewidth=0)


def _legend(ax: Any, count: int) -> None:
    if count > 3:  # beside the axes: inside, it would cover the lines
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(loc="best")


def _figure_rounds(points: list[Point], out: Path, formats: tuple[str, ...]) -> list[Path]:
    plt = pyplot()
    rows: list[dict[str, Any]] = []
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=WIDE)
    for point in points:
        accuracy, loss = [], []
        for entry, cohort in point.cohorts():
            accuracy.append([a for a in cohort["accuracy"] if a is not None])
            loss.append([v for v in cohort["loss"] if v is not None])
            for i, (acc, value) in enumerate(zip(cohort["accuracy"], cohort["loss"]), start=1):
                rows.append({"point": point.label, "run": entry["key"], "cohort": cohort["name"], "round": i, "accuracy": acc,
                             "loss": value})
        label = f"{point.label} (n={len(accuracy)})"
        _mean_and_band(acc_ax, point, accuracy, label)
        _mean_and_band(loss_ax, point, loss, label)
    acc_ax.set(xlabel="round", ylabel="held-out accuracy", title="Accuracy by round")
    loss_ax.set(xlabel="round", ylabel="held-out loss", title="Loss by round")
    for ax in (acc_ax, loss_ax):
        integer_rounds(ax)
    _legend(loss_ax, len(points))
    return _save(fig, out / "accuracy-loss", formats, rows)


def _figure_round_time(points: list[Point], events: list[NumberedEvent], out: Path, formats: tuple[str, ...]) -> list[Path]:
    plt = pyplot()
    rows: list[dict[str, Any]] = []
    fig, ax = plt.subplots(figsize=WIDE)
    crossed = False
    for point in points:
        curves = []
        for entry, cohort in point.cohorts():
            seconds = [s if s is not None else 0.0 for s in cohort.get("round_seconds") or []]
            curves.append(seconds)
            short = [r for r in cohort.get("short_rounds", []) if r <= len(seconds)]
            if short:
                ax.scatter(short, [seconds[r - 1] for r in short], marker="x", s=40, color="#D55E00", zorder=4,
                           label=None if crossed else "fewer results than sampled")
                crossed = True
            for i, took in enumerate(seconds, start=1):
                rows.append({"point": point.label, "run": entry["key"], "cohort": cohort["name"], "round": i, "seconds": took,
                             "short": i in cohort.get("short_rounds", [])})
            for event in entry["run"].get("events", []):
                rows.append({"point": point.label, "run": entry["key"], "event": event["kind"], "round": event.get("round"),
                             "phase": event.get("phase"), "offset_seconds": event.get("offset_seconds"), "ok": event.get("ok"),
                             "effect": effect_text(event.get("effect") or {})})
        _mean_and_band(ax, point, curves, f"{point.label} (n={len(curves)})")
    # Events by number, one label per round (their text is in the events table): nothing overprints.
    by_round: dict[int, list[int]] = defaultdict(list)
    for event in events:
        if event.round:
            by_round[event.round].append(event.number)
    top = ax.get_ylim()[1]
    for number, numbers in sorted(by_round.items()):
        ax.axvline(number - 0.5, color="#555555", linestyle=":", linewidth=0.9, zorder=1)
        ax.annotate(",".join(str(n) for n in numbers), (number - 0.5, top), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7, bbox={"boxstyle": "circle,pad=0.2", "fc": "white", "ec": "#555555", "lw": 0.6})
    ax.set(xlabel="round (numbers: events, see the events table)", ylabel="seconds")
    ax.set_title("Time per round", pad=14)  # above the event numbers on the top edge
    integer_rounds(ax)
    _legend(ax, len(points))
    return _save(fig, out / "round-time", formats, rows)


def _figure_traffic(points: list[Point], out: Path, formats: tuple[str, ...]) -> list[Path]:
    plt = pyplot()
    rows: list[dict[str, Any]] = []
    fig, ax = plt.subplots(figsize=COLUMN if len(points) <= 4 else WIDE)
    for point in points:
        per_round = []
        for entry, cohort in point.cohorts():
            traffic = cohort.get("traffic") or {}
            total = int(traffic.get("bytes_sent", 0)) + int(traffic.get("bytes_received", 0))
            per_round.append(total / max(1, len(cohort["accuracy"])) / 1e6)
            rows.append({"point": point.label, "run": entry["key"], "cohort": cohort["name"], "bytes_total": total,
                         "bytes_per_round": round(per_round[-1] * 1e6)})
        if not per_round:
            continue
        mean = statistics.fmean(per_round)
        ax.bar(point.index, mean, color=point.style["color"], label=f"{point.index + 1}: {point.label}", hatch=("", "//", "..", "xx")[point.index % 4],
               edgecolor="white", yerr=[[mean - min(per_round)], [max(per_round) - mean]], capsize=3)
    ax.set_xticks([p.index for p in points], [str(p.index + 1) for p in points])
    ax.set(xlabel="sweep point (see the legend)", ylabel="MB per round (server side)", title="FL traffic per round")
    ax.grid(axis="x", visible=False)
    _legend(ax, 4)  # always beside the bars: the labels are long
    return _save(fig, out / "traffic", formats, rows)


KIND_HATCHES = ("", "//", "..", "xx", "\\\\", "++")


def _figure_backhaul(points: list[Point], out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Hierarchical FL: the bytes over the edges' backhauls per global round (counted on the links' interfaces),
    stacked by link kind, per sweep point; beside them the accuracy by round. Drawn when some run counted them."""
    measured = [(point, entry, cohort) for point in points for entry, cohort in point.cohorts() if cohort.get("backhaul")]
    if not measured:
        return []
    plt = pyplot()
    kinds = sorted({k for _, _, c in measured for k in c["backhaul"].get("mean_per_round_by_kind", {})})
    rows: list[dict[str, Any]] = []
    fig, (bytes_ax, acc_ax) = plt.subplots(1, 2, figsize=WIDE)
    shown = []
    for point in points:
        runs = [c["backhaul"] for p, _, c in measured if p is point]
        if not runs:
            continue
        shown.append(point)
        bottom = 0.0
        for k, kind in enumerate(kinds):
            values = [r["mean_per_round_by_kind"].get(kind, 0) / 1e6 for r in runs]
            mean = statistics.fmean(values)
            bytes_ax.bar(point.index, mean, bottom=bottom, color=point.style["color"], hatch=KIND_HATCHES[k % len(KIND_HATCHES)],
                         edgecolor="white", label=kind if point is shown[0] else None)
            bottom += mean
            rows.append({"point": point.label, "kind": kind, "mb_per_round_mean": round(mean, 4), "runs": len(values)})
        for _, cohort in point.cohorts():
            acc_ax.plot(range(1, len(cohort["accuracy"]) + 1), cohort["accuracy"], color=point.style["color"],
                        marker=point.style["marker"], linestyle=point.style["linestyle"], markersize=3, linewidth=1,
                        label=f"{point.index + 1}: {point.label}" if cohort is point.cohorts()[0][1] else None)
    bytes_ax.set_xticks([p.index for p in shown], [str(p.index + 1) for p in shown])
    bytes_ax.set(xlabel="sweep point", ylabel="MB per global round", title="Backhaul bytes (on its interfaces), by link kind")
    bytes_ax.grid(axis="x", visible=False)
    bytes_ax.legend(fontsize="x-small", title="link kind", title_fontsize="x-small")
    acc_ax.set(xlabel="global round", ylabel="held-out accuracy", title="Accuracy")
    integer_rounds(acc_ax)
    _legend(acc_ax, 4)
    return _save(fig, out / "backhaul", formats, rows)


def _figure_meter_rates(entries: list[dict[str, Any]], out: Path, formats: tuple[str, ...]) -> list[Path]:
    rows = []
    for entry in entries:
        for event in entry["run"].get("events", []):
            effect = event.get("effect") or {}
            if "measured_mbit_before" in effect:
                rows.append({"point": point_label(entry["point"]), "run": entry["key"], "event": event["kind"], "round": event.get("round"),
                             "rate": effect.get("rate") or effect.get("link"), "before_mbit": effect["measured_mbit_before"],
                             "after_mbit": effect["measured_mbit_after"]})
    if not rows:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=WIDE)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["before_mbit"] for r in rows], width=0.4, label="just before", color=series(0)["color"])
    ax.bar([x + 0.2 for x in xs], [r["after_mbit"] for r in rows], width=0.4, label="just after", color=series(1)["color"], hatch="//")
    ax.set_xticks(list(xs), [f"{r['run']}\n{r['event']} {r['rate'] or ''} (round {r['round']})" for r in rows], fontsize=6)
    ax.set(ylabel="Mbit/s (iperf3, client to FL server)", title="Measured rate around each meter or link event")
    ax.legend()
    return _save(fig, out / "meter-rates", formats, rows)


def _figure_availability(entries: list[dict[str, Any]], out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Who was away when: per run with an availability plan, a bar per absence (client by round), and a cross where the
    MLFO saw the client lost."""
    runs = [e for e in entries if e["run"].get("availability")]
    if not runs:
        return []
    plt = pyplot()
    shown = runs[:4]
    fig, axes = plt.subplots(len(shown), 1, figsize=(WIDE[0], 1.2 + 1.6 * len(shown)), squeeze=False, sharex=True)
    rows: list[dict[str, Any]] = []
    for ax, entry in zip(axes[:, 0], shown, strict=True):
        plan = entry["run"]["availability"]
        rounds, clients = int(plan["rounds"]), int(plan["clients"])
        lost = {int((e.get("what") or {}).get("part", -1)): e.get("round") for e in entry["run"].get("events", [])
                if e.get("kind") == "kill" and (e.get("effect") or {}).get("client_state") == "lost"}
        for absence in plan["absences"]:
            back = absence["back"] or rounds + 1
            ax.barh(absence["part"], back - absence["away"], left=absence["away"] - 0.5, height=0.6, color=series(1)["color"],
                    hatch="//", edgecolor="white")
            rows.append({"run": entry["key"], "cohort": plan["cohort"], "part": absence["part"], "away_round": absence["away"],
                         "back_round": absence["back"], "seen_lost": absence["part"] in lost})
        for part, round_ in lost.items():
            if round_ is not None:
                ax.plot(round_, part, marker="x", color=series(0)["color"], linestyle="none")
        first = min((a["away"] for a in plan["absences"]), default=1)
        shares = [v for r, v in plan["away_share_by_round"].items() if int(r) >= first] or [0.0]
        ax.set(ylabel="client part", ylim=(-0.7, clients - 0.3), xlim=(0.5, rounds + 0.5),
               title=f"{entry['key']}: {len(plan['absences'])} absences; from round {first}, {statistics.fmean(shares):.0%} of the "
                     f"clients away on average")
        ax.set_yticks(range(clients))
        ax.tick_params(axis="y", labelsize=6)
    axes[-1, 0].set_xlabel("round")
    axes[-1, 0].set_xticks(range(1, max(int(r["run"]["availability"]["rounds"]) for r in shown) + 1))
    return _save(fig, out / "availability", formats, rows)


def _client_profiles(entry: dict[str, Any], cohort: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """A cohort's clients by partition id: the host each ran on and its device profile (run.json's `profiles`)."""
    profiles = entry["run"].get("profiles") or {}
    by_ip = {p.get("ip"): (host, p) for host, p in (profiles.get("clients") or {}).items()}
    found = {str(a["part"]): by_ip.get(a["agent"].rsplit(":", 1)[0]) for a in cohort.get("client_agents") or []}
    return {part: hit for part, hit in found.items() if hit is not None}


def _scatter(points: list[Point], rows: list[dict[str, Any]], x: str, y: str, labels: tuple[str, str, str], log_y: bool,
             stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """One marker per row at (x, y), in its sweep point's colour and marker; log x (CPU shares span decades)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=COLUMN)
    for point in points:
        mine = [r for r in rows if r["index"] == point.index]
        if mine:
            ax.plot([r[x] for r in mine], [r[y] for r in mine], linestyle="none", alpha=0.8, marker=point.style["marker"],
                    color=point.style["color"], label=f"{point.index + 1}: {point.label}")
    ax.set(xlabel=labels[0], ylabel=labels[1], title=labels[2])
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    _legend(ax, 4)  # always beside: a drawn profile's label is long
    return _save(fig, stem, formats, [{k: v for k, v in r.items() if k != "index"} for r in rows])


def _figure_profiles(points: list[Point], out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Round time against the CPU share of the cohort's slowest client, per run with device profiles."""
    rows: list[dict[str, Any]] = []
    for point in points:
        for entry, cohort in point.cohorts():
            seconds = [s for s in (cohort.get("round_seconds") or []) if s is not None]
            shares = [p["cpus"] for _, p in _client_profiles(entry, cohort).values()]
            if not seconds or not shares:
                continue
            spec = entry["run"]["profiles"]["spec"]
            rows.append({"point": point.label, "index": point.index, "run": entry["key"], "cohort": cohort["name"],
                         "profile": spec.get("class") or (spec.get("draw") or {}).get("distribution"),
                         "slowest_cpus": min(shares), "mean_cpus": round(statistics.fmean(shares), 3),
                         "median_round_seconds": round(statistics.median(seconds), 3), "max_round_seconds": round(max(seconds), 3)})
    if not rows:
        return []
    return _scatter(points, rows, "slowest_cpus", "median_round_seconds",
                    ("CPU share of the slowest client (cores)", "median seconds per round", "Round time against the slowest client"),
                    False, out / "profiles", formats)


def _figure_client_times(points: list[Point], out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Each client's training seconds in each round against its CPU share (runs with device profiles)."""
    rows: list[dict[str, Any]] = []
    for point in points:
        for entry, cohort in point.cohorts():
            hosts = _client_profiles(entry, cohort)
            for number, seconds in enumerate(cohort.get("client_train_seconds") or [], start=1):
                for part, value in (seconds or {}).items():
                    if part in hosts:
                        host, profile = hosts[part]
                        rows.append({"point": point.label, "index": point.index, "run": entry["key"], "cohort": cohort["name"],
                                     "round": number, "part": int(part), "host": host, "cpus": profile["cpus"], "train_seconds": value})
    if not rows:
        return []
    return _scatter(points, rows, "cpus", "train_seconds",
                    ("client's CPU share (cores)", "training seconds in a round", "Each client's training time"),
                    True, out / "client-times", formats)


def _bytes(traffic: dict[str, Any] | None) -> int:
    """Both directions of a traffic record (0 without one)."""
    return int((traffic or {}).get("bytes_sent", 0)) + int((traffic or {}).get("bytes_received", 0))


def _table(points: list[Point], target: float) -> list[dict[str, Any]]:
    table = []
    for point in points:
        finals, times, traffic, lengths, run_seconds, states, wants = [], [], [], [], [], [], set()
        backhaul = [float(c["backhaul"]["mean_per_round"]) for _, c in point.cohorts()
                    if (c.get("backhaul") or {}).get("mean_per_round") is not None]
        aggregators = [float(len(c.get("tiers") or [])) for _, c in point.cohorts() if c.get("aggregation") not in (None, "flat")]
        # FL bytes per round by tier: at the global server, and at the edge aggregators' SuperLinks together.
        edge_tier = [sum(_bytes(t.get("traffic")) for t in c["tiers"]) / max(1, len(c["accuracy"])) for _, c in point.cohorts()
                     if c.get("tiers")]
        actions: dict[str, int] = defaultdict(int)
        for _, cohort in point.cohorts():
            if cohort["accuracy"] and cohort["accuracy"][-1] is not None:
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
        rounds_to = []
        for _, cohort in point.cohorts():
            hit = next((i for i, a in enumerate(cohort["accuracy"], start=1) if a is not None and a >= target), None)
            rounds_to.append(hit)
        hits = [r for r in rounds_to if r is not None]
        table.append({
            "point": point.label, "runs": len(point.entries),
            "final_accuracy_mean": round(statistics.fmean(finals), 4) if finals else None,
            "final_accuracy_spread": round(max(finals) - min(finals), 4) if finals else None,
            "target_accuracy": ", ".join(f"{w:g}" for w in sorted(wants)),
            "rounds_to_target_mean": round(statistics.fmean(hits), 2) if hits else None,
            "seconds_to_target": round(statistics.fmean(reached), 2) if reached else None,
            "reached_target": f"{len(reached)}/{len(times)}",
            "traffic_mb_mean": round(statistics.fmean(traffic) / 1e6, 2) if traffic else None,
            "backhaul_mb_per_round_mean": round(statistics.fmean(backhaul) / 1e6, 3) if backhaul else None,
            "aggregators_mean": round(statistics.fmean(aggregators), 2) if aggregators else None,
            "global_tier_mb_per_round_mean": round(statistics.fmean(t / max(1, n) for t, n in zip(traffic, lengths)) / 1e6, 3)
            if traffic and any(lengths) else None,
            "edge_tier_mb_per_round_mean": round(statistics.fmean(edge_tier) / 1e6, 3) if edge_tier else None,
            "rounds_mean": round(statistics.fmean(lengths), 2) if lengths else None,
            "round_seconds_total_mean": round(statistics.fmean(run_seconds), 1) if run_seconds else None,
            "target_met": f"{assured.count('met')}/{len(assured)}" if assured else None,
            "actions": ", ".join(f"{k} x{v}" for k, v in sorted(actions.items())) or None,
            "events": sorted({e["kind"] for entry in point.entries for e in entry["run"].get("events", [])}),
        })
    return table


CAPTIONS = {
    "accuracy-loss": "Held-out accuracy and loss of the global model by round: per sweep point the mean over its runs "
                     "(bold, with markers), the range of the runs (band) and each run (thin).",
    "round-time": "Seconds per round, per sweep point as above. Numbers mark the round as which the timeline's events "
                  "fired (see the events table); crosses mark rounds that got fewer results than they sampled.",
    "traffic": "FL traffic per round at the FL server (both directions), mean per sweep point; the whiskers span the runs.",
    "backhaul": "Hierarchical FL: bytes that crossed the edges' backhaul links per global round (rounds 2 on, counted on "
                "each link's interface: FL updates and every other packet), stacked by link kind, mean per sweep point; "
                "beside them each run's held-out accuracy by round.",
    "labels": "Samples of each label per client (the first cohort of each sweep point; points with the same split share "
              "a panel): how the clients split the data.",
    "meter-rates": "Rate measured with iperf3 just before and just after each meter or link event.",
    "profiles": "Median seconds per round of each run against the CPU share of its cohort's slowest client (device "
                "profiles; log scale): with every client sampled, a round waits for the slowest one.",
    "client-times": "Each client's training seconds in each round (a dot per client and round, log scales) against "
                    "its CPU share: the stragglers are the dots at the top left.",
    "availability": "Who was away when (the experiment's availability plan, up to four runs): a hatched bar per absence, "
                    "from the round its client's SuperNode was killed to the round it was restarted; a cross where the "
                    "MLFO saw the client lost.",
}


def build_experiment_report(folders: Path | list[Path], target: float = 0.9, formats: tuple[str, ...] = ("png",),
                            out: Path | None = None) -> dict[str, Any]:
    """The report of one experiment folder (in FOLDER/report/), or of several side by side (in `out`)."""
    folders = [folders] if isinstance(folders, Path) else list(folders)
    out = out or folders[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    several = len(folders) > 1
    experiments = []
    points: dict[str, Point] = {}
    every: list[dict[str, Any]] = []
    for folder in folders:
        index, runs = load_index(folder), load_runs(folder)
        name = str(index.get("experiment") or folder.name)
        experiments.append({"folder": folder, "index": index, "runs": runs, "name": name})
        every += runs
        for entry in runs:
            label = point_label(entry["point"])
            label = f"{name}: {label}" if several else label
            points.setdefault(label, Point(label, len(points))).entries.append(entry)
    ordered = list(points.values())
    events = number_events(ordered)
    figures: dict[str, list[Path]] = {
        "accuracy-loss": _figure_rounds(ordered, out, formats),
        "round-time": _figure_round_time(ordered, events, out, formats),
        "traffic": _figure_traffic(ordered, out, formats),
    }
    # One panel per distinct split (points that differ only in, say, the strategy share theirs).
    splits: dict[str, tuple[list[int], list[list[int]]]] = {}
    for point in ordered:
        cohort = next((c for _, c in point.cohorts() if c.get("label_counts")), None)
        if cohort is not None:
            key = json.dumps([partition_title(cohort), cohort["label_counts"]])
            splits.setdefault(key, ([], cohort["label_counts"]))[0].append(point.index + 1)
    split = [(f"point{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}: {json.loads(key)[0]}", counts)
             for key, (numbers, counts) in splits.items()]
    if split:
        rows = [{"points": title.split(":")[0], "client": client, "label": label, "samples": n}
                for title, counts in split for client, row in enumerate(counts) for label, n in enumerate(row)]
        figures["labels"] = [plot_label_distribution(split, out / f"labels.{fmt}") for fmt in formats]
        write_rows(out / "labels.csv", rows)
        write_json_atomically(out / "labels.json", rows)
    # Figures drawn only when some run has what they show (meter events, device profiles, an availability plan).
    optional = {"meter-rates": _figure_meter_rates(every, out, formats), "profiles": _figure_profiles(ordered, out, formats),
                "client-times": _figure_client_times(ordered, out, formats), "availability": _figure_availability(every, out, formats),
                "backhaul": _figure_backhaul(ordered, out, formats)}
    figures.update({key: paths for key, paths in optional.items() if paths})
    table = _table(ordered, target)
    write_rows(out / "table.csv", table)
    write_json_atomically(out / "table.json", table)
    event_rows = [{"number": e.number, "round": e.round, "kind": e.kind, "target": e.target, "effect": e.effect,
                   "runs": len(e.runs)} for e in events]
    write_rows(out / "events.csv", event_rows)
    page = write_page(out, experiments, ordered, figures, table, event_rows)
    return {"report": str(out), "plots": [str(paths[0]) for paths in figures.values()],
            "figures": {k: [str(p) for p in v] for k, v in figures.items()}, "table": table, "events": event_rows,
            "html": str(page), "data": sorted(str(p) for p in out.glob("*.csv"))}


def _save(fig: Any, stem: Path, formats: tuple[str, ...], rows: list[dict[str, Any]]) -> list[Path]:
    paths = save(fig, stem, formats)
    write_rows(stem.with_suffix(".csv"), rows)
    write_json_atomically(stem.with_suffix(".json"), rows)
    return paths


def _description(source: str | None) -> str:
    """The experiment's description: its file's `description:`, else the comment lines it starts with."""
    if not source or not Path(source).is_file():
        return ""
    text = Path(source).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and data.get("description"):
        return str(data["description"])
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def write_page(out: Path, experiments: list[dict[str, Any]], points: list[Point], figures: dict[str, list[Path]],
               table: list[dict[str, Any]], events: list[dict[str, Any]]) -> Path:
    """index.html: everything of the report on one page that opens from disk."""
    parts = []
    title = " vs ".join(e["name"] for e in experiments)
    parts.append(f"<h1>Experiment {html.escape(title)}</h1><p id='missing'></p>")
    for experiment in experiments:
        index, runs = experiment["index"], experiment["runs"]
        first = runs[0]["run"]
        manifest = first.get("manifest") or {}
        grid: dict[str, list[str]] = defaultdict(list)
        for entry in runs:
            for key, value in entry["point"].items():
                text = plain(value, key)
                if text not in grid[key]:
                    grid[key].append(text)
        seeds = sorted({entry.get("seed") for entry in runs if entry.get("seed") is not None})
        facts = {
            "description": _description(index.get("source")),
            "file": index.get("source", ""),
            "folder": str(experiment["folder"]),
            "backend": first.get("backend", ""),
            "network": conditions_text(first.get("conditions")),
            "grid": "; ".join(f"{k}: {' | '.join(v)}" for k, v in grid.items()) or "(one point)",
            "seeds": ", ".join(str(s) for s in seeds),
            "runs": f"{len(runs)} finished",
            "versions": ", ".join(f"{k} {manifest[k]}" for k in ("mlfo", "flwr", "numpy", "python") if manifest.get(k)),
            "machine": plain(manifest.get("platform") or ""),
            "file sha256": ((manifest.get("inputs") or {}).get("experiment") or {}).get("sha256", ""),
        }
        if len(experiments) > 1:
            parts.append(f"<h2>{html.escape(experiment['name'])}</h2>")
        parts.append("<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items() if v)
                     + "</dl>")
    parts.append("<h2>Sweep points</h2>")
    numbered = [{"#": p.index + 1, **row} for p, row in zip(points, table)]
    parts.append(html_table(numbered))
    parts.append("<h2>Events</h2>")
    parts.append(html_table(events))
    for key, paths in figures.items():
        shown = next((p for p in paths if p.suffix == ".png"), None) or next((p for p in paths if p.suffix == ".svg"), None)
        links = [f"<a href='{html.escape(p.name)}'>{p.suffix[1:].upper()}</a>" for p in paths]
        for data in (out / f"{key}.csv", out / f"{key}.json"):
            if data.is_file():
                links.append(f"<a href='{html.escape(data.name)}'>data ({data.suffix[1:].upper()})</a>")
        image = f"<img src='{html.escape(shown.name)}' alt='{html.escape(key)}'>" if shown else ""
        parts.append(f"<h2>{html.escape(key.replace('-', ' ').capitalize())}</h2><figure>{image}"
                     f"<figcaption>{html.escape(CAPTIONS.get(key, ''))}</figcaption><p class='links'>{' '.join(links)}</p></figure>")
    manifest = experiments[0]["runs"][0]["run"].get("manifest") or {}
    parts.append(f"<h2>Manifest (first run)</h2><pre>{html.escape(json.dumps(manifest, indent=2))}</pre>")
    return write_page_file(out / "index.html", title, "".join(parts))


def effect_text(effect: dict[str, Any]) -> str:
    """An event's effect in one line for tables: its scalar values, key=value."""
    return ", ".join(f"{k}={v}" for k, v in effect.items() if isinstance(v, (str, int, float, bool)) or v is None)
