"""TCP socket statistics from `ss -tine` (iproute2): RTT, congestion window, bytes, per connection.

The prototype ran a socket-statistics exporter beside every node; mlfo reads the same kernel
tcp_info through iproute2's ss, in the network namespace it runs in. Which process owns a
connection is read from the file descriptors of the processes asked about (`socket_inodes`), not
with `ss -p`, which reads those of every process on the machine (300 of them at the seed's scale:
six times the CPU of the sample itself, at every round's end on every FL server's agent).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass

_FIELDS = {
    "rtt": re.compile(r"\brtt:([0-9.]+)/"),
    "cwnd": re.compile(r"\bcwnd:(\d+)"),
    "bytes_sent": re.compile(r"\bbytes_sent:(\d+)"),
    "bytes_received": re.compile(r"\bbytes_received:(\d+)"),
    "delivery_rate": re.compile(r"\bdelivery_rate ([0-9.]+)([KMG]?)bps"),
}
_INODE = re.compile(r"\bino:(\d+)")
_SCALE = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}


@dataclass(frozen=True)
class TcpConnection:
    local: str
    peer: str
    inode: int  # the socket's: owned by the processes whose file descriptors name it (socket_inodes)
    rtt_seconds: float
    cwnd: int
    bytes_sent: int
    bytes_received: int
    delivery_rate_bytes: float

    @property
    def local_port(self) -> int:
        return int(self.local.rsplit(":", 1)[1])

    @property
    def peer_port(self) -> int:
        return int(self.peer.rsplit(":", 1)[1])


def parse_ss(text: str) -> list[TcpConnection]:
    """Parse `ss -tineH state established`: a header line per socket (with its inode), then its indented tcp_info line."""
    connections = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            header = line.split()
            continue
        if header is None or len(header) < 4:
            continue
        info = line
        values = {k: p.search(info) for k, p in _FIELDS.items()}
        rate = values["delivery_rate"]
        connections.append(
            TcpConnection(
                local=header[2],
                peer=header[3],
                inode=int(inode.group(1)) if (inode := _INODE.search(" ".join(header[4:]))) else 0,
                rtt_seconds=float(values["rtt"].group(1)) / 1000 if values["rtt"] else 0.0,
                cwnd=int(values["cwnd"].group(1)) if values["cwnd"] else 0,
                bytes_sent=int(values["bytes_sent"].group(1)) if values["bytes_sent"] else 0,
                bytes_received=int(values["bytes_received"].group(1)) if values["bytes_received"] else 0,
                delivery_rate_bytes=float(rate.group(1)) * _SCALE[rate.group(2)] / 8 if rate else 0.0,
            )
        )
        header = None
    return connections


# Samples this recent are reused (status polls, scrapes): ss is a process of its own each time.
SS_REUSE_SECONDS = 2.0
_ss_cache: tuple[float, list[TcpConnection]] = (-SS_REUSE_SECONDS, [])
_ss_lock = threading.Lock()


def tcp_connections(max_age: float = SS_REUSE_SECONDS) -> list[TcpConnection]:
    """Established TCP connections of this network namespace (empty if ss is missing), at most `max_age` s old."""
    global _ss_cache
    with _ss_lock:
        taken, connections = _ss_cache
        if time.monotonic() - taken < max_age:
            return connections
        try:
            done = subprocess.run(["ss", "-tineH", "state", "established"], capture_output=True, text=True, timeout=10, check=False)
            connections = parse_ss(done.stdout)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            connections = []
        _ss_cache = (time.monotonic(), connections)
        return connections


def socket_inodes(pids: set[int]) -> set[int]:
    """The inodes of the sockets these processes hold (what `TcpConnection.inode` names); a process that is gone or
    not ours to read adds none."""
    inodes = set()
    for pid in pids:
        try:
            entries = os.scandir(f"/proc/{pid}/fd")
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


class ByteTotals:
    """Cumulative bytes over connections that come and go: each connection counts with its largest value seen."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def update(self, connections: list[TcpConnection]) -> tuple[int, int]:
        with self._lock:
            for c in connections:
                sent, received = self._seen.get((c.local, c.peer), (0, 0))
                self._seen[(c.local, c.peer)] = (max(sent, c.bytes_sent), max(received, c.bytes_received))
            return sum(s for s, _ in self._seen.values()), sum(r for _, r in self._seen.values())
