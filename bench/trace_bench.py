"""Benchmark (run on demand, as root): a replayed link trace against iperf3, once a second.

    sudo .venv/bin/python bench/trace_bench.py [--trace leo-pass] [--seconds 120] [--link swCampus1 swEdge0]

Brings up the small layout (`mlfo topo up --detach`), starts `mlfo topo trace A B TRACE` on campus 1's
uplink and measures fed.1 -> fc.10 with iperf3 (`-i 1 -R`: what fc.10 received each second) through it
for SECONDS, the first second (slow start) left out. Each one-second
figure is compared with the trace's mean rate over that same second (the replayer logs when it
applied each row; iperf3's start is taken just before it runs). Seconds in which the trace changes by
more than 20 % are counted apart: TCP needs a moment to follow a step. Prints the share of seconds
within ±10 % and ±20 %, the median and p95 error, then `topo down`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

from mlfo_toolkit.meters.probe import IPERF_PORT, measure_series
from mlfo_toolkit.net.hosts import spawn_in_host, wait_listening
from mlfo_toolkit.net.state import load_state, stop_processes
from mlfo_toolkit.net.traces import load_trace
from mlfo_toolkit.util.processes import free_port
from mlfo_toolkit.util.stats import percentile


def mlfo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlfo_toolkit", *args], env=env, capture_output=True, text=True, timeout=900, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", default="leo-pass")
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--link", nargs=2, default=["swCampus1", "swEdge0"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds a real Mininet network")
    workdir = Path(tempfile.mkdtemp(prefix="mlfo-trace-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    env |= {"MLFO_PATHS__STATE_DIR": str(workdir / "state"), "MLFO_PATHS__RUNS_DIR": str(workdir / "runs")}
    up = mlfo(env, "topo", "up", "--topology", "small", "--param", f"publish_port={free_port()}", "--detach")
    if up.returncode != 0:
        sys.exit(f"topo up failed:\n{up.stderr[-2000:]}")
    try:
        state = load_state(workdir / "state")
        server = spawn_in_host(state, "fed.1", "iperf3-bench", ["iperf3", "-s", "-B", "10.0.11.100", "-p", str(IPERF_PORT)], workdir,
                               cpu_limited=False)
        try:
            wait_listening(state, [("fed.1", IPERF_PORT, server)], 20)
            started = mlfo(env, "topo", "trace", *args.link, args.trace, "--loop", "--json")
            if started.returncode != 0:
                sys.exit(f"topo trace failed:\n{started.stderr[-2000:]}")
            info = json.loads(started.stdout)
            print(f"{info['link']} follows {info['trace']} ({info['rows']} rows, {info['duration_s']:g} s); "
                  f"delay and loss: {info['delay_and_loss']}")
            began, series = measure_series(state, "fc.10", "10.0.11.100", args.seconds)
        finally:
            stop_processes([server])
        mlfo(env, "topo", "trace", *args.link, "--stop")
        applied = [json.loads(line) for line in Path(info["log"]).read_text().splitlines()]
    finally:
        down = mlfo(env, "topo", "down")
        print(f"topo down: exit {down.returncode}")
    trace = load_trace(args.trace)
    offset = began - applied[0]["at"]
    steady, changing = [], []
    for start, end, mbit in series[1:]:  # the first second is TCP's slow start
        window = (offset + start, offset + end)
        want = trace.mean_rate(*window)
        rates = [trace.at(window[0] + f * (end - start)).rate_mbit for f in (0.0, 0.5, 0.999)]
        (changing if max(rates) > 1.2 * min(rates) else steady).append(abs(mbit / want - 1))
    for name, errors in (("steady seconds", steady), ("seconds with a step", changing)):
        if not errors:
            continue
        within10 = sum(e <= 0.10 for e in errors) / len(errors)
        within20 = sum(e <= 0.20 for e in errors) / len(errors)
        print(f"{name}: {len(errors)}; within ±10 %: {within10:.0%}; within ±20 %: {within20:.0%}; "
              f"median error {median(errors):.1%}, p95 {percentile(errors, 95):.1%}")
    print(f"rows applied: {len(applied)} (replayer log {info['log']}); iperf3 began {offset:.2f} s into the trace")


if __name__ == "__main__":
    main()
