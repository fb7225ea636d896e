"""The full fuzz run: ≥ 10,000 bad requests against real `mlfo serve` and `mlfo agent` processes.

    .venv/bin/python bench/fuzz_bench.py [--per-class 1000] [--seed N]

Starts a cloud MLFO, a campus MLFO and a node agent as processes on loopback ports, sends every
class of bad input in tests/helpers/fuzzing.py to /receive, /momo/deploy, /serv and /cli, then runs the
CLI's `intent validate` and `intent plan` on bad files. Prints per class the status codes seen,
and overall: 5xx and 2xx answers (both must be 0), server deaths, the slowest answer, each
server's RSS before and after, and any file the run left in /tmp.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlfo_toolkit.util.processes import free_port, wait_for_port  # noqa: E402
from tests.helpers.fuzzing import CLASSES, CLI_BAD, cases  # noqa: E402


def start(argv: list[str], env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "mlfo_toolkit", *argv], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 60)
    return proc


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    return round(psutil.Process(proc.pid).memory_info().rss / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=1000, help=f"cases per class ({len(CLASSES)} classes)")
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    tmp_before = set(os.listdir("/tmp"))
    with tempfile.TemporaryDirectory(prefix="mlfo-fuzz-") as folder:
        work = Path(folder)
        agent_port, fl_port, cloud_port, campus_port = free_port(), free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
        env |= {"MLFO_PATHS__STATE_DIR": str(work / "state"), "MLFO_IP_PLAN__SERVERS": f'["127.0.0.1:{agent_port}"]',
                "MLFO_MLFO__CLOUD": f"127.0.0.1:{cloud_port}"}
        servers = {
            "agent": start(["agent", "--port", str(agent_port), "--fl-port", str(fl_port)], env, agent_port, work),
            "cloud": start(["serve", "--role", "cloud", "--port", str(cloud_port)], env, cloud_port, work),
            "campus": start(["serve", "--role", "campus", "--port", str(campus_port)], env, campus_port, work),
        }
        urls = {"campus": f"http://127.0.0.1:{campus_port}/receive", "cloud": f"http://127.0.0.1:{cloud_port}/momo/deploy",
                "serv": f"http://127.0.0.1:{agent_port}/serv", "cli": f"http://127.0.0.1:{agent_port}/cli"}
        rss_before = {name: rss_mb(proc) for name, proc in servers.items()}
        statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        slowest, slowest_case, total = 0.0, "", 0
        session = requests.Session()
        started = time.monotonic()
        try:
            for case in cases(args.seed, args.per_class):
                t0 = time.monotonic()
                try:
                    url = urls[case.endpoint] + (f"?{case.query}" if case.query else "")
                    status = session.request(case.method, url, timeout=60, **case.request_kwargs()).status_code
                except requests.RequestException:
                    status = 0  # no answer at all
                took = time.monotonic() - t0
                if took > slowest:
                    slowest, slowest_case = took, f"{case.kind} -> {case.endpoint}"
                statuses[case.kind][status] += 1
                total += 1
            seconds = time.monotonic() - started
            deaths = [name for name, proc in servers.items() if proc.poll() is not None]
            rss_after = {name: rss_mb(proc) for name, proc in servers.items() if proc.poll() is None}
            allocations = requests.get(f"http://127.0.0.1:{cloud_port}/momo/allocations", timeout=10).json()["allocations"]
        finally:
            for proc in servers.values():
                proc.send_signal(signal.SIGTERM)
            for proc in servers.values():
                proc.wait(60)
        cli_codes: collections.Counter[int] = collections.Counter()
        for i, text in enumerate(CLI_BAD * max(1, args.per_class // 40)):
            intent = work / f"intent-{i % len(CLI_BAD)}.yaml"
            intent.write_text(text, errors="surrogateescape")
            cohorts = work / "cohorts.yaml"
            cohorts.write_text(f"cohorts:\n  - {{name: a, size: 2, intent: {intent.name}}}\n")
            for argv in (["intent", "validate", str(intent)], ["intent", "plan", str(cohorts)]):
                from click.testing import CliRunner

                from mlfo_toolkit.cli.main import cli

                result = CliRunner().invoke(cli, argv)
                cli_codes[result.exit_code if result.exception is None or isinstance(result.exception, SystemExit) else -1] += 1
    left = sorted(set(os.listdir("/tmp")) - tmp_before)
    print(f"{total} HTTP cases in {seconds:.1f} s ({total / seconds:.0f}/s), {len(CLASSES)} classes, seed {args.seed}")
    for kind in CLASSES:
        print(f"  {kind:<11} " + ", ".join(f"{code}: {n}" for code, n in sorted(statuses[kind].items())))
    every = collections.Counter[int]()
    for counter in statuses.values():
        every.update(counter)
    print(f"5xx: {sum(n for c, n in every.items() if c >= 500)}  2xx: {sum(n for c, n in every.items() if 200 <= c < 300)}  "
          f"no answer: {every.get(0, 0)}  server deaths: {deaths or 0}")
    print(f"slowest answer: {slowest * 1000:.0f} ms ({slowest_case})")
    print("RSS MB before -> after: " + ", ".join(f"{n} {rss_before[n]} -> {rss_after.get(n, 'dead')}" for n in servers))
    print(f"active allocations left: {sum(1 for a in allocations if a['active'])}")
    print(f"CLI: {sum(cli_codes.values())} runs of validate/plan, exit codes {dict(cli_codes)} (-1 = a traceback)")
    print(f"/tmp side effects: {left or 'none'}")


if __name__ == "__main__":
    main()
