"""Background traffic that follows a pattern: the app client's iperf3 at a rate that changes over time.

Usage (inside the app-client host, started by `mlfo init --bg-pattern` or an experiment's background event):
    python -m mlfo_toolkit.net.background --to IP:PORT --rate-mbit 20 --pattern sine --period 30 [--seed 1]

Patterns, at a peak `rate` and a `period` in seconds:
* `constant`: the rate all along (what `mlfo init --bg-rate` always did);
* `step`: the rate for half a period, then nothing for half a period, and again;
* `sine`: rate x (1 + sin(2 pi t / period)) / 2, in one-second steps;
* `poisson`: on and off spells of exponential length (flows that arrive as a Poisson process), a half
  period each on average: the rate while on.
The mean of every pattern but `constant` is half the rate. Each segment is one iperf3 run (`-b RATE -t
SECONDS`); its per-second lines go to this process's log, where `mlfo` reads the rate reached.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

PATTERNS = ("constant", "step", "sine", "poisson")


def rate_mbit(text: str) -> float:
    """`20M`, `20mbit`, `500k`, `1g` (iperf3's -b forms) -> Mbit/s."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(?:bit|bps)?\s*", text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a rate (e.g. 20M, 20mbit, 500k)")
    return float(match.group(1)) * {"": 1e-6, "k": 1e-3, "m": 1.0, "g": 1e3}[match.group(2)]


def pattern_segments(pattern: str, rate_mbit: float, period: float, seed: int = 1) -> Iterator[tuple[float, float]]:
    """(seconds, Mbit/s) segments, endless (constant: one long one)."""
    if pattern == "constant":
        while True:
            yield 86_400.0, rate_mbit
    if pattern == "step":
        while True:
            yield period / 2, rate_mbit
            yield period / 2, 0.0
    if pattern == "sine":
        t = 0
        while True:
            yield 1.0, round(rate_mbit * (1 + math.sin(2 * math.pi * t / period)) / 2, 3)
            t += 1
    if pattern == "poisson":
        rng = random.Random(seed)
        while True:
            yield max(1.0, round(rng.expovariate(2 / period))), rate_mbit
            yield max(1.0, round(rng.expovariate(2 / period))), 0.0
    raise ValueError(f"unknown pattern {pattern!r} (patterns: {', '.join(PATTERNS)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlfo_toolkit.net.background", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", required=True, help="the iperf3 server, IP:PORT")
    parser.add_argument("--rate-mbit", required=True, type=float)
    parser.add_argument("--pattern", choices=PATTERNS, default="constant")
    parser.add_argument("--period", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    ip, _, port = args.to.rpartition(":")
    current: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for child in current:
            if child.poll() is None:
                child.terminate()
                child.wait(5)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    elapsed = 0.0
    for seconds, rate in pattern_segments(args.pattern, args.rate_mbit, args.period, args.seed):
        print(f"pattern {args.pattern}: {elapsed:.0f} s, {rate:g} Mbit/s for {seconds:g} s", flush=True)
        if rate > 0:
            argv_ = ["iperf3", "-c", ip, "-p", port, "-b", f"{rate:g}M", "-t", str(max(1, round(seconds))), "--connect-timeout", "5000",
                     "-i", "1", "--forceflush"]
            current[:] = [subprocess.Popen(argv_, stdin=subprocess.DEVNULL)]
            current[0].wait()
        elapsed += seconds
        time.sleep(max(0.0, started + elapsed - time.monotonic()))


if __name__ == "__main__":
    main()
