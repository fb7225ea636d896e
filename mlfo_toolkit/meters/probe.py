"""iperf3 measurements of a cohort's rate to its FL server, for `meter verify` and the experiment timeline."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MlfoError, ValidationError
from mlfo_toolkit.net.hosts import host_command, ping, spawn_in_host, wait_listening
from mlfo_toolkit.net.state import NetworkState, network_topology, stop_processes

IPERF_PORT = 5202


def measure_mbit(state: NetworkState, client: str, server_ip: str, seconds: int) -> float:
    """iperf3 from `client` to an iperf3 server already listening on server_ip:IPERF_PORT (Mbit/s received)."""
    argv = host_command(state, client, ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", "--connect-timeout", "5000"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    try:
        report = json.loads(done.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (ValueError, KeyError):
        raise MlfoError(f"iperf3 from {client} to {server_ip} failed: {(done.stdout + done.stderr)[-300:]}") from None


def measure_series(state: NetworkState, client: str, server_ip: str, seconds: int) -> tuple[float, list[tuple[float, float, float]]]:
    """iperf3 like measure_mbit, one figure a second: (wall time it started, [(start s, end s, Mbit/s received)]).

    Reversed (-R: the server sends), so that each figure is what `client` received in that second, not what
    its sender pushed into socket buffers (which overshoots the first second and swings after)."""
    argv = host_command(state, client, ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-i", "1", "-J", "-R",
                                        "--connect-timeout", "5000"])
    started = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    try:
        intervals = json.loads(done.stdout)["intervals"]
        return started, [(float(i["sum"]["start"]), float(i["sum"]["end"]), float(i["sum"]["bits_per_second"]) / 1e6) for i in intervals]
    except (ValueError, KeyError):
        raise MlfoError(f"iperf3 from {client} to {server_ip} failed: {(done.stdout + done.stderr)[-300:]}") from None


class CohortProbe:
    """iperf3 from a client of cohort N to its FL server, on demand, for a few seconds each time.

    Used by experiments to record the rate a cohort gets before and after a meter changes."""

    def __init__(self, config: Config, cohort: int, client: str | None = None) -> None:
        self.config = config
        self.state, topology = network_topology(Path(config.paths.state_dir))
        clients = [h for h in topology.fl_clients() if h.campus == cohort and client in (None, h.name)]
        servers = {h.cohort: h for h in topology.fl_servers()}
        if not clients or cohort not in servers:
            raise ValidationError(f"cohort {cohort} has no clients{f' named {client}' if client else ''} or no FL server "
                                  f"in {topology.name}", field="cohort")
        self.client, self.server = clients[0], servers[cohort]
        self._iperf: list[Any] = []

    def __enter__(self) -> CohortProbe:
        log_dir = Path(self.config.paths.state_dir) / "logs"
        proc = spawn_in_host(self.state, self.server.name, "iperf3-probe",
                             ["iperf3", "-s", "-B", self.server.ip, "-p", str(IPERF_PORT)], log_dir, cpu_limited=False)
        self._iperf.append(proc)
        wait_listening(self.state, [(self.server.name, IPERF_PORT, proc)], 20)
        return self

    def measure(self, seconds: int = 1) -> float:
        return round(measure_mbit(self.state, self.client.name, self.server.ip, seconds), 2)

    def reaches(self, within: float = 0.0) -> bool:
        """Whether the client reaches its FL server: one ping (1 s), or, with `within`, pings until one is answered
        or that many seconds passed (a link just brought up needs a moment: OVS sees the carrier, ARP resolves)."""
        deadline = time.monotonic() + within
        while True:
            if ping(self.state, self.client.name, self.server.ip, timeout_s=1):
                return True
            if time.monotonic() >= deadline:
                return False

    def __exit__(self, *exc: object) -> None:
        stop_processes(self._iperf)
