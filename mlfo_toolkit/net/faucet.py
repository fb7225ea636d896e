"""Faucet (faucet.nz) as a network's OpenFlow controller: its configuration made from the topology, its
process (recorded like every other one `topo up` starts), its reloads and its own Prometheus metrics.

Faucet is configured by one YAML file and re-reads it on SIGHUP. mlfo writes that file whole: every
switch by DPID, every port in one VLAN (the emulated network is one flat IPv4 network), and, when meters
are set, the meters and the port ACLs that send traffic through them. Removing a meter is writing the
file without it, so nothing of Faucet's own is ever touched. The meters themselves are pure data
(`meters.plan`); this module only says them in Faucet's words.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MissingDependencyError, MlfoError, UnreachableError
from mlfo_toolkit.net.state import NetworkState, ProcessRecord, spawn_recorded
from mlfo_toolkit.net.topology import Topology
from mlfo_toolkit.util.files import write_text_atomically
from mlfo_toolkit.util.processes import wait_for_port

VLAN = "mlfo"
VLAN_ID = 100
CONFIG_FILE = "faucet.yaml"
ALLOW_ALL = "mlfo-allow"  # the last ACL of every port that has mlfo's: a port ACL otherwise drops what it does not match
DOWN_METER_ID_OFFSET = 1000  # meter ids are Faucet-wide: up meters are the cohort, down meters 1000 + cohort


def meter_name(spec: dict[str, Any]) -> str:
    return f"mlfo-c{spec['key']}-{spec['direction']}"


def meter_id(spec: dict[str, Any]) -> int:
    return int(spec["key"]) + (DOWN_METER_ID_OFFSET if spec["direction"] == "down" else 0)


def faucet_config(topology: Topology, meters: list[dict[str, Any]]) -> dict[str, Any]:
    """Faucet's configuration for `topology` with mlfo's meters (MeterSpec.to_dict() records).

    A flow with an in_port meters everything IPv4 that enters that port; a flow with an IPv4 destination
    meters that destination's traffic on every port of the switch but the one it leaves by (where it
    would come back from).
    """
    acls: dict[str, list[dict[str, Any]]] = {}
    meter_defs: dict[str, Any] = {}
    port_acls: dict[tuple[str, int], list[str]] = {}
    for spec in meters:
        name = meter_name(spec)
        meter_defs[name] = {
            "meter_id": meter_id(spec),
            "entry": {"flags": ["KBPS", "BURST", "STATS"],
                      "bands": [{"type": "DROP", "rate": int(spec["rate_kbps"]), "burst_size": int(spec["burst_kbits"])}]},
        }
        rules: list[dict[str, Any]] = []
        ports = [port for port, _ in topology.links_of(spec["switch"])]
        for flow in spec["flows"]:
            match: dict[str, Any] = {"dl_type": 0x800}
            if flow.get("ipv4_dst"):
                match["ipv4_dst"] = flow["ipv4_dst"]
            rule = {"rule": {**match, "actions": {"meter": name, "allow": 1}}}
            if rule not in rules:
                rules.append(rule)
            attach = [flow["in_port"]] if flow.get("in_port") is not None else [p for p in ports if p != flow["output_port"]]
            for port in attach:
                names = port_acls.setdefault((spec["switch"], port), [])
                if name not in names:
                    names.append(name)
        acls[name] = rules
    dps: dict[str, Any] = {}
    for switch in topology.switches:
        interfaces: dict[int, Any] = {}
        for port, peer in topology.links_of(switch.name):
            # Every port has an ACL, metered or not: adding the first port ACL or removing the last changes
            # Faucet's pipeline, and Faucet then cold-starts the switch (traffic stops; measured: the last
            # meter stayed on the switch). With one always there, a meter change is a warm reconfiguration.
            acls_in = [*port_acls.get((switch.name, port), []), ALLOW_ALL]
            interfaces[port] = {"native_vlan": VLAN, "description": peer, "acls_in": acls_in}
        dps[switch.name] = {"dp_id": switch.dpid, "hardware": "Open vSwitch", "interfaces": interfaces}
    acls[ALLOW_ALL] = [{"rule": {"actions": {"allow": 1}}}]
    config: dict[str, Any] = {"vlans": {VLAN: {"vid": VLAN_ID, "description": f"mlfo {topology.name}"}}, "acls": acls, "dps": dps}
    if meter_defs:
        config["meters"] = meter_defs
    return config


# --- the process ------------------------------------------------------------------------------------
# Where `make faucet` puts Faucet when mlfo runs from its source checkout (an editable install).
CHECKOUT_FAUCET = Path(__file__).resolve().parents[2] / ".venv-faucet" / "bin" / "faucet"


def faucet_executable(config: Config) -> Path:
    """The faucet command, found as configured (else `make faucet`'s, beside the checkout); its folder must
    also hold osken-manager (Faucet execs it by name)."""
    command = config.faucet.command
    found = shutil.which(command) if os.sep not in command else (command if Path(command).is_file() else None)
    if found is None and command == "faucet" and CHECKOUT_FAUCET.is_file():
        found = str(CHECKOUT_FAUCET)
    if found is None:
        raise MissingDependencyError(
            f"Faucet is not installed (no '{command}')",
            hint="`make faucet` installs Faucet 1.10 in .venv-faucet (its own venv: its pins clash with mlfo's); "
            "then set faucet.command to .venv-faucet/bin/faucet or put that folder on PATH",
        )
    path = Path(found).absolute()
    if not (path.parent / "osken-manager").exists():
        raise MissingDependencyError(f"{path.parent} has faucet but no osken-manager", hint="reinstall Faucet in its own venv (`make faucet`)")
    return path


def faucet_record(state: NetworkState) -> dict[str, Any]:
    """What `topo up` recorded of the network's Faucet; MlfoError when the network has none."""
    controller = state.extra.get("controller") or {}
    if controller.get("kind") != "faucet":
        raise MlfoError("the running network is not controlled by Faucet", hint="bring it up with `mlfo topo up --controller faucet`")
    return dict(controller)


def start_faucet(config: Config, topology: Topology, state: NetworkState, state_dir: Path) -> str:
    """Write Faucet's configuration for the topology, start Faucet on loopback, record it; its OpenFlow HOST:PORT."""
    executable = faucet_executable(config)
    config_path = (state_dir / CONFIG_FILE).resolve()
    write_text_atomically(config_path, yaml.safe_dump(faucet_config(topology, []), sort_keys=False))
    log_dir = (state_dir / "logs").resolve()
    openflow, metrics = config.faucet.openflow_port, config.faucet.prometheus_port
    env = {
        "PATH": f"{executable.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAUCET_CONFIG": str(config_path),
        "FAUCET_LOG": str(log_dir / "faucet.log"),
        "FAUCET_EXCEPTION_LOG": str(log_dir / "faucet-exception.log"),
        "FAUCET_PROMETHEUS_ADDR": "127.0.0.1",
        "FAUCET_PROMETHEUS_PORT": str(metrics),
    }
    argv = [str(executable), "--ryu-ofp-listen-host=127.0.0.1", f"--ryu-ofp-tcp-listen-port={openflow}"]
    record = spawn_recorded(argv, log_dir / "faucet-stdout.log", "faucet", env=env)
    state.processes.append(record)
    state.extra["controller"] = {"kind": "faucet", "openflow": f"127.0.0.1:{openflow}", "metrics": f"127.0.0.1:{metrics}",
                                 "config": str(config_path), "pid": record.pid}
    wait_for_port("127.0.0.1", openflow, 60, _Watched(record))
    wait_for_port("127.0.0.1", metrics, 30, _Watched(record))
    return f"127.0.0.1:{openflow}"


class _Watched:
    """A recorded process in the shape wait_for_port checks for an early exit."""

    def __init__(self, record: ProcessRecord) -> None:
        self.record, self.name, self.log_path = record, record.name, Path(record.log or "")

    def running(self) -> bool:
        return self.record.alive()

    def returncode(self) -> int | None:
        return None

    def tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def faucet_metrics(record: dict[str, Any], timeout: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Faucet's own Prometheus metrics, by name: [(labels, value)]."""
    try:
        text = requests.get(f"http://{record['metrics']}/metrics", timeout=timeout).text
    except requests.RequestException as err:
        raise UnreachableError(f"Faucet's metrics at {record['metrics']} did not answer: {err}", hint="is Faucet running? see its log") from None
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def wait_switches_connected(record: dict[str, Any], topology: Topology, timeout: float = 60.0) -> None:
    """Until Faucet reports every switch of the topology up (its dp_status gauge)."""
    wanted = {s.name for s in topology.switches}
    deadline = time.monotonic() + timeout
    up: set[str] = set()
    while time.monotonic() < deadline:
        samples = faucet_metrics(record).get("dp_status", [])
        up = {labels.get("dp_name", "") for labels, value in samples if value == 1}
        if wanted <= up:
            return
        time.sleep(0.5)
    raise UnreachableError(f"switches not connected to Faucet after {timeout:.0f} s: {', '.join(sorted(wanted - up))}",
                           hint=f"see Faucet's log next to {record['config']}")


def reload_faucet(record: dict[str, Any], topology: Topology, meters: list[dict[str, Any]]) -> None:
    """Write Faucet's configuration with these meters and make Faucet re-read it (SIGHUP to its recorded PID).

    Where Faucet's metrics answer (not from inside a host's namespace: they are on the machine's loopback),
    wait for Faucet to count the reload and fail when it refused the file."""
    path = Path(record["config"])
    before = _reload_count(record)
    write_text_atomically(path, yaml.safe_dump(faucet_config(topology, meters), sort_keys=False))
    try:
        os.kill(int(record["pid"]), signal.SIGHUP)
    except ProcessLookupError:
        raise UnreachableError(f"Faucet (PID {record['pid']}) is not running", hint="`mlfo topo down` and up again") from None
    if before is None:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_reload_count(record) or 0) <= before:
        time.sleep(0.1)
    errors = faucet_metrics(record).get("faucet_config_load_error", [])
    if any(value for _, value in errors):
        raise MlfoError(f"Faucet refused its new configuration ({path})", hint="see faucet.log in the network's logs folder")


def _reload_count(record: dict[str, Any]) -> float | None:
    try:
        samples = faucet_metrics(record, timeout=2).get("faucet_config_reload_requests_total", [])
    except UnreachableError:
        return None
    return sum(value for _, value in samples)
