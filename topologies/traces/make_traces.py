"""Make the shipped link traces from documented parameters (no downloaded data):

    python topologies/traces/make_traces.py     # rewrites leo-pass.csv and cellular-drive.csv here

leo-pass.csv: one overhead pass of a LEO satellite at 550 km, 240 s from 10 deg elevation through the
zenith and back (a real pass lasts some 8 minutes; this one is compressed so a study sees it in a few
FL rounds). Elevation e(t) = 10 + 80 sin(pi t / 240) deg. Slant range d = sqrt((R+h)^2 - (R cos e)^2)
- R sin e (R = 6371 km). Link budget: SNR = 15 dB at the zenith, less 20 log10(d / h) (free-space
loss over the longer path). Rate = 20 MHz x 0.75 x log2(1 + SNR) (Shannon at 75 % efficiency).
Delay = 2 d / c (user -> satellite -> gateway), loss 0.5 % below 20 deg elevation, else 0.05 %.

cellular-drive.csv: 300 s of a car on an LTE cell edge. SINR follows an AR(1) walk around 12 dB
(s = 0.9 s' + 0.1 x 12 + N(0, 2 dB), seed 7), rate = 20 MHz x 0.6 x log2(1 + SINR), at most 80
Mbit/s and at least 2. A handover every 60 s: one second at 1 Mbit/s with 2 % loss. Delay 35 ms,
plus 10 ms while SINR is below 5 dB; loss 0.1 % otherwise.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
EARTH_KM, ALTITUDE_KM, LIGHT_KM_S = 6371.0, 550.0, 299_792.458


def shannon_mbit(bandwidth_hz: float, efficiency: float, snr_db: float) -> float:
    return bandwidth_hz * efficiency * math.log2(1 + 10 ** (snr_db / 10)) / 1e6


def leo_pass(seconds: int = 240) -> list[tuple[float, float, float, float]]:
    rows = []
    for t in range(seconds):
        elevation = math.radians(10 + 80 * math.sin(math.pi * t / seconds))
        slant = math.sqrt((EARTH_KM + ALTITUDE_KM) ** 2 - (EARTH_KM * math.cos(elevation)) ** 2) - EARTH_KM * math.sin(elevation)
        snr = 15 - 20 * math.log10(slant / ALTITUDE_KM)
        delay = 2 * slant / LIGHT_KM_S * 1000
        loss = 0.5 if math.degrees(elevation) < 20 else 0.05
        rows.append((t, round(shannon_mbit(20e6, 0.75, snr), 2), round(delay, 2), loss))
    return rows


def cellular_drive(seconds: int = 300, seed: int = 7) -> list[tuple[float, float, float, float]]:
    rng = random.Random(seed)
    sinr, rows = 12.0, []
    for t in range(seconds):
        sinr = 0.9 * sinr + 0.1 * 12 + rng.gauss(0, 2)
        if t and t % 60 == 0:
            rows.append((t, 1.0, 35.0, 2.0))
            continue
        rate = min(80.0, max(2.0, shannon_mbit(20e6, 0.6, sinr)))
        rows.append((t, round(rate, 2), 45.0 if sinr < 5 else 35.0, 0.1))
    return rows


def write(name: str, rows: list[tuple[float, float, float, float]]) -> None:
    lines = ["seconds,rate_mbit,delay_ms,loss_percent", *(",".join(f"{v:g}" for v in row) for row in rows)]
    (HERE / name).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write("leo-pass.csv", leo_pass())
    write("cellular-drive.csv", cellular_drive())
