"""Benchmark (run on demand, no root): seconds per FL round, mlfo against Flower's default deployment.

    .venv/bin/python bench/round_bench.py [--clients 10] [--rounds 8]

Both jobs are the same FL job: one cohort of `--clients` clients, the same Flower app (mlfo's
NumPy MLP on the handwritten digits), fraction_fit 0.5, the same local epochs and seed. In one run
the benchmark:

1. starts Flower's default deployment itself: `flower-superlink` (in-memory state), one
   `flower-supernode` per client with Flower's default subprocess isolation (a SuperExec each, a new
   `flwr-clientapp` process per message), and `flwr run`, with the ServerApp on Flower's own
   `send_and_receive` (3 s polls);
2. runs the same job through mlfo (`mlfo demo` on loopback: MLFOs, agents, the shared executor,
   wake-ups between the ServerApp, the SuperNodes and the executor unless --no-wakeups);

then prints the median and p95 seconds per round of each, their ratio, how far MemAvailable fell, and
the CPU seconds per client-round by the processes' own accounting (the bench and every process it
reaped), a figure that compares across machines where wall time does not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import MachineWatch  # noqa: E402

from mlfo_toolkit import api  # noqa: E402
from mlfo_toolkit.config import load_config  # noqa: E402
from mlfo_toolkit.util.processes import ManagedProcess, find_tool, free_port, tool_env, wait_for_port  # noqa: E402
from mlfo_toolkit.util.resources import resource_path  # noqa: E402
from mlfo_toolkit.util.stats import percentile  # noqa: E402


def round_times(metrics_file: Path) -> list[float]:
    """Seconds per round from the ServerApp's events, measured as mlfo measures its own runs."""
    events = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rounds = sorted((e for e in events if e.get("event") == "round"), key=lambda e: e["round"])
    times = [e["time"] for e in rounds]  # round 0 is the initial evaluation: each round runs from the one before
    return [round(t - p, 3) for p, t in zip(times, times[1:])]


def flower_default(clients: int, rounds: int, workdir: Path, fl: dict[str, object]) -> dict[str, object]:
    """The job on Flower's default deployment, started here process by process."""
    app = workdir / "app"
    shutil.copytree(resource_path("mlfo_toolkit/fl/app_template"), app)
    port = free_port()
    home = workdir / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(tomli_w.dumps(
        {"superlink": {"default": "bench", "bench": {"address": f"127.0.0.1:{port}", "insecure": True}}}))
    metrics = workdir / "metrics.jsonl"
    run_config = workdir / "run-config.toml"
    run_config.write_text(tomli_w.dumps({**fl, "num-rounds": rounds, "min-available": clients,
                                         "metrics-file": str(metrics), "server-poll-seconds": 0.0}))
    processes: list[ManagedProcess] = []
    try:
        superlink = ManagedProcess("flower-superlink", [find_tool("flower-superlink"), "--insecure", "--port", str(port),
                                   "--disable-runtime-dependency-installation"], log_path=workdir / "superlink.log",
                                   env=tool_env({"FLWR_HOME": str(home)}), cwd=workdir)
        processes.append(superlink)
        wait_for_port("127.0.0.1", port, 60, superlink)
        for part in range(clients):
            node_config = f'partition-id={part} num-partitions={clients} source="handmnist" model="complex"'
            processes.append(ManagedProcess(
                f"flower-supernode {part}",
                [find_tool("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--port", str(free_port()), "--node-config", node_config],
                log_path=workdir / f"supernode-{part}.log", env=tool_env({"FLWR_HOME": str(workdir / f"node-{part}")}),
                cwd=workdir))
        started = time.monotonic()
        run = ManagedProcess("flwr run", [find_tool("flwr"), "run", str(app), "bench", "--run-config", str(run_config),
                             "--stream"], log_path=workdir / "flwr-run.log", env=tool_env({"FLWR_HOME": str(home)}), cwd=workdir)
        processes.append(run)
        while run.running() and time.monotonic() - started < 60 + rounds * 60:
            if metrics.exists() and '"finished"' in metrics.read_text():
                break
            time.sleep(1)
        times = round_times(metrics) if metrics.exists() else []
        if len(times) < rounds:
            raise SystemExit(f"Flower's default deployment finished {len(times)} of {rounds} rounds; see {workdir}")
        return {"round_seconds": times, "wall_seconds": round(time.monotonic() - started, 1)}
    finally:
        for process in reversed(processes):
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--supernode-poll", type=float, default=0.0,
                        help="fl.supernode_poll_seconds for mlfo's run: busy SuperNodes poll this often (0: off, the default)")
    parser.add_argument("--no-wakeups", action="store_true", help="mlfo's run without wake-ups (fl.wakeups: false)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mlfo-round-bench-"))
    config = load_config(None, environ={}).with_overrides({"paths.state_dir": str(workdir / "state"),
                                                            "paths.runs_dir": str(workdir / "runs"),
                                                            "fl.supernode_poll_seconds": args.supernode_poll,
                                                            "fl.wakeups": not args.no_wakeups})
    fl = {"strategy": "FedAvg", "fraction-fit": 0.5, "local-epochs": config.fl.local_epochs, "seed": config.fl.seed,
          "source": "handmnist", "model": "complex", "data-dir": str(workdir)}
    results = {}
    print(f"Flower's default deployment: 1 cohort x {args.clients} clients x {args.rounds} rounds ...", flush=True)
    with MachineWatch() as watch:
        results["flower"] = flower_default(args.clients, args.rounds, workdir / "flower", fl)
    results["flower"]["memory_drop_gb"] = watch.drop_gb
    results["flower"]["cpu_seconds"] = watch.cpu_seconds
    print(f"mlfo (shared executor, wake-ups {'off' if args.no_wakeups else 'on'}, busy polls {args.supernode_poll or 'off'}): "
          "the same job through `mlfo demo` ...", flush=True)
    with MachineWatch() as watch:
        summary = api.demo(config, cohorts=1, clients=args.clients, rounds=args.rounds).to_dict()
    cohort = summary["cohorts"][0]
    results["mlfo"] = {"round_seconds": [s for s in cohort["round_seconds"] if s is not None],
                       "wall_seconds": summary["wall_seconds"], "memory_drop_gb": watch.drop_gb, "cpu_seconds": watch.cpu_seconds,
                       "final_accuracy": cohort["accuracy"][-1]}
    print(f"{'deployment':<12} {'median s/round':>15} {'p95 s/round':>12} {'memory drop GB':>15} {'CPU s/client-round':>19}")
    for name, result in results.items():
        times = result["round_seconds"]
        result["median"], result["p95"] = round(median(times), 2), percentile(times, 95)
        result["cpu_seconds_per_client_round"] = round(result["cpu_seconds"] / (args.clients * args.rounds), 3)
        print(f"{name:<12} {result['median']:>15.2f} {result['p95']:>12.2f} {result['memory_drop_gb']:>15.2f} "
              f"{result['cpu_seconds_per_client_round']:>19.3f}")
    ratio = results["mlfo"]["median"] / results["flower"]["median"]
    print(f"ratio mlfo / Flower default (median s/round): {ratio:.2f}  (issue 23 asks <= 0.15)")
    print(json.dumps({"ratio": round(ratio, 3), **results}))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
