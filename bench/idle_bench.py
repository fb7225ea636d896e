"""Benchmark (run on demand, no root): what deployed FL cohorts cost while no round runs.

    .venv/bin/python bench/idle_bench.py [--cohorts 5] [--clients 10] [--seconds 60] [--no-wakeups]

Deploys N cohorts x M clients of mlfo's own app on loopback (`mlfo demo`'s MLFOs, agents and shared
executor) and holds every run before its first round (the control field an experiment holds rounds
with), so every SuperLink, SuperNode, ServerApp and MLFO is up and nothing trains. Once every client
is connected it measures, over --seconds, the CPU seconds of each kind of process by its own
accounting (/proc: user + system), then lets the runs go for two rounds to show they still train.
Prints cores per kind of process, the total, and CPU seconds per client per idle minute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from mlfo_toolkit.backends.loopback import LoopbackBackend
from mlfo_toolkit.config import load_config
from mlfo_toolkit.orchestrator.api_clients import campus_client
from mlfo_toolkit.orchestrator.cohorts import load_cohort_file, shape_cohorts
from mlfo_toolkit.orchestrator.records import Deployment
from mlfo_toolkit.orchestrator.sending import follow_deployments, post_cohorts
from mlfo_toolkit.util.resources import resource_path

# Processes the executor forks carry these in their titles ("flower-superlink [mlfo executor] NAME").
KINDS = ("flower-supernode", "flwr-clientapp", "flower-superlink", "flwr-serverapp", "flwr run", "mlfo FL server",
         "mlfo_toolkit.fl.executor", "mlfo_toolkit.util.guard")


def kind_of(process: psutil.Process, bench: int) -> str | None:
    try:
        line = " ".join(process.cmdline())
    except (psutil.Error, OSError):
        return None
    if process.pid == bench:
        return "bench (MLFOs and agents, in-process)"
    for kind in KINDS:
        if kind in line:
            return "guard" if kind == "mlfo_toolkit.util.guard" else kind
    return None


def cpu_by_kind(bench: int) -> dict[int, tuple[str, float]]:
    """PID -> (kind, CPU seconds so far) for this bench and every process under it (and the executor's)."""
    out: dict[int, tuple[str, float]] = {}
    for process in [psutil.Process(bench), *psutil.Process(bench).children(recursive=True)]:
        kind = kind_of(process, bench)
        if kind is None:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        out[process.pid] = (kind, times.user + times.system)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohorts", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-wakeups", action="store_true", help="Flower's own 3 s polls (fl.wakeups: false)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mlfo-idle-bench-"))
    config = load_config(None, environ={}).with_overrides({"paths.state_dir": str(workdir / "state"),
                                                            "paths.runs_dir": str(workdir / "runs"),
                                                            "fl.wakeups": not args.no_wakeups})
    shaped = shape_cohorts(load_cohort_file(resource_path("intents/cohorts.yaml"), config), args.cohorts, args.clients, 2)
    total = args.cohorts * args.clients
    with LoopbackBackend(config, workdir / "run", servers=args.cohorts, clients=total) as backend:
        sent = post_cohorts(shaped, backend.config, backend.campus)
        with campus_client(backend.config, backend.campus) as campus:
            for cohort in sent:  # hold round 1 as soon as the FL server exists
                deadline = time.monotonic() + 120
                while True:
                    try:
                        campus.control(cohort.deployment_id, {"hold": 1})
                        break
                    except Exception:  # noqa: BLE001 - no FL server yet
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            print(f"{args.cohorts} cohorts x {args.clients} clients held before round 1; waiting for every client ...", flush=True)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                records = [Deployment.model_validate(campus.deployment(c.deployment_id)) for c in sent]
                if sum(1 for r in records for c in r.clients if c.state == "running") >= total:
                    break
                time.sleep(1)
            time.sleep(5)  # the last starts settle
            before = cpu_by_kind(psutil.Process().pid)
            started = time.monotonic()
            time.sleep(args.seconds)
            after = cpu_by_kind(psutil.Process().pid)
            wall = time.monotonic() - started
            used: Counter[str] = Counter()
            count: Counter[str] = Counter()
            for pid, (kind, seconds) in after.items():
                used[kind] += seconds - before.get(pid, (kind, 0.0))[1]
                count[kind] += 1
            for cohort in sent:
                campus.control(cohort.deployment_id, {"hold": 0})
        follow_deployments(sent, backend.config, backend.campus, timeout=600, poll_seconds=0.5)
    print(f"{'process kind':<40} {'count':>5} {'cores':>7}")
    for kind, seconds in used.most_common():
        print(f"{kind:<40} {count[kind]:>5} {seconds / wall:>7.3f}")
    cores = sum(used.values()) / wall
    print(f"{'total':<40} {sum(count.values()):>5} {cores:>7.3f}   (goal <= 0.2 cores)")
    print(f"CPU seconds per client per idle minute: {sum(used.values()) / total * 60 / wall:.3f}")
    states = [c.record.state if c.record else None for c in sent]
    accuracy = [round(c.record.rounds[-1].accuracy or 0, 3) if c.record and c.record.rounds else None for c in sent]
    print(f"after the hold: {states}, accuracy after 2 rounds {accuracy}")
    if any(s != "done" for s in states):
        sys.exit(1)


if __name__ == "__main__":
    main()
