"""Benchmark (run on demand, as root): the seed's experiment in the emulated network.

    sudo .venv/bin/python bench/seed_bench.py [--cohorts 5] [--clients 10] [--rounds 20] [--cpus 2] [--supernode-poll 0.2]
        [--clientapp-processes per-message]
    sudo .venv/bin/python bench/seed_bench.py --cohorts 10     # 10 x 10 x 20 in `topo up 10` (ten campus switches)
        [--controller faucet] [--aggregation hierarchical] [--patch-links]

As a user would run it: `mlfo topo up N --detach` (the prototype's layout, Mininet + Open vSwitch),
`mlfo init --cpus C` (CPU limits on the FL servers, reachability check, 20 Mbit/s background
traffic), then a cohort file of N cohorts x CLIENTS welding clients, fraction_fit 0.5, ROUNDS
rounds, sent with `mlfo intent send --wait --json` to the campus MLFO published on loopback, and
`mlfo topo down` at the end. Prints per cohort: final accuracy, rounds done, rounds with fewer
results, seconds per round (median, p95), the median phase split, orchestration time (and client
start-up p50/p95), then MemAvailable drop (since before `topo up`, and since the intents were sent),
peak load, and the CPU seconds per client-round of each kind of process and of the machine. With --controller faucet the network runs under Faucet (`make faucet`): the
benchmark also pings every pair through Faucet's flows and meters a cohort to 10 Mbit/s with
`meter verify` (then clears it) before the FL run.
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
from statistics import median

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import CpuByKind, MachineWatch  # noqa: E402

from mlfo_toolkit.fl.anatomy import PHASES  # noqa: E402
from mlfo_toolkit.util.resources import resource_path  # noqa: E402
from mlfo_toolkit.util.stats import percentile  # noqa: E402

PUBLISHED_CAMPUS = "127.0.0.1:8001"


def mlfo(env: dict[str, str], *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlfo_toolkit", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def cohort_file(path: Path, cohorts: int, clients: int, rounds: int, aggregation: str = "flat") -> Path:
    intent = resource_path("intents/welding.yaml")
    path.write_text(yaml.safe_dump({
        "defaults": {"strategy": "FedAvg", "fraction_fit": 0.5, "min_fit": 1, "rounds": rounds, "aggregation": aggregation},
        "cohorts": [{"name": f"welding-{n + 1}", "size": clients, "intent": str(intent), "min_available": clients}
                    for n in range(cohorts)],
    }, sort_keys=False))
    return path


def report(summary: dict[str, object], watch_all: MachineWatch, watch_fl: MachineWatch) -> None:
    cohorts = summary["cohorts"]
    assert isinstance(cohorts, list)
    print(f"{'cohort':<11} {'state':<6} {'final acc':>9} {'rounds':>6} {'short':>5} {'s/round p50':>11} {'p95':>6} "
          f"{'orch s':>7} {'start p50/p95 s':>16}")
    for c in cohorts:
        seconds = [s for s in c["round_seconds"] if s is not None]
        ready = c.get("client_ready_seconds") or {}
        print(f"{c['name']:<11} {c['state']:<6} {(c['accuracy'] or [0])[-1]:>9.3f} {len(c['accuracy']):>6} "
              f"{len(c['short_rounds']):>5} {median(seconds) if seconds else 0:>11.2f} {percentile(seconds, 95) or 0:>6.2f} "
              f"{c['orchestration_seconds'] or 0:>7.1f} {ready.get('p50')!s:>7}/{ready.get('p95')!s:<8}")
        if c["state"] != "done":
            print(f"{'':<11} reason: {c['reason']}")
    print("median phase split per cohort (seconds):")
    print(f"{'cohort':<11} " + " ".join(f"{p:>9}" for p in PHASES))
    for c in cohorts:
        phases = [p for p in c["phases"] if p]
        print(f"{c['name']:<11} " + " ".join(f"{median([p[k] for p in phases]) if phases else 0:>9.2f}" for k in PHASES))
    print(f"MemAvailable drop: {watch_all.drop_gb:.2f} GB since before `topo up`, {watch_fl.drop_gb:.2f} GB since the "
          f"intents were sent; peak load (1 min) {max(watch_all.peak_load, watch_fl.peak_load):.1f} on {os.cpu_count()} cores")


def controller_checks(env: dict[str, str], cohort: int) -> None:
    """Through the controller: the ping mesh, then a 10 Mbit/s meter on one cohort measured and cleared."""
    ping = json.loads(mlfo(env, "topo", "ping", "--json").stdout)
    print(f"topo ping: {ping['pairs']} pairs, {ping['loss_percent']}% loss, {ping.get('seconds', 0):.1f} s")
    started = time.monotonic()
    verify = mlfo(env, "meter", "verify", "--port", str(cohort), "--rate", "10mbit", "--json")
    if verify.returncode != 0:
        sys.exit(f"meter verify failed ({verify.returncode}):\n{verify.stderr[-3000:]}")
    got = json.loads(verify.stdout)
    print(f"meter verify --port {cohort} --rate 10mbit ({got['controller']}): metered {got['metered_mbit']} Mbit/s "
          f"({(got['metered_mbit'] / 10 - 1) * 100:+.1f} %), unmetered {got['unmetered_mbit']}, other cohort "
          f"{got['other_cohort_mbit']} ({time.monotonic() - started:.1f} s)")
    cleared = mlfo(env, "meter", "clear")
    print(f"meter clear: exit {cleared.returncode}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohorts", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cpus", type=float, default=2.0, help="CPU cores of each FL server (mlfo init --cpus)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--supernode-poll", type=float, default=0.0,
                        help="fl.supernode_poll_seconds of the network's agents (0: Flower's 3 s, the default)")
    parser.add_argument("--clientapp-processes", choices=["per-node", "per-message"], default="per-node",
                        help="fl.clientapp_processes: one ClientApp process kept per SuperNode (the default), or one per message")
    parser.add_argument("--controller", choices=["faucet"], help="bring the network up under this controller")
    parser.add_argument("--patch-links", action="store_true",
                        help="switch-to-switch links as OVS patch ports (`--param patch_links=1`), not shaped veth pairs")
    parser.add_argument("--aggregation", choices=["flat", "hierarchical", "auto"], default="flat",
                        help="hierarchical: an aggregator per campus (each campus of the layout is an edge)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds a real Mininet network")
    workdir = Path(tempfile.mkdtemp(prefix="mlfo-seed-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    env.update({"MLFO_PATHS__STATE_DIR": str(workdir / "state"), "MLFO_PATHS__RUNS_DIR": str(workdir / "runs"),
                "MLFO_FL__SUPERNODE_POLL_SECONDS": str(args.supernode_poll), "MLFO_FL__CLIENTAPP_PROCESSES": args.clientapp_processes})
    if args.cohorts * args.clients > 10 * max(5, args.cohorts):
        sys.exit("the prototype's layout has ten FL clients per campus switch, and max(5, cohorts) campus switches")
    with MachineWatch() as watch_all:
        started = time.monotonic()
        up = mlfo(env, "topo", "up", str(args.cohorts), "--detach", *(["--controller", args.controller] if args.controller else []),
                  *(["--param", "patch_links=1"] if args.patch_links else []))
        if up.returncode != 0:
            sys.exit(f"topo up failed ({up.returncode}):\n{up.stderr[-3000:]}")
        print(f"topo up {args.cohorts}{' --controller ' + args.controller if args.controller else ''}"
              f"{' --param patch_links=1' if args.patch_links else ''}: "
              f"{time.monotonic() - started:.1f} s", flush=True)
        try:
            if args.controller:
                controller_checks(env, min(2, args.cohorts))
            init = mlfo(env, "init", "--cpus", str(args.cpus), "--json")
            if init.returncode != 0:
                sys.exit(f"mlfo init failed ({init.returncode}):\n{init.stderr[-3000:]}")
            path = cohort_file(workdir / "cohorts.yaml", args.cohorts, args.clients, args.rounds, args.aggregation)
            print(f"sending {args.cohorts} cohorts x {args.clients} clients x {args.rounds} rounds ...", flush=True)
            with MachineWatch() as watch_fl, CpuByKind() as cpu:
                started = time.monotonic()
                sent = mlfo(env, "intent", "send", str(path), "--mlfo", PUBLISHED_CAMPUS, "--wait", "--json",
                            "--timeout", str(args.timeout), timeout=args.timeout + 60)
                wall = time.monotonic() - started
            if not sent.stdout.strip():
                sys.exit(f"intent send failed ({sent.returncode}):\n{sent.stderr[-3000:]}")
            summary, _ = json.JSONDecoder().raw_decode(sent.stdout.strip())  # a failed cohort adds an error document after it
            print(f"intent send --wait: {wall:.1f} s (exit {sent.returncode})")
            if "cohorts" not in summary:  # refused as a whole: the error document says why
                sys.exit(f"intent send failed ({sent.returncode}):\n{sent.stdout[-3000:]}\n{sent.stderr[-3000:]}")
        finally:
            down = mlfo(env, "topo", "down")
            print(f"topo down: exit {down.returncode}")
    report(summary, watch_all, watch_fl)
    client_rounds = max(1, sum(len(trained or {}) for c in summary["cohorts"] for trained in c.get("client_train_seconds") or []))
    print(f"CPU during the FL runs, {client_rounds} client-rounds (a client trained in a round):")
    print("\n".join(cpu.lines(client_rounds, "client-round")))
    (workdir / "seed-bench.json").write_text(json.dumps(summary))
    print(f"full summary: {workdir / 'seed-bench.json'}")


if __name__ == "__main__":
    main()
