"""Benchmark (run on demand, no root): SIGKILL each of the campus MLFO, the cloud MLFO and an FL server's
agent at three moments of a deployment, restart it, and check what is left.

    .venv/bin/python bench/crash_bench.py [--victims campus cloud agent] [--moments deploying running releasing]

Everything runs as its own process on loopback, with real Flower: a cloud MLFO, a campus MLFO, two FL
server agents and three FL client agents (`mlfo serve`, `mlfo agent`). For each victim and moment:
send an intent (3 clients, 4 rounds), wait for the moment (`deploying`: the deployment is being
deployed; `running`: a round is done; `releasing`: the run just ended), SIGKILL the victim, start it
again with the same command, and wait until every deployment has ended. Then it checks:

* Flower processes (SuperLink, `flwr run`, SuperNodes) that no running deployment owns;
* allocations of the cloud MLFO that are active with no running deployment;
* that the next intent deploys and runs to `done`.

Prints a table of the deployment's end, those counts, the next intent's state and the seconds it all took.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlfo_toolkit.util.processes import free_port, wait_for_port  # noqa: E402

FLOWER = ("flower-superlink", "flwr run", "flwr-serverapp", "flower-supernode", "flwr-clientapp", "flower-superexec", "mlfo FL server")
WELDING = Path(__file__).resolve().parent.parent / "intents" / "welding.yaml"


class Cluster:
    """The MLFOs and agents as processes on loopback, each restartable with its own command."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.ports = {name: free_port() for name in ("cloud", "campus", "s1", "s2", "c1", "c2", "c3")}
        self.fl_ports = {"s1": free_port(), "s2": free_port()}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")} | {
            "MLFO_PATHS__STATE_DIR": str(work / "state"),
            "MLFO_IP_PLAN__SERVERS": json.dumps([f"127.0.0.1:{self.ports[s]}" for s in ("s1", "s2")]),
            "MLFO_IP_PLAN__CLIENTS": json.dumps([f"127.0.0.1:{self.ports[c]}" for c in ("c1", "c2", "c3")]),
            "MLFO_MLFO__CLOUD": f"127.0.0.1:{self.ports['cloud']}",
            "MLFO_MLFO__LOST_AFTER_SECONDS": "4", "MLFO_MLFO__JANITOR_SECONDS": "1", "MLFO_MLFO__RELEASE_GRACE_SECONDS": "10",
            "MLFO_MLFO__CLIENT_CHECK_SECONDS": "1", "MLFO_FL__ROUND_TIMEOUT": "10",
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def argv(self, name: str) -> list[str]:
        port = str(self.ports[name])
        if name in ("cloud", "campus"):
            return ["serve", "--role", name, "--port", port]
        if name in self.fl_ports:
            return ["agent", "--port", port, "--fl-port", str(self.fl_ports[name])]
        return ["agent", "--port", port]

    def start(self, name: str) -> None:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.processes[name] = subprocess.Popen([sys.executable, "-m", "mlfo_toolkit", *self.argv(name)], env=self.env,
                                                cwd=self.work, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.ports[name], 60)

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(10)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def send(self) -> str:
        answer = requests.post(f"{self.url('campus')}/receive", files={"file": WELDING.read_bytes()},
                               data={"cohortsize": "3", "ipstart": "10", "numround": "4", "minav": "3", "fracfit": "1.0"}, timeout=30)
        answer.raise_for_status()
        return str(answer.json()["id"])

    def deployment(self, deployment: str) -> dict[str, Any]:
        return dict(requests.get(f"{self.url('campus')}/deployments/{deployment}", timeout=10).json())

    def deployments(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.url('campus')}/deployments", timeout=10).json()["deployments"])

    def allocations(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.url('cloud')}/momo/allocations", timeout=10).json()["allocations"])

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def flower_processes(work: Path) -> list[psutil.Process]:
    """Flower's processes working under this bench's folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            line = " ".join(proc.info["cmdline"] or [])
            if any(name in line for name in FLOWER) and str(work) in (line + " " + proc.cwd()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_for(check: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except requests.RequestException:
            pass
        time.sleep(step)
    return False


def scenario(cluster: Cluster, victim: str, moment: str) -> dict[str, Any]:
    started = time.monotonic()
    deployment = cluster.send()

    def reached() -> bool:
        record = cluster.deployment(deployment)
        if moment == "deploying":
            return record["state"] == "deploying" and (victim != "agent" or record.get("server") is None)
        if moment == "running":
            return record["state"] == "running" and len(record["rounds"]) >= 1
        return record["state"] in ("done", "failed")

    hit = wait_for(reached, 180, step=0.05)
    target = "s1" if victim == "agent" else victim
    if victim == "agent":
        record = cluster.deployment(deployment)
        server_agent = (record.get("server") or {}).get("agent")
        target = "s2" if server_agent and server_agent.endswith(f":{cluster.ports['s2']}") else "s1"
    cluster.kill(target)
    time.sleep(1.0)
    cluster.start(target)
    ended = wait_for(lambda: all(d["state"] in ("done", "failed") and d.get("released") is not False for d in cluster.deployments()), 240, 0.5)
    record = cluster.deployment(deployment)
    # Give the janitors (1 s) and the cloud's grace for unreleased runs (10 s) their time.
    wait_for(lambda: not [a for a in cluster.allocations() if a["active"]] and not flower_processes(cluster.work), 30, 0.5)
    running = {d["id"] for d in cluster.deployments() if d["state"] == "running"}
    orphans = [p for p in flower_processes(cluster.work)]
    stray = [a["deployment"] for a in cluster.allocations() if a["active"] and a["deployment"] not in running]
    recovered = time.monotonic() - started
    following = cluster.send()
    wait_for(lambda: cluster.deployment(following)["state"] in ("done", "failed"), 240, 0.5)
    return {"victim": victim, "moment": moment, "hit": hit, "end": record["state"], "reason": (record.get("reason") or "")[:60],
            "orphans": len(orphans), "stray": len(stray), "next": cluster.deployment(following)["state"],
            "seconds": round(recovered, 1), "settled": ended}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victims", nargs="+", default=["campus", "cloud", "agent"], choices=["campus", "cloud", "agent"])
    parser.add_argument("--moments", nargs="+", default=["deploying", "running", "releasing"], choices=["deploying", "running", "releasing"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlfo-crash-") as folder:
        cluster = Cluster(Path(folder))
        try:
            for name in ("s1", "s2", "c1", "c2", "c3", "cloud", "campus"):
                cluster.start(name)
            for victim in args.victims:
                for moment in args.moments:
                    row = scenario(cluster, victim, moment)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            cluster.stop()
            left = flower_processes(Path(folder))
    print()
    print("| killed | at | moment hit | its deployment | Flower left unowned | allocations active, no deployment | next intent | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['victim']} | {r['moment']} | {'yes' if r['hit'] else 'no'} | {r['end']} {r['reason']} | {r['orphans']} | "
              f"{r['stray']} | {r['next']} | {r['seconds']} |")
    print(f"Flower processes left after the bench: {len(left)}")


if __name__ == "__main__":
    main()
