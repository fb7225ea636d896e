"""Monitoring: prometheus.yml from the topology (or loopback targets), Prometheus, exporters and Grafana."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import yaml

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MissingDependencyError, MlfoError, ValidationError
from mlfo_toolkit.net.hosts import publish_port, spawn_in_host, wait_listening
from mlfo_toolkit.net.state import (
    NetworkState,
    ProcessRecord,
    network_token,
    running_topology,
    save_state,
    spawn_recorded,
    stop_processes,
)
from mlfo_toolkit.net.topology import AGENT_ROLES, Topology
from mlfo_toolkit.util.files import write_json_atomically, write_secret
from mlfo_toolkit.util.processes import wait_for_port
from mlfo_toolkit.util.resources import resource_path

MONITOR_FILE = "monitor.json"
LOOPBACK = "127.0.0.1"


def prometheus_dir(config: Config) -> Path:
    return Path(config.paths.state_dir).resolve() / "prometheus"


def targets_dir(config: Config) -> Path:
    return prometheus_dir(config) / "targets"


def write_targets(config: Config, name: str, groups: list[dict[str, Any]]) -> Path:
    """A Prometheus file_sd file (targets + labels); Prometheus notices it without a restart."""
    return write_json_atomically(targets_dir(config) / f"{name}.json", groups)


def _auth(config: Config) -> dict[str, Any]:
    token = config.southbound_token or network_token(Path(config.paths.state_dir))
    if not token:
        return {}
    token_file = write_secret(prometheus_dir(config) / "token", token)
    return {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}


def prometheus_config(config: Config, topology: Topology | None, faucet: str | None = None) -> dict[str, Any]:
    """prometheus.yml: static in-network targets for a topology, file_sd targets on loopback otherwise;
    `faucet`: where Prometheus reaches the network's Faucet metrics (HOST:PORT), if it has a Faucet."""
    monitor = config.monitor
    auth = _auth(config)
    jobs: list[dict[str, Any]] = []
    if topology is not None:
        inner = topology.mlfo_config(config)
        mlfo_targets = []
        for host in topology.hosts:
            port = {"cloud-mlfo": inner.mlfo.momo_port, "campus-mlfo": inner.mlfo.port}.get(host.role)
            if port:
                mlfo_targets.append({"targets": [f"{host.ip}:{port}"], "labels": {"role": host.role, "host": host.name}})
        agent_targets = []
        for host in topology.hosts:
            if host.role in AGENT_ROLES:
                cohort = host.cohort if host.role == "fl-server" else host.campus
                labels = {"role": host.role, "host": host.name, **({"cohort_index": str(cohort)} if cohort else {})}
                agent_targets.append({"targets": [f"{host.ip}:{inner.agent.port}"], "labels": labels})
        node_targets = [
            {"targets": [f"{h.ip}:{monitor.node_exporter_port}"], "labels": {"role": h.role, "host": h.name}}
            for h in node_exporter_hosts(config, topology)
        ]
        app = topology.one("app-client")
        app_targets = [{"targets": [f"{app.ip}:{monitor.app_exporter_port}"], "labels": {"role": app.role, "host": app.name}}]
        jobs = [
            {"job_name": "mlfo", **auth, "static_configs": mlfo_targets},
            {"job_name": "mlfo_agent", **auth, "static_configs": agent_targets},
            {"job_name": "node", "static_configs": node_targets},
            {"job_name": "app", "static_configs": app_targets},
        ]
        if faucet:
            jobs.append({"job_name": "faucet", "static_configs": [{"targets": [faucet], "labels": {"role": "controller"}}]})
    else:
        directory = str(targets_dir(config))

        def discovered(pattern: str) -> list[dict[str, Any]]:
            # inotify picks up new files at once; the refresh interval is the fallback
            return [{"files": [f"{directory}/{pattern}"], "refresh_interval": "5s"}]

        jobs = [
            {"job_name": "mlfo", **auth, "file_sd_configs": discovered("mlfo-*.json")},
            {"job_name": "mlfo_agent", **auth, "file_sd_configs": discovered("agent-*.json")},
            {"job_name": "node", "static_configs": [{"targets": [f"{LOOPBACK}:{monitor.node_exporter_port}"], "labels": {"role": "machine"}}]},
            {"job_name": "app", "file_sd_configs": discovered("app-*.json")},
        ]
    return {
        "global": {"scrape_interval": monitor.scrape_interval, "evaluation_interval": monitor.scrape_interval},
        "scrape_configs": jobs,
    }


def node_exporter_hosts(config: Config, topology: Topology) -> list[Any]:
    return [h for h in topology.hosts if config.monitor.exporters_on_clients or h.role != "fl-client"]


def render_config(config: Config, topology: Topology | None, faucet: str | None = None) -> str:
    header = "# prometheus.yml written by `mlfo monitor config`; regenerate it rather than editing it.\n"
    return header + yaml.safe_dump(prometheus_config(config, topology, faucet), sort_keys=False)


def faucet_target(state: NetworkState | None, topology: Topology | None) -> str | None:
    """Where Prometheus, in its host, scrapes the network's Faucet: its own IP, relayed to Faucet on loopback."""
    controller = (state.extra.get("controller") or {}) if state else {}
    if controller.get("kind") != "faucet" or topology is None:
        return None
    return f"{topology.one('prometheus').ip}:{controller['metrics'].rsplit(':', 1)[1]}"


def check_config(path: Path) -> None:
    """`promtool check config`; ValidationError with its output when it fails."""
    promtool = shutil.which("promtool")
    if not promtool:
        return
    done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ValidationError(f"promtool rejects {path}: {(done.stdout + done.stderr).strip()}")


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        raise MissingDependencyError(f"'{name}' is not installed", hint=f"install Debian's {package} (`sudo make system`)")
    return path


def _monitor_file(config: Config) -> Path:
    return prometheus_dir(config) / MONITOR_FILE


def scraping_seconds(config: Config) -> float:
    """One scrape interval if the Prometheus of `mlfo monitor up` is running, else 0: how long a run's
    services should stay up after it ends so that its last values (the final round) are scraped."""
    try:
        records = json.loads(_monitor_file(config).read_text()).get("processes", [])
    except (OSError, ValueError):
        return 0.0
    if not any(ProcessRecord(**r).alive() for r in records if r.get("name") == "prometheus"):
        return 0.0
    value = config.monitor.scrape_interval
    number = float(value.rstrip("ms"))
    return number / 1000 if value.endswith("ms") else number * 60 if value.endswith("m") else number


def wait_for_final_scrape(config: Config, since: float) -> None:
    """With `mlfo monitor up` running: wait until Prometheus has scraped every target once after `since`
    (the run's end), so that its last values (the final round) are kept; at most five scrape intervals and
    two seconds. A fixed wait of one interval, and later three intervals, missed the final round now and
    then on a loaded machine (a fresh-clone test run on two cores)."""
    interval = scraping_seconds(config)
    if not interval:
        return
    url = f"http://{LOOPBACK}:{config.monitor.prometheus_port}/api/v1/targets"
    deadline = time.monotonic() + 5 * interval + 2.0
    while time.monotonic() < deadline:
        try:
            targets = requests.get(url, params={"state": "active"}, timeout=2).json()["data"]["activeTargets"]
            if targets and all(_epoch(t["lastScrape"]) > since for t in targets):
                return
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass
        time.sleep(min(0.2, interval))


def _epoch(rfc3339: str) -> float:
    """Prometheus's `2026-12-01T21:07:19.123456789Z` as seconds since the epoch (nanoseconds cut to micro)."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def monitor_up(config: Config) -> dict[str, Any]:
    """Start Prometheus (and node_exporter) for the running network, or on loopback; Grafana if Docker can."""
    directory = prometheus_dir(config)
    targets_dir(config).mkdir(parents=True, exist_ok=True)  # Prometheus watches it from the start
    if _monitor_file(config).exists():
        raise MlfoError("monitoring is already up", hint="`mlfo monitor down` first")
    running = running_topology(Path(config.paths.state_dir))
    topology = running[1] if running else None
    config_path = directory / "prometheus.yml"
    faucet = faucet_target(running[0] if running else None, topology)
    config_path.write_text(render_config(config, topology, faucet))
    check_config(config_path)
    prometheus = _binary("prometheus", "prometheus")
    node_exporter = _binary("prometheus-node-exporter", "prometheus-node-exporter")
    port = config.monitor.prometheus_port
    started: dict[str, Any] = {"mode": "network" if topology else "loopback", "config": str(config_path), "processes": []}
    records: list[ProcessRecord] = []
    storage = ["--storage.tsdb.path", str(directory / "data"), "--storage.tsdb.retention.time", "15d"]
    if running and topology:
        state, _ = running
        log_dir = Path(config.paths.state_dir) / "logs"
        prom_host = topology.one("prometheus")
        proc = spawn_in_host(state, prom_host.name, "prometheus",
                             [prometheus, "--config.file", str(config_path), *storage, "--web.listen-address", f"{prom_host.ip}:{port}"],
                             log_dir, cpu_limited=False)
        waits = [(prom_host.name, port, proc)]
        for host in node_exporter_hosts(config, topology):
            exporter = spawn_in_host(state, host.name, "node-exporter",
                                     [node_exporter, "--web.listen-address", f"{host.ip}:{config.monitor.node_exporter_port}"],
                                     log_dir, cpu_limited=False)
            waits.append((host.name, config.monitor.node_exporter_port, exporter))
        if faucet:  # Faucet listens on the machine's loopback: relay it into Prometheus's host
            host_port = int(faucet.rsplit(":", 1)[1])
            relay = spawn_recorded([sys.executable, "-m", "mlfo_toolkit.net.relay", "--inward", "--listen", faucet, "--pid",
                                    str(state.host(prom_host.name).pid), "--target", state.extra["controller"]["metrics"]],
                                   log_dir / "relay-faucet-metrics.log", "faucet-metrics relay", host=prom_host.name)
            state.processes.append(relay)
            waits.append((prom_host.name, host_port, relay))
        wait_listening(state, waits, 60)
        publish_port(state, prom_host.name, prom_host.ip, port, port, log_dir)
        save_state(state, Path(config.paths.state_dir))
        records = [p for p in state.processes
                   if p.name in ("prometheus", "node-exporter", "faucet-metrics relay") or p.name.startswith(f"publish {prom_host.name}")]
    else:
        records.append(spawn_recorded([prometheus, "--config.file", str(config_path), *storage, "--web.listen-address", f"{LOOPBACK}:{port}"],
                              directory / "prometheus.log", "prometheus"))
        records.append(spawn_recorded([node_exporter, "--web.listen-address", f"{LOOPBACK}:{config.monitor.node_exporter_port}"],
                              directory / "node-exporter.log", "node-exporter"))
    write_json_atomically(_monitor_file(config), {"processes": [vars(r) for r in records], "grafana": None})
    try:
        wait_for_port(LOOPBACK, port, 60)
    except MlfoError:
        monitor_down(config)
        raise
    started["processes"] = [f"{r.name} ({r.pid})" for r in records]
    started["prometheus"] = f"http://{LOOPBACK}:{port}"
    started["grafana"] = start_grafana(config, f"http://{LOOPBACK}:{port}")
    data = json.loads(_monitor_file(config).read_text())
    data["grafana"] = started["grafana"].get("container")
    write_json_atomically(_monitor_file(config), data)
    return started


def start_grafana(config: Config, prometheus_url: str) -> dict[str, Any]:
    """Grafana in Docker, provisioned with the data source and the dashboard, when Docker and the image are here."""
    try:
        import docker  # the optional `containers` extra: Grafana runs only where Docker does
    except ImportError:
        return {"started": False, "why": "the docker Python package is missing (pip install 'mlfo-toolkit[containers]')"}
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception:
        return {"started": False, "why": "no Docker engine is reachable (start dockerd)"}
    try:
        client.images.get(config.monitor.grafana_image)
    except Exception:
        return {"started": False, "why": f"the image {config.monitor.grafana_image} is not present (docker pull it where a registry is reachable)"}
    provisioning = provisioning_dir(config, prometheus_url)
    container = client.containers.run(
        config.monitor.grafana_image,
        detach=True,
        name=f"mlfo-grafana-{os.getpid()}",
        network_mode="host",
        environment={"GF_SERVER_HTTP_ADDR": LOOPBACK, "GF_SERVER_HTTP_PORT": str(config.monitor.grafana_port)},
        volumes={str(provisioning): {"bind": "/etc/grafana/provisioning", "mode": "ro"}},
    )
    return {"started": True, "container": container.name, "url": f"http://{LOOPBACK}:{config.monitor.grafana_port}"}


def provisioning_dir(config: Config, prometheus_url: str) -> Path:
    """monitoring/provisioning with the data source URL filled in, and the dashboard beside it."""
    target = prometheus_dir(config) / "grafana-provisioning"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(resource_path("monitoring/provisioning"), target)
    datasource = target / "datasources" / "prometheus.yaml"
    datasource.write_text(datasource.read_text().replace("http://127.0.0.1:9090", prometheus_url))
    (target / "dashboards" / "mlfo.json").write_text(resource_path("monitoring/dashboard.json").read_text())
    return target


def monitor_down(config: Config) -> dict[str, Any]:
    """Stop exactly what `monitor up` started."""
    path = _monitor_file(config)
    if not path.exists():
        raise MlfoError("monitoring is not up", hint="start it with `mlfo monitor up`")
    data = json.loads(path.read_text())
    records = [ProcessRecord(**p) for p in data["processes"]]
    stopped = stop_processes(records)
    running = running_topology(Path(config.paths.state_dir))
    if running:
        state, _ = running
        names = {(r.pid, r.create_time) for r in records}
        state.processes = [p for p in state.processes if (p.pid, p.create_time) not in names]
        state.published = {k: v for k, v in state.published.items() if v != f"{LOOPBACK}:{config.monitor.prometheus_port}"}
        save_state(state, Path(config.paths.state_dir))
    if data.get("grafana"):
        try:
            import docker  # the optional `containers` extra: Grafana runs only where Docker does

            docker.from_env(timeout=5).containers.get(data["grafana"]).remove(force=True)
            stopped.append(data["grafana"])
        except Exception as err:
            raise MlfoError(f"could not remove the Grafana container {data['grafana']}: {err}") from None
    path.unlink()
    return {"stopped": stopped}


def query(prometheus_url: str, promql: str, at: float | None = None, timeout: float = 10) -> list[dict[str, Any]]:
    """An instant PromQL query; the result vector."""
    params: dict[str, Any] = {"query": promql}
    if at is not None:
        params["time"] = at
    answer = requests.get(f"{prometheus_url.rstrip('/')}/api/v1/query", params=params, timeout=timeout)
    body = answer.json()
    if body.get("status") != "success":
        raise ValidationError(f"Prometheus rejected '{promql}': {body.get('error')}")
    return list(body["data"]["result"])


def query_range(prometheus_url: str, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"query": promql, "start": start, "end": end, "step": step}
    answer = requests.get(
        f"{prometheus_url.rstrip('/')}/api/v1/query_range",
        params=params,
        timeout=30,
    )
    body = answer.json()
    if body.get("status") != "success":
        raise ValidationError(f"Prometheus rejected '{promql}': {body.get('error')}")
    return list(body["data"]["result"])
