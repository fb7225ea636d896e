"""`mlfo meter set|show|clear|verify` as functions: plans from the running topology, a record of what was added."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MlfoError, ValidationError
from mlfo_toolkit.meters.faucet import FaucetMeterDriver
from mlfo_toolkit.meters.onos import OnosMeterDriver
from mlfo_toolkit.meters.ovs import OvsMeterDriver
from mlfo_toolkit.meters.plan import MeterSpec, parse_rate_kbps, plan_meters
from mlfo_toolkit.meters.probe import IPERF_PORT, measure_mbit
from mlfo_toolkit.net.hosts import spawn_in_host, wait_listening
from mlfo_toolkit.net.state import load_state, network_topology, state_path, stop_processes
from mlfo_toolkit.util.files import write_json_atomically

METER_FILE = "meters.json"
CONTROLLERS = ("ovs", "onos", "faucet")


class Driver(Protocol):
    name: str

    def apply(self, spec: MeterSpec) -> dict[str, Any]: ...

    def remove(self, record: dict[str, Any]) -> None: ...


def get_driver(name: str, config: Config) -> Driver:
    if name == "ovs":
        return OvsMeterDriver()
    if name == "onos":
        return OnosMeterDriver(config.onos)
    if name == "faucet":
        return FaucetMeterDriver(config)
    raise ValidationError(f"unknown controller '{name}'", field="controller", hint="ovs, onos or faucet")


def network_controller(config: Config, controller: str | None = None) -> str:
    """The meter driver to use: the one asked for, else the one the running network's switches obey
    (`topo up --controller faucet|onos`), else OVS directly."""
    if controller:
        return controller
    state_dir = Path(config.paths.state_dir)
    if state_path(state_dir).exists():
        kind = (load_state(state_dir).extra.get("controller") or {}).get("kind")
        if kind in ("faucet", "onos"):
            return str(kind)
    return "ovs"


def _meter_file(config: Config) -> Path:
    return Path(config.paths.state_dir) / METER_FILE


def load_meters(config: Config) -> dict[str, Any]:
    path = _meter_file(config)
    return json.loads(path.read_text()) if path.exists() else {}


def _save_meters(config: Config, meters: dict[str, Any]) -> None:
    write_json_atomically(_meter_file(config), meters)


def set_meter(config: Config, cohort: int, rate: str, burst: str | None, direction: str, controller: str | None = None) -> dict[str, Any]:
    """Meter cohort N (replacing any meter mlfo set on it before); returns what was installed.
    `controller` None: the network's (see network_controller)."""
    controller = network_controller(config, controller)
    _, topology = network_topology(Path(config.paths.state_dir))
    rate_kbps = parse_rate_kbps(rate)
    burst_kbits = parse_rate_kbps(burst, "burst") if burst else None
    specs = plan_meters(topology, cohort, rate_kbps, burst_kbits, direction)
    meters = load_meters(config)
    if str(cohort) in meters:
        clear_meters(config, cohort)
        meters = load_meters(config)
    driver = get_driver(controller, config)
    installed = []
    try:
        for spec in specs:
            installed.append({**driver.apply(spec), "direction": spec.direction, "rate_kbps": spec.rate_kbps, "burst_kbits": spec.burst_kbits})
    except MlfoError:
        for record in installed:
            driver.remove(record)
        raise
    meters[str(cohort)] = {"controller": controller, "rate_kbps": rate_kbps, "direction": direction, "installed": installed, "set": time.time()}
    _save_meters(config, meters)
    return {"port": cohort, **meters[str(cohort)]}


def clear_meters(config: Config, cohort: int | None = None) -> list[int]:
    """Remove what mlfo installed, for one cohort or all; returns the cohorts cleared."""
    meters = load_meters(config)
    cleared = []
    for key in list(meters):
        if cohort is not None and key != str(cohort):
            continue
        entry = meters[key]
        driver = get_driver(entry["controller"], config)
        for record in entry["installed"]:
            driver.remove(record)
        del meters[key]
        _save_meters(config, meters)
        cleared.append(int(key))
    if cohort is not None and not cleared:
        raise ValidationError(f"no meter of mlfo's on cohort {cohort}", field="port", hint="`mlfo meter show` lists them")
    return cleared


def show_meters(config: Config) -> dict[str, Any]:
    """Recorded meters, with what the switches report for the OVS ones."""
    meters = load_meters(config)
    out = {}
    for key, entry in meters.items():
        observed = []
        if entry["controller"] in ("ovs", "faucet"):  # Faucet's switches are Open vSwitch bridges too
            driver = OvsMeterDriver()
            observed = [{"switch": r["switch"], **driver.observe(r["switch"], r.get("meter_id") if entry["controller"] == "faucet" else None)}
                        for r in entry["installed"]]
        out[key] = {**entry, "observed": observed}
    return out


# --- verify by measurement ------------------------------------------------------------------------
def verify_meter(config: Config, cohort: int, rate: str, burst: str | None, controller: str | None, seconds: int = 3) -> dict[str, Any]:
    """Measure a cohort client's throughput to its FL server without and with the meter, and another cohort's with it."""
    controller = network_controller(config, controller)
    state, topology = network_topology(Path(config.paths.state_dir))
    clients = [h for h in topology.fl_clients() if h.campus == cohort]
    servers = {h.cohort: h for h in topology.fl_servers()}
    if not clients or cohort not in servers:
        raise ValidationError(f"cohort {cohort} has no clients or no FL server in {topology.name}", field="port")
    others = [h for h in topology.fl_clients() if h.campus != cohort and h.campus in servers]
    if not others:
        raise ValidationError(f"{topology.name} has no other cohort to compare with", field="port")
    other = others[0]
    servers_used = {servers[cohort].name: servers[cohort], servers[other.campus].name: servers[other.campus]}
    log_dir = Path(config.paths.state_dir) / "logs"
    iperf_servers = []
    try:
        for host in servers_used.values():
            # Outside the host's CPU limit: this measures the network, not the FL server's CPU share.
            proc = spawn_in_host(
                state, host.name, "iperf3-verify", ["iperf3", "-s", "-B", host.ip, "-p", str(IPERF_PORT)], log_dir, cpu_limited=False
            )
            iperf_servers.append(proc)
            wait_listening(state, [(host.name, IPERF_PORT, proc)], 20)
        if str(cohort) in load_meters(config):
            clear_meters(config, cohort)
        unmetered = measure_mbit(state, clients[0].name, servers[cohort].ip, seconds)
        installed = set_meter(config, cohort, rate, burst, "both", controller)
        metered = measure_mbit(state, clients[0].name, servers[cohort].ip, seconds)
        other_mbit = measure_mbit(state, other.name, servers[other.campus].ip, seconds)
    finally:
        stop_processes(iperf_servers)
    return {
        "port": cohort,
        "rate_mbit": installed["rate_kbps"] / 1000,
        "unmetered_mbit": round(unmetered, 2),
        "metered_mbit": round(metered, 2),
        "other_cohort_mbit": round(other_mbit, 2),
        "client": clients[0].name,
        "server": servers[cohort].name,
        "other_client": other.name,
        "controller": controller,
    }
