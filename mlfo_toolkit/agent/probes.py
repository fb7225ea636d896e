"""What an agent measures for the MLFO's placement: its host's free CPU, and its path to an FL server.

Both are mlfo's own measurements over the network as it is (no iperf3, no root): the path's round-trip
time from TCP connects to the other agent, its rate from a download of `bytes` from that agent's
`GET /probe/blob`. Run from an edge's aggregator host towards the cohort's global FL server, they are
the real versions of the prototype's `CheckBandwidth` and `CheckCompute`.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from mlfo_toolkit.errors import UnreachableError
from mlfo_toolkit.util.linux import cpu_cgroup, read_cpu_quota

MAX_PROBE_BYTES = 64 * 1024 * 1024
CONNECTS = 5
CHUNK = 256 * 1024


def free_cpus(interval: float = 0.5) -> dict[str, Any]:
    """Cores this host can still give, sampled over `interval` seconds: its CPU limit (its cgroup's quota) less
    what its processes use; a host without a limit (loopback, an unlimited emulated host), what the machine
    has idle. An emulated host's own allowance is what counts: the machine's idle share at one instant says
    more about the other hosts starting than about this one."""
    cgroup = cpu_cgroup(os.getpid())
    limit = read_cpu_quota(cgroup) if cgroup else None
    cores = float(psutil.cpu_count() or 1)
    members = _members(cgroup) if cgroup and limit else []

    def used() -> float:
        total = 0.0
        for pid in members:
            try:
                times = psutil.Process(pid).cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    before = used()
    psutil.cpu_percent(None)
    time.sleep(interval)
    busy = psutil.cpu_percent(None) / 100.0
    machine_free = cores * (1.0 - busy)
    host_used = (used() - before) / interval if members else None
    free = machine_free if limit is None or host_used is None else max(0.0, limit - host_used)
    return {"cpus_limit": limit, "cpus_used": None if host_used is None else round(host_used, 3),
            "machine_free": round(machine_free, 3), "cpus_free": round(free, 3), "interval": interval}


def _members(cgroup: str) -> list[int]:
    try:
        return [int(line) for line in (Path(cgroup) / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def blob(size: int) -> Any:
    """`size` zero bytes in chunks, for a peer's download probe."""
    chunk = bytes(CHUNK)
    left = size
    while left > 0:
        yield chunk[: min(left, CHUNK)]
        left -= CHUNK


def probe_path(target: str, size: int, token: str | None, timeout: float = 30.0) -> dict[str, Any]:
    """Round-trip time (median of TCP connects) and rate (a download of `size` bytes) from here to the
    agent at `target` (HOST:PORT). UnreachableError naming the target if it does not answer."""
    host, _, port = target.rpartition(":")
    times = []
    for _ in range(CONNECTS):
        started = time.perf_counter()
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                times.append(time.perf_counter() - started)
        except OSError as err:
            raise UnreachableError(f"cannot reach {target} to measure the path: {err}") from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.perf_counter()
    got = 0
    try:
        with requests.get(f"http://{target}/probe/blob", params={"bytes": size}, headers=headers, stream=True, timeout=timeout) as answer:
            answer.raise_for_status()
            for chunk in answer.iter_content(CHUNK):
                got += len(chunk)
    except requests.RequestException as err:
        raise UnreachableError(f"the download probe from {target} failed: {err}") from None
    seconds = time.perf_counter() - started
    rtt = statistics.median(times)
    # The download's first round trip carries no data (the request goes out): count only the rest.
    rate = got * 8 / max(seconds - rtt, 1e-6) / 1e6
    return {"target": target, "rtt_ms": round(rtt * 1000, 3), "rate_mbit": round(rate, 2), "bytes": got, "seconds": round(seconds, 4)}
