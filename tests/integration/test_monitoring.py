"""A real Prometheus scrapes a loopback FL run; every dashboard query returns data; `mlfo report` plots it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mlfo_toolkit.monitoring.prometheus import query_range
from mlfo_toolkit.util.linux import listening_tcp_ports
from mlfo_toolkit.util.processes import free_port, wait_for_port
from tests.helpers import REPO, require_binary

pytestmark = [pytest.mark.flower, pytest.mark.slow]
PNG = b"\x89PNG\r\n\x1a\n"


def mlfo(env: dict[str, str], cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlfo_toolkit", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_prometheus_scrapes_a_demo_run_and_the_dashboard_has_data(workdir: Path) -> None:
    for tool in ("prometheus", "prometheus-node-exporter", "promtool", "iperf3"):
        require_binary(tool)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    prom_port = free_port()
    env |= {
        "MLFO_PATHS__STATE_DIR": str(workdir / "state"),
        "MLFO_PATHS__RUNS_DIR": str(workdir / "runs"),
        "MLFO_MONITOR__PROMETHEUS_PORT": str(prom_port),
        "MLFO_MONITOR__NODE_EXPORTER_PORT": str(free_port()),
        # Rounds of 3 clients take about a second now (wake-ups): scrape (and read back) four times as often,
        # so that every round's accuracy is in the series.
        "MLFO_MONITOR__SCRAPE_INTERVAL": "250ms",
    }
    url = f"http://127.0.0.1:{prom_port}"
    helpers: list[subprocess.Popen[bytes]] = []
    up = mlfo(env, workdir, "monitor", "up", "--json")
    assert up.returncode == 0, up.stderr
    started = json.loads(up.stdout)
    assert started["mode"] == "loopback" and started["prometheus"] == url
    assert started["grafana"]["started"] is False and started["grafana"]["why"]  # said clearly
    try:
        # The background app: an iperf3 flow on loopback and mlfo's socket exporter for it.
        iperf_port, exporter_port = free_port(), free_port()
        helpers.append(subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)], stdout=subprocess.DEVNULL))
        # Not a connect probe: iperf3 takes a connection that sends no test for a failed test and
        # re-opens its socket, which once refused the real client.
        deadline = time.monotonic() + 10
        while iperf_port not in listening_tcp_ports(helpers[0].pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert iperf_port in listening_tcp_ports(helpers[0].pid), "iperf3 -s did not listen within 10 s"
        helpers.append(subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(iperf_port), "-b", "1M", "-t", "600"], stdout=subprocess.DEVNULL))
        helpers.append(subprocess.Popen(
            [sys.executable, "-m", "mlfo_toolkit", "exporter", "--app", "background", "--match-port", str(iperf_port),
             "--host", "127.0.0.1", "--port", str(exporter_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_for_port("127.0.0.1", exporter_port, 30)
        targets = workdir / "state" / "prometheus" / "targets"
        (targets / "app-test.json").write_text(json.dumps([{"targets": [f"127.0.0.1:{exporter_port}"], "labels": {"role": "app-client"}}]))

        demo = mlfo(env, workdir, "demo", "--json", "--cohorts", "1", "--clients", "3", "--rounds", "4")
        assert demo.returncode == 0, demo.stderr[-2000:]
        summary = json.loads(demo.stdout)

        now = time.time()
        (series,) = query_range(url, "model_accuracy", now - 300, now, 0.25)
        assert series["metric"]["cohort"] == summary["cohorts"][0]["name"]
        values = [float(v) for _, v in series["values"]]
        changes = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
        assert len(changes) >= 3 and changes == sorted(changes), changes  # rose round by round
        assert changes[-1] == pytest.approx(summary["cohorts"][0]["accuracy"][-1])

        # Every panel's query, as Grafana would send it for the run's time window (a range: with rounds of about
        # a second, the FL connections are closed again before the final accuracy is scraped).
        first, last = float(series["values"][0][0]), float(series["values"][-1][0])
        dashboard = json.loads((REPO / "monitoring" / "dashboard.json").read_text())
        empty = []
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                if not query_range(url, target["expr"].replace("$__rate_interval", "1m"), first - 5, last, 0.25):
                    empty.append(f"{panel['title']} [{target['refId']}]")
        assert empty == [], f"panels without data: {empty}"

        run_dir = Path(summary["run_dir"])
        report = mlfo(env, workdir, "report", str(run_dir), "--prometheus", url, "--format", "html", "--json")
        assert report.returncode == 0, report.stderr
        made = json.loads(report.stdout)
        names = sorted(Path(p).name for p in made["plots"])
        assert names == ["accuracy-loss.png", "labels.png", "orchestration.png", "round-anatomy.png", "traffic-rate.png", "traffic.png"]
        assert all(Path(p).read_bytes()[:8] == PNG for p in made["plots"])
        manifest = json.loads(Path(made["manifest"]).read_text())
        assert manifest["flwr"] and manifest["python"] and manifest["seeds"]["fl.seed"] == 42
        assert manifest["inputs"]["cohort_file"]["sha256"] and manifest["prometheus"] == url
        assert "<img" in Path(made["html"]).read_text()
    finally:
        for proc in helpers:
            proc.terminate()
            proc.wait(10)
        down = mlfo(env, workdir, "monitor", "down")
        assert down.returncode == 0, down.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/-/ready", timeout=2)


def test_generated_configs_pass_promtool(workdir: Path) -> None:
    require_binary("promtool")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")} | {"MLFO_PATHS__STATE_DIR": str(workdir / "state")}
    for args in (["--loopback"], ["--topology", str(REPO / "topologies" / "prototype.yaml")], ["--topology", str(REPO / "topologies" / "small.yaml")]):
        out = workdir / "prometheus.yml"
        result = mlfo(env, workdir, "monitor", "config", *args, "-o", str(out))
        assert result.returncode == 0, result.stderr
        check = subprocess.run(["promtool", "check", "config", str(out)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
