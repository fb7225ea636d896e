"""Benchmark (run on demand, as root): time `topo up` and `topo down` of the prototype's full layout
(5 cohorts, 50 clients) and report memory. Not a test.

    sudo .venv/bin/python bench/topo_bench.py [--cohorts 5] [--repeat 1] [--backend mininet containernet] [--patch-links]

Prints build/teardown seconds, the ping mesh, and the memory of every process the network
started (RSS summed over each process tree), plus the machine's used memory before and during;
for the containernet backend also the memory per container (its own processes plus the mlfo
services running in it), and a ratio line when both backends ran.
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


def mlfo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlfo_toolkit", *args], env=env, capture_output=True, text=True, timeout=1800)


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    return sum(memory(p, "rss") for p in tree(pid))


def memory(process: psutil.Process, kind: str) -> int:
    """RSS, or PSS (shared pages split among the processes sharing them: services forked from one launcher share
    what it imported, and summed RSS counts those pages once per service)."""
    try:
        return int(getattr(process.memory_full_info() if kind == "pss" else process.memory_info(), kind))
    except psutil.Error:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohorts", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--backend", nargs="+", default=["mininet"], choices=["mininet", "containernet"])
    parser.add_argument("--patch-links", action="store_true", help="switch links as OVS patch ports (`--param patch_links=1`)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds a real Mininet network")
    results: dict[str, list[float]] = {}
    for run, backend in ((r, b) for r in range(args.repeat) for b in args.backend):
        workdir = Path(tempfile.mkdtemp(prefix="mlfo-bench-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
        env["MLFO_PATHS__STATE_DIR"] = str(workdir / "state")
        used_before = psutil.virtual_memory().used
        started = time.monotonic()
        up = mlfo(env, "topo", "up", str(args.cohorts), "--param", "publish_port=0", "--backend", backend, "--detach",
                  *(["--param", "patch_links=1"] if args.patch_links else []))
        up_seconds = time.monotonic() - started
        if up.returncode != 0:
            sys.exit(f"topo up failed:\n{up.stderr}")
        state = json.loads((workdir / "state" / "network.json").read_text())
        time.sleep(2)
        used_during = psutil.virtual_memory().used
        containers = []
        for host in (h for h in state["hosts"] if h.get("container")):
            mine = [p for p in state["processes"] if p["host"] == host["name"]]
            containers.append(tree_rss(host["pid"]) + sum(tree_rss(p["pid"]) for p in mine))
        service_processes = {p.pid: p for r in state["processes"] for p in tree(r["pid"])}
        services = sum(memory(p, "rss") for p in service_processes.values())
        services_pss = sum(memory(p, "pss") for p in service_processes.values())
        # The services are forked by a launcher, not by `topo up`: only what is not one of them is the owner's.
        owner = sum(memory(p, "rss") for p in tree(state["owner_pid"]) if p.pid not in service_processes)
        vswitchd = sum(p.memory_info().rss for p in psutil.process_iter() if p.name() == "ovs-vswitchd")
        started = time.monotonic()
        ping = mlfo(env, "topo", "ping", "--json")
        ping_seconds = time.monotonic() - started
        mesh = json.loads(ping.stdout) if ping.stdout else {"error": ping.stderr}
        started = time.monotonic()
        down = mlfo(env, "topo", "down")
        down_seconds = time.monotonic() - started
        mib = 1024 * 1024
        results.setdefault(backend, []).extend([up_seconds, down_seconds])
        print(f"run {run + 1} ({backend}): prototype layout, {args.cohorts} cohorts: {len(state['hosts'])} hosts, "
              f"{len(state['bridges'])} switches, {len(state['processes'])} mlfo processes, {len(containers)} containers")
        print(f"  topo up (to all services listening): {up_seconds:7.1f} s")
        print(f"  topo ping ({mesh.get('pairs')} pairs, {mesh.get('loss_percent')}% loss): {ping_seconds:7.1f} s")
        print(f"  topo down:                           {down_seconds:7.1f} s  (exit {down.returncode})")
        print(f"  memory: mlfo services {services / mib:7.0f} MiB RSS ({services / mib / max(1, len(state['processes'])):.0f} MiB each), "
              f"{services_pss / mib:.0f} MiB PSS ({services_pss / mib / max(1, len(state['processes'])):.0f} MiB each)")
        print(f"          topo up process (Mininet, host shells) {owner / mib:7.0f} MiB, ovs-vswitchd {vswitchd / mib:.0f} MiB")
        print(f"          machine used before {used_before / mib:.0f} MiB, during {used_during / mib:.0f} MiB (+{(used_during - used_before) / mib:.0f} MiB)")
        if containers:
            print(f"          per container (its shell + the mlfo service in it): {sum(containers) / len(containers) / mib:.0f} MiB on average,"
                  f" {sum(containers) / mib:.0f} MiB summed")
    if {"mininet", "containernet"} <= set(results):
        m, c = results["mininet"], results["containernet"]
        print(f"containernet / mininet: topo up {c[0] / m[0]:.2f}x, topo down {c[1] / m[1]:.2f}x (first run of each)")


if __name__ == "__main__":
    main()
