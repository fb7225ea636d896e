"""Benchmark (run on demand, no root): a burst of intents to a small pool of FL servers, with real Flower.

    .venv/bin/python bench/burst_bench.py [--intents 30] [--servers 5] [--interval 1.0] [--clients 2] [--rounds 3]

As the prototype's own evaluation did: `--intents` intents sent `--interval` seconds apart to a campus
MLFO whose cloud MLFO has `--servers` FL servers (`mlfo demo`'s loopback backend: MLFOs, agents and
the shared executor in this process's care). Intents beyond the pool wait in the campus MLFO's queue
(`mlfo.queue_length`, `mlfo.queue_wait_seconds`) and run in turn; past the queue's length an intent
is refused at once. Prints, per intent, how it ended and how long it waited, then: how many ran to
`done`, how many were refused at once (and why), how many failed, how many were lost (none may be),
and the longest wait in the queue.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlfo_toolkit.backends.loopback import LoopbackBackend  # noqa: E402
from mlfo_toolkit.config import load_config  # noqa: E402

WELDING = Path(__file__).resolve().parent.parent / "intents" / "welding.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intents", type=int, default=30)
    parser.add_argument("--servers", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-length", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlfo-burst-") as folder:
        work = Path(folder)
        config = load_config(environ={}).with_overrides({
            "paths.state_dir": str(work / "state"), "paths.runs_dir": str(work / "runs"), "mlfo.queue_length": args.queue_length,
            "mlfo.client_memory_mb": 0,  # the bench measures the queue, not admission control
        })
        # Each intent takes its own clients: a client agent serves one cohort at a time.
        with LoopbackBackend(config, work, servers=args.servers, clients=args.clients * args.intents) as backend:
            url = f"http://{backend.campus}"
            started = time.monotonic()
            sent: list[dict[str, Any]] = []
            for i in range(args.intents):
                answer = requests.post(f"{url}/receive", files={"file": WELDING.read_bytes()}, timeout=30, data={
                    "cohortsize": str(args.clients), "ipstart": str(10 + args.clients * i), "numround": str(args.rounds),
                    "minav": str(args.clients), "fracfit": "1.0", "name": f"burst-{i}"})
                sent.append({"i": i, "status": answer.status_code, "at": round(time.monotonic() - started, 1),
                             "id": answer.json().get("id"), "refused": None if answer.ok else answer.json().get("message")})
                time.sleep(args.interval)
            records: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline:
                records = {d["id"]: d for d in requests.get(f"{url}/deployments?limit=1000", timeout=30).json()["deployments"]}
                if all(records.get(s["id"], {}).get("state") in ("done", "failed") for s in sent if s["id"]):
                    break
                time.sleep(1.0)
            wall = time.monotonic() - started
    done = failed = refused = lost = 0
    longest_wait = 0.0
    print("| intent | sent at s | answer | end | waited for a server s | reason |")
    print("|---|---|---|---|---|---|")
    for item in sent:
        record = records.get(item["id"] or "", {})
        state = record.get("state")
        if item["refused"]:
            refused += 1
        elif state == "done":
            done += 1
        elif state == "failed":
            failed += 1
        else:
            lost += 1
        waited = None
        if record.get("orchestration_seconds") is not None and record.get("created"):
            # From accepted to running, less the orchestration itself: the time spent waiting for a server.
            running_at = min((c.get("since") or 1e18) for c in record.get("clients", [])) if record.get("clients") else None
            if running_at and running_at < 1e18:
                waited = max(0.0, running_at - record["created"] - record["orchestration_seconds"])
                longest_wait = max(longest_wait, waited)
        print(f"| {item['i']} | {item['at']} | {item['status']} | {state or '-'} | "
              f"{round(waited, 1) if waited is not None else '-'} | {(item['refused'] or record.get('reason') or '')[:70]} |")
    print()
    print(f"{args.intents} intents, {args.interval} s apart, {args.servers} FL servers: done {done}, refused at once {refused}, "
          f"failed {failed}, lost {lost}; longest wait for a server {longest_wait:.1f} s; {wall:.0f} s in all")


if __name__ == "__main__":
    main()
