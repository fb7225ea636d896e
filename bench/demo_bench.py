"""Benchmark (run on demand, no root): wall time, seconds per FL round and peak memory of `mlfo demo`.

    .venv/bin/python bench/demo_bench.py [--cohorts 2] [--clients 5] [--rounds 5] [--repeat 1]

Peak memory is the largest sum of RSS over the demo's whole process tree (the demo process, every
Flower SuperLink, SuperNode, SuperExec and app process), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohorts", type=int, default=2)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for run in range(args.repeat):
        workdir = Path(tempfile.mkdtemp(prefix="mlfo-demo-bench-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
        argv = [sys.executable, "-m", "mlfo_toolkit", "demo", "--json", "--cohorts", str(args.cohorts),
                "--clients", str(args.clients), "--rounds", str(args.rounds)]
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        root = psutil.Process(proc.pid)
        peak = peak_processes = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(root))
            try:
                peak_processes = max(peak_processes, 1 + len(root.children(recursive=True)))
            except psutil.Error:
                pass
            time.sleep(0.2)
        wall = time.monotonic() - started
        if proc.returncode != 0 or proc.stdout is None:
            sys.exit(f"mlfo demo failed with exit code {proc.returncode}")
        summary = json.loads(proc.stdout.read())
        run_dir = workdir / summary["run_dir"]
        print(f"run {run + 1}: {args.cohorts} cohorts x {args.clients} clients x {args.rounds} rounds")
        print(f"  wall time {wall:.1f} s (demo's own figure {summary['wall_seconds']} s)")
        print(f"  orchestration per cohort: {', '.join(f'{s:.2f} s' for s in summary['orchestration_seconds'])}")
        for cohort in summary["cohorts"]:
            print(f"  {cohort['name']}: final accuracy {cohort['accuracy'][-1]:.3f}, loss {cohort['loss'][-1]:.3f}")
        # Round timestamps are kept in the campus MLFO's deployment records.
        import sqlite3

        with sqlite3.connect(str(run_dir / "state" / "mlfo-campus.sqlite3")) as db:
            for (text,) in db.execute("SELECT data FROM records WHERE kind = 'deployment'"):
                record = json.loads(text)
                times = [r["time"] for r in sorted(record["rounds"], key=lambda r: r["round"])]
                gaps = [b - a for a, b in zip(times, times[1:])]
                if gaps:
                    print(f"  {record['name']}: {sum(gaps) / len(gaps):.1f} s per round (rounds 2..{len(times)})")
        print(f"  peak memory of the process tree {peak / 2**20:.0f} MiB, up to {peak_processes} processes")


if __name__ == "__main__":
    main()
