"""Monitoring without processes: ss parsing, byte accounting, prometheus.yml, Grafana provisioning."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlfo_toolkit.config import Config
from mlfo_toolkit.monitoring.prometheus import prometheus_config
from mlfo_toolkit.monitoring.sockets import ByteTotals, parse_ss, socket_inodes, tcp_connections
from mlfo_toolkit.net.topology import load_topology
from tests.helpers import REPO

SS = """0      0      10.0.11.100:6000 10.0.1.10:45186 ino:4242 sk:3ea91 cgroup:/ <->
\t bbr wscale:9,9 rto:204 rtt:2.792/5.526 ato:40 mss:25344 cwnd:18 bytes_sent:2638 bytes_acked:2638 bytes_received:2587 delivery_rate 40550400000bps app_limited
0      0      10.0.11.100:6000 10.0.1.11:45190 ino:4243 sk:3ea92 cgroup:/ <->
\t cubic rtt:0.5/0.1 cwnd:10 bytes_sent:100 bytes_received:50 delivery_rate 8Mbps
"""


def test_parse_ss() -> None:
    first, second = parse_ss(SS)
    assert (first.local, first.peer, first.inode, second.inode) == ("10.0.11.100:6000", "10.0.1.10:45186", 4242, 4243)
    assert first.rtt_seconds == pytest.approx(0.002792) and first.cwnd == 18
    assert (first.bytes_sent, first.bytes_received) == (2638, 2587)
    assert first.delivery_rate_bytes == 40550400000 / 8 and second.delivery_rate_bytes == 1e6
    assert first.local_port == 6000 and first.peer_port == 45186


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs iproute2's ss")
def test_a_connection_is_owned_by_the_process_holding_its_socket_and_no_other() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # A connection of this process, and one of a child process to the same listener.
    mine = socket.create_connection(("127.0.0.1", port))
    accepted: list[socket.socket] = []
    child = subprocess.Popen([sys.executable, "-c", f"import socket, sys; s = socket.create_connection(('127.0.0.1', {port})); "
                              "print(s.getsockname()[1], flush=True); sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child_port = int(child.stdout.readline())
        accepted += [listener.accept()[0] for _ in range(2)]
        connections = {c.local: c for c in tcp_connections(0.0)}
        ours, theirs = socket_inodes({os.getpid()}), socket_inodes({child.pid})
        assert connections[f"127.0.0.1:{mine.getsockname()[1]}"].inode in ours - theirs
        assert connections[f"127.0.0.1:{child_port}"].inode in theirs - ours
        assert socket_inodes({2**22 + 7}) == set()  # no such process: no sockets, no error
    finally:
        child.kill()
        child.wait()
        for s in (mine, listener, *accepted):
            s.close()


def test_byte_totals_survive_closed_connections() -> None:
    totals = ByteTotals()
    first, second = parse_ss(SS)
    assert totals.update([first, second]) == (2738, 2637)
    assert totals.update([]) == (2738, 2637)  # both closed: their bytes still count


def test_prometheus_config_for_the_prototype(config: Config) -> None:
    generated = prometheus_config(config, load_topology(None))
    jobs = {job["job_name"]: job for job in generated["scrape_configs"]}
    assert set(jobs) == {"mlfo", "mlfo_agent", "node", "app"}
    mlfo = {t["labels"]["role"]: t["targets"][0] for t in jobs["mlfo"]["static_configs"]}
    assert mlfo == {"cloud-mlfo": "10.0.0.1:9000", "campus-mlfo": "10.0.1.1:8000"}
    agents = jobs["mlfo_agent"]["static_configs"]
    assert len(agents) == 55
    fed3 = next(t for t in agents if t["labels"]["host"] == "fed.3")
    assert fed3["targets"] == ["10.0.13.100:5000"] and fed3["labels"]["cohort_index"] == "3"
    fc42 = next(t for t in agents if t["labels"]["host"] == "fc.42")
    assert fc42["labels"] == {"role": "fl-client", "host": "fc.42", "cohort_index": "4"}
    nodes = [t["labels"]["host"] for t in jobs["node"]["static_configs"]]
    assert "fed.1" in nodes and "fc.10" not in nodes  # no node_exporter per client unless asked
    assert jobs["app"]["static_configs"][0]["targets"] == ["10.0.1.2:9200"]


def test_token_is_sent_from_a_file_not_written_into_the_config(config: Config) -> None:
    secured = config.with_overrides({"api.token": "s3cret"})
    text = yaml.safe_dump(prometheus_config(secured, None))
    assert "s3cret" not in text
    credentials = yaml.safe_load(text)["scrape_configs"][0]["authorization"]["credentials_file"]
    assert Path(credentials).read_text() == "s3cret" and Path(credentials).stat().st_mode & 0o077 == 0


def test_grafana_provisioning_matches_the_dashboard() -> None:
    # Grafana cannot run here: check the files against Grafana's documented provisioning format.
    datasources = yaml.safe_load((REPO / "monitoring/provisioning/datasources/prometheus.yaml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["url"].startswith("http://")
    providers = yaml.safe_load((REPO / "monitoring/provisioning/dashboards/mlfo.yaml").read_text())
    assert providers["apiVersion"] == 1 and providers["providers"][0]["type"] == "file"
    dashboard = json.loads((REPO / "monitoring/dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("fl traffic total", "fl traffic rate", "sent / received", "congestion window", "rtt",
                   "background app latency", "background app traffic", "loss", "accuracy", "cloud mlfo bandwidth", "cpu"):
        assert wanted in titles, wanted
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])


def test_the_answer_that_a_run_ended_counts_the_bytes_that_came_last(config: Config, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ss is sampled at most every 2 s while a run goes on; the status that says the run is done is the MLFO's last
    look at its traffic, so it counts what arrived since (a round of 1 s once went missing from a report)."""
    import os
    import subprocess
    from types import SimpleNamespace

    from mlfo_toolkit.agent.node import NodeAgent
    from mlfo_toolkit.monitoring import sockets

    received = [1000]
    held = socket.socket()  # the SuperLink's end of the connection: a socket this process holds
    inode = os.fstat(held.fileno()).st_ino

    def ss(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        received[0] += 38_480  # a model update arrived since the last look
        line = f"0 0 10.0.0.1:9092 10.0.0.2:4000 ino:{inode} sk:1 <->\n"
        return subprocess.CompletedProcess([], 0, line + f"\t cubic rtt:0.5/0.1 bytes_sent:10 bytes_received:{received[0]}\n", "")

    monkeypatch.setattr(sockets.subprocess, "run", ss)
    monkeypatch.setattr(sockets, "_ss_cache", (-sockets.SS_REUSE_SECONDS, []))
    state = {"state": "running"}
    agent = NodeAgent(config, work_dir=tmp_path / "agent")
    agent.server = SimpleNamespace(  # type: ignore[assignment]
        address="10.0.0.1:9092", superlink=SimpleNamespace(pid=os.getpid()),
        params=SimpleNamespace(deployment="d1", cohort="c", tier="flat"),
        status=lambda: {"address": "10.0.0.1:9092", "deployment": "d1", **state})
    assert agent.status()["server"]["traffic"]["bytes_received"] == 39_480
    assert agent.status()["server"]["traffic"]["bytes_received"] == 39_480  # a poll a moment later: the same sample
    state["state"] = "done"
    assert agent.status()["server"]["traffic"]["bytes_received"] == 77_960
    held.close()
