"""Link traces: a link's rate (and, where the kernel has netem, its delay and loss) following a CSV over time.

A trace is a CSV with a header: `seconds,rate_mbit` and optionally `delay_ms` and `loss_percent`. Each
row holds from its time until the next row's; the last row holds for the median step, which is when a
looped trace starts again. The first row is at 0 s.

Replaying is a process of its own (`python -m mlfo_toolkit.net.traces`), started by `mlfo topo trace` or
an experiment's `trace` event and recorded in the network's state like every other process. It shapes
both ends of the link through Mininet's HTB class (as `set_link` does) at each row's time and, where
netem exists, sets delay and loss on a netem qdisc under it. It writes what it applied, one JSON line
per row (`requested_at` before it began shaping, `at` once the rate was in place), and on SIGTERM or at the end of an unlooped trace puts the link's configured rate back.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.net.changes import _in_node, link_ends, remove_shaping, set_link
from mlfo_toolkit.net.state import network_topology, running_network, save_state, spawn_recorded, stop_processes
from mlfo_toolkit.util.files import read_input
from mlfo_toolkit.util.resources import resource_path

COLUMNS = ("seconds", "rate_mbit", "delay_ms", "loss_percent")
LIMITS = {"rate_mbit": (0.001, 100_000.0), "delay_ms": (0.0, 10_000.0), "loss_percent": (0.0, 100.0)}
MAX_ROWS = 100_000


@dataclass(frozen=True)
class TracePoint:
    seconds: float
    rate_mbit: float
    delay_ms: float | None = None
    loss_percent: float | None = None


@dataclass
class LinkTrace:
    source: str
    points: list[TracePoint]

    @property
    def step(self) -> float:
        gaps = [b.seconds - a.seconds for a, b in zip(self.points, self.points[1:], strict=False)]
        return median(gaps) if gaps else 1.0

    @property
    def duration(self) -> float:
        """Seconds until a looped trace starts again: the last row holds for the median step."""
        return self.points[-1].seconds + self.step

    def at(self, seconds: float) -> TracePoint:
        """The row in force `seconds` after the start (looping)."""
        offset = seconds % self.duration
        current = self.points[0]
        for point in self.points:
            if point.seconds > offset:
                break
            current = point
        return current

    def mean_rate(self, start: float, end: float, samples: int = 50) -> float:
        """The trace's average rate over [start, end): what a throughput measurement over that window should see."""
        width = (end - start) / samples
        return sum(self.at(start + (i + 0.5) * width).rate_mbit for i in range(samples)) / samples


def trace_path(name: str) -> Path:
    """A trace file: a path, or the name of a shipped one (`leo-pass`, `cellular-drive`)."""
    path = Path(name)
    if path.suffix == ".csv" or path.exists() or "/" in name:
        return path
    shipped = resource_path("topologies") / "traces" / f"{name}.csv"
    if not shipped.exists():
        known = sorted(p.stem for p in (resource_path("topologies") / "traces").glob("*.csv"))
        raise ValidationError(f"no trace '{name}'", field="trace", hint=f"a CSV path, or a shipped trace: {', '.join(known)}")
    return shipped


def parse_trace(text: str, source: str = "<trace>") -> LinkTrace:
    """Check and read a trace; errors name the line and the column."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if "seconds" not in header or "rate_mbit" not in header:
        raise ValidationError(f"the header must name seconds and rate_mbit (has: {', '.join(header) or 'nothing'})",
                              field="header", line=1, source=source, hint=f"columns: {', '.join(COLUMNS)}")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise ValidationError(f"unknown column {unknown[0]!r}", field=unknown[0], line=1, source=source,
                              hint=f"columns: {', '.join(COLUMNS)}")
    points: list[TracePoint] = []
    for number, row in enumerate(reader, start=2):
        if len(points) >= MAX_ROWS:
            raise ValidationError(f"more than {MAX_ROWS} rows", line=number, source=source)
        values: dict[str, float | None] = {}
        for column in COLUMNS:
            raw = (row.get(column) or "").strip() if column in header else ""
            if raw == "":
                if column in ("seconds", "rate_mbit"):
                    raise ValidationError(f"{column} is empty", field=column, line=number, source=source)
                values[column] = None
                continue
            try:
                value = float(raw)
            except ValueError:
                raise ValidationError(f"{column} {raw!r} is not a number", field=column, line=number,
                                      source=source) from None
            low, high = LIMITS.get(column, (0.0, float("inf")))
            if not low <= value <= high:
                raise ValidationError(f"{column} {value:g} is outside {low:g}..{high:g}", field=column,
                                      line=number, source=source)
            values[column] = value
        seconds = float(values["seconds"] or 0.0)
        if not points and seconds != 0:
            raise ValidationError("the first row must be at 0 seconds", field="seconds", line=number, source=source)
        if points and seconds <= points[-1].seconds:
            raise ValidationError(f"seconds must increase ({seconds:g} after {points[-1].seconds:g})",
                                  field="seconds", line=number, source=source)
        points.append(TracePoint(seconds, float(values["rate_mbit"] or 0.0), values["delay_ms"], values["loss_percent"]))
    if not points:
        raise ValidationError("no rows", line=2, source=source)
    return LinkTrace(source, points)


def load_trace(name: str) -> LinkTrace:
    path = trace_path(name)
    return parse_trace(read_input(path, "trace file").decode("utf-8", errors="replace"), str(path))


def netem_commands(interface: str, point: TracePoint) -> list[str] | None:
    """The netem qdisc under Mininet's HTB class 5:1 for this row's delay and loss (None: the row sets neither)."""
    if point.delay_ms is None and point.loss_percent is None:
        return None
    argv = ["tc", "qdisc", "replace", "dev", interface, "parent", "5:1", "handle", "10:", "netem"]
    if point.delay_ms is not None:
        argv += ["delay", f"{point.delay_ms:g}ms"]
    if point.loss_percent is not None:
        argv += ["loss", f"{point.loss_percent:g}%"]
    return argv


# --- the replaying process ----------------------------------------------------------------------------
def _trace_name(a: str, b: str) -> str:
    return f"trace {a}-{b}"


def start_trace(config: Config, a: str, b: str, trace: str, *, loop: bool = False) -> dict[str, Any]:
    """Replay a trace on the link between a and b (replacing a trace running there); the replayer is recorded."""
    state, topology, state_dir = running_network(config)
    ends, configured = link_ends(topology, a, b)
    loaded = load_trace(trace)  # checked before anything changes
    stop_traces(config, a, b)
    state, _, _ = running_network(config)
    netem = bool(state.extra.get("netem"))
    log = (state_dir / "logs" / f"trace-{a}-{b}.jsonl").resolve()
    log.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "mlfo_toolkit.net.traces", "--state-dir", str(state_dir.resolve()), "--a", a, "--b", b,
            "--trace", str(Path(loaded.source).resolve()), "--log", str(log), *(["--loop"] if loop else []), *(["--netem"] if netem else [])]
    record = spawn_recorded(argv, state_dir / "logs" / f"trace-{a}-{b}.log", _trace_name(a, b))
    state.processes.append(record)
    save_state(state, state_dir)
    has_delay = any(p.delay_ms is not None or p.loss_percent is not None for p in loaded.points)
    return {"link": f"{a}-{b}", "trace": loaded.source, "rows": len(loaded.points), "duration_s": round(loaded.duration, 3),
            "loop": loop, "configured_mbit": configured, "pid": record.pid, "log": str(log), "ends": [e.interface for e in ends],
            "delay_and_loss": ("emulated (netem)" if netem else "not emulated: this kernel has no netem") if has_delay else "not in the trace"}


def stop_traces(config: Config, a: str | None = None, b: str | None = None) -> list[str]:
    """Stop trace replayers (of one link, or all); each puts its link's configured rate back."""
    state, _, state_dir = running_network(config)
    names = {_trace_name(a, b), _trace_name(b, a)} if a and b else None
    found = [p for p in state.processes if p.name.startswith("trace ") and (names is None or p.name in names)]
    stopped = stop_processes(found)
    state.processes = [p for p in state.processes if p not in found]
    save_state(state, state_dir)
    return stopped


def replay(state_dir: Path, a: str, b: str, trace: LinkTrace, *, loop: bool, log: Path, netem: bool) -> None:
    state, topology = network_topology(state_dir)
    ends, configured = link_ends(topology, a, b)

    def restore(*_: Any) -> None:
        if configured:
            set_link(state, ends, rate_mbit=configured)
        else:
            remove_shaping(state, ends)
        if netem:
            for end in ends:
                _in_node(state, end, ["tc", "qdisc", "del", "dev", end.interface, "parent", "5:1", "handle", "10:"])
        sys.exit(0)

    signal.signal(signal.SIGTERM, restore)
    started = time.monotonic()
    cycle = 0
    with open(log, "a") as out:
        while True:
            for point in trace.points:
                due = started + cycle * trace.duration + point.seconds
                time.sleep(max(0.0, due - time.monotonic()))
                requested = time.time()
                set_link(state, ends, rate_mbit=point.rate_mbit)
                applied: dict[str, Any] = {"at": time.time(), "requested_at": requested, "cycle": cycle, **asdict(point), "netem": netem}
                command = netem_commands(ends[0].interface, point)
                if command and netem:
                    for end in ends:
                        _in_node(state, end, netem_commands(end.interface, point) or [])
                elif command:
                    applied["not_emulated"] = "delay and loss: this kernel has no netem"
                out.write(json.dumps(applied) + "\n")
                out.flush()
            cycle += 1
            if not loop:
                time.sleep(max(0.0, started + cycle * trace.duration - time.monotonic()))
                restore()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlfo_toolkit.net.traces", description=__doc__)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--loop", action="store_true")
    parser.add_argument("--netem", action="store_true", help="the kernel has netem: apply delay and loss too")
    args = parser.parse_args(argv)
    replay(args.state_dir, args.a, args.b, load_trace(args.trace), loop=args.loop, log=args.log, netem=args.netem)


if __name__ == "__main__":
    main()
