"""mlfo's public Python API: everything the CLI does, callable with no Click involved.

Every `mlfo` command calls one function here and formats what it returns, as text or `--json`
(`result.to_dict()`). Functions take an optional `Config` (default: `load_config()`, i.e. defaults <
./mlfo.yaml < MLFO_* environment) and raise `mlfo_toolkit.errors.MlfoError` subclasses, whose
`exit_code` is what the CLI exits with.

    from mlfo_toolkit import api
    result = api.demo(clients=3, rounds=3)
    print(result.cohorts[0].accuracy[-1])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfo_toolkit.config import Config, load_config
from mlfo_toolkit.errors import DeploymentFailed

Progress = Callable[[str, dict[str, Any]], None]
"""Called with (event, data) on long work: "setup", "state", "round", "lost" (deployments), "topo" (network)."""

__all__ = [
    "CohortResult",
    "IntentCheck",
    "MeterResult",
    "MonitorResult",
    "NetworkResult",
    "Progress",
    "ReportResult",
    "RunResult",
    "SentCohorts",
    "demo",
    "image_build",
    "init",
    "monitor_config",
    "serve_agent",
    "serve_exporter",
    "serve_mlfo",
    "topo_exec",
    "topo_ping",
    "topo_show",
    "load_config",
    "meter_clear",
    "meter_set",
    "meter_show",
    "meter_verify",
    "monitor_down",
    "monitor_up",
    "plan",
    "plan_experiment",
    "run_experiment",
    "ExperimentResult",
    "report",
    "send_cohorts",
    "topo_down",
    "topo_status",
    "topo_up",
    "validate_intent",
    "wait",
]


def _config(config: Config | None) -> Config:
    return config if config is not None else load_config(None)


# --- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortResult:
    """One cohort's FL run as the MLFO followed it."""

    name: str
    deployment_id: str
    state: str
    reason: str | None
    strategy: str | None
    accuracy: list[float]
    loss: list[float]
    orchestration_seconds: float | None
    details: dict[str, Any] = field(repr=False)

    @property
    def final_accuracy(self) -> float | None:
        return self.accuracy[-1] if self.accuracy else None

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> CohortResult:
        return cls(
            name=summary["name"], deployment_id=summary["deployment"], state=summary["state"], reason=summary.get("reason"),
            strategy=summary.get("strategy"), accuracy=list(summary["accuracy"]), loss=list(summary["loss"]),
            orchestration_seconds=summary.get("orchestration_seconds"), details=summary,
        )


@dataclass(frozen=True)
class RunResult:
    """A followed set of deployments (a demo or `send --wait`) and the run folder written for it."""

    run_dir: Path
    cohorts: list[CohortResult]
    wall_seconds: float | None
    summary: dict[str, Any] = field(repr=False)

    @property
    def failed(self) -> list[CohortResult]:
        return [c for c in self.cohorts if c.state == "failed"]

    def check(self) -> RunResult:
        """Raise DeploymentFailed (exit code 7) naming every failed cohort; else return self."""
        if self.failed:
            raise DeploymentFailed("; ".join(f"cohort {c.name} failed: {c.reason}" for c in self.failed),
                                   hint="GET /deployments/ID on the MLFO shows per-client status")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.summary


@dataclass(frozen=True)
class SentCohorts:
    """Cohorts the campus MLFO accepted: pass to `wait()` to follow them."""

    mlfo: str
    cohort_file: Path
    sent: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"mlfo": self.mlfo, "deployments": [{"name": c.name, "id": c.deployment_id, "ipstart": c.ipstart} for c in self.sent]}


@dataclass(frozen=True)
class IntentCheck:
    """A valid intent and the ML pipeline each of its targets maps to."""

    intent_id: str
    intent: dict[str, Any]
    pipelines: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"intent": self.intent, "pipelines": self.pipelines}


@dataclass(frozen=True)
class NetworkResult:
    """What a network command did or found; `data` is its JSON form."""

    topology: str
    phase: str
    data: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return self.data


@dataclass(frozen=True)
class MeterResult:
    """Meters set, listed, cleared or measured; `data` is the JSON form."""

    cohorts: list[int]
    data: Any = field(repr=False)

    def to_dict(self) -> Any:
        return self.data


@dataclass(frozen=True)
class MonitorResult:
    """Prometheus (and Grafana) started or stopped."""

    prometheus: str | None
    processes: list[str]
    data: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return self.data


@dataclass(frozen=True)
class ReportResult:
    """The plots, manifest and page written for a run folder."""

    plots: list[Path]
    manifest: Path
    html: Path | None
    data: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return self.data


def _run_result(summary: dict[str, Any]) -> RunResult:
    return RunResult(Path(summary["run_dir"]), [CohortResult.from_summary(c) for c in summary["cohorts"]],
                     summary.get("wall_seconds"), summary)


# --- intents and deployments --------------------------------------------------------------------
def demo(config: Config | None = None, *, cohorts: int | None = None, clients: int | None = None, rounds: int | None = None,
         cohort_file: Path | None = None, timeout: float = 900.0, progress: Progress | None = None) -> RunResult:
    """The whole chain on loopback (MLFOs, agents, Flower), no root; `.check()` raises if a cohort failed."""
    from mlfo_toolkit.demo import run_demo

    return _run_result(run_demo(_config(config), cohort_path=cohort_file, cohorts=cohorts, clients=clients, rounds=rounds,
                                timeout=timeout, progress=progress))


def validate_intent(path: Path, config: Config | None = None) -> IntentCheck:
    """Parse and check an intent file; ValidationError names the field and line of the first problem."""
    from mlfo_toolkit.orchestrator.intents import Catalog, load_intent_file

    cfg = _config(config)
    parsed = load_intent_file(path)
    catalog = Catalog.load(cfg.mlfo.catalog)
    pipelines = [catalog.resolve(parsed, i).to_dict() for i in range(len(parsed.targets))]
    return IntentCheck(parsed.intentID, parsed.model_dump(), pipelines)


def plan(cohort_file: Path | None = None, config: Config | None = None, *, any_intent_path: bool = False) -> list[Any]:
    """Which FL server and client agents each cohort gets (`CohortPlan`s), contacting nothing.

    Without a file: the shipped intents/cohorts.yaml (what `mlfo demo` sends)."""
    from mlfo_toolkit.orchestrator.cohorts import load_cohort_file, plan_cohorts
    from mlfo_toolkit.resources import resource_path

    cfg = _config(config)
    return plan_cohorts(load_cohort_file(cohort_file or resource_path("intents/cohorts.yaml"), cfg, any_intent_path=any_intent_path), cfg)


def send_cohorts(cohort_file: Path, config: Config | None = None, *, mlfo: str | None = None,
                 any_intent_path: bool = False) -> SentCohorts:
    """POST every cohort of the file to the campus MLFO (the prototype's multipart form).

    Checks the whole file, and plans it against the IP plan, before sending anything."""
    from mlfo_toolkit.orchestrator.cohorts import load_cohort_file, plan_cohorts
    from mlfo_toolkit.orchestrator.sending import send_cohorts as send

    cfg = _config(config)
    parsed = load_cohort_file(cohort_file, cfg, any_intent_path=any_intent_path)
    plan_cohorts(parsed, cfg)  # the same checks as `plan`: what plan accepts, send accepts
    address = mlfo or parsed.mlfo or f"{cfg.mlfo.host}:{cfg.mlfo.port}"
    return SentCohorts(address, cohort_file, send(parsed, cfg, address))


def wait(sent: SentCohorts, config: Config | None = None, *, timeout: float = 3600.0, progress: Progress | None = None) -> RunResult:
    """Follow sent cohorts until their FL runs end; write a run folder (run.json, plots)."""
    from mlfo_toolkit.monitoring.runs import cohort_summary, manifest, new_run_dir, write_run
    from mlfo_toolkit.orchestrator.sending import wait_for_deployments

    cfg = _config(config)
    wait_for_deployments(sent.sent, cfg, sent.mlfo, timeout=timeout, progress=progress)
    run_dir = new_run_dir(Path(cfg.paths.runs_dir), "send")
    summary: dict[str, Any] = {
        "cohorts": [cohort_summary(c) for c in sent.sent],
        "orchestration_seconds": [c.record.get("orchestration_seconds") for c in sent.sent],
        "run_dir": str(run_dir),
        "manifest": manifest({"cohort_file": sent.cohort_file}, {"fl.seed": cfg.fl.seed}),
    }
    write_run(run_dir, summary)
    return _run_result(summary)


def _campus(config: Config | None, mlfo: str | None) -> Any:
    from mlfo_toolkit.orchestrator.clients import MlfoClient

    cfg = _config(config)
    return MlfoClient(mlfo or f"{cfg.mlfo.host}:{cfg.mlfo.port}", token=cfg.api.token, timeout=cfg.api.timeout_seconds)


def restart_client(deployment: str, part: int, config: Config | None = None, *, mlfo: str | None = None) -> dict[str, Any]:
    """Start a lost client's SuperNode again (POST /deployments/ID/clients/PART/restart); it rejoins the FL run."""
    client = _campus(config, mlfo)
    try:
        return dict(client.restart_client(deployment, part))
    finally:
        client.close()


def stop_deployment(deployment: str, config: Config | None = None, *, mlfo: str | None = None) -> dict[str, Any]:
    """Stop a running deployment (POST /deployments/ID/stop): its clients and server stop."""
    client = _campus(config, mlfo)
    try:
        return dict(client.stop_deployment(deployment))
    finally:
        client.close()


# --- the emulated network (root) ------------------------------------------------------------------
def _topology(topology: Path | str | None, cohorts: int | None, params: dict[str, int] | None) -> Any:
    from mlfo_toolkit.net.topology import load_topology

    parameters = dict(params or {})
    if cohorts:
        parameters["cohorts"] = cohorts
    return load_topology(Path(topology) if topology else None, parameters or None)


def topo_up(cohorts: int | None = None, config: Config | None = None, *, topology: Path | str | None = None,
            params: dict[str, int] | None = None, backend: str = "mininet", controller: str | None = None, detach: bool = True,
            progress: Progress | None = None, on_ready: Callable[[Any], None] | None = None) -> NetworkResult:
    """Build the network and start the MLFOs and agents in it (root).

    detach=True returns once it is up and leaves it running for `topo_down()`; detach=False serves
    it in this process until SIGINT/SIGTERM, then tears it down.
    """
    from mlfo_toolkit.net.network import detach_network, serve_network, state_summary

    cfg = _config(config)
    built = _topology(topology, cohorts, params)

    def say(message: str) -> None:
        if progress:
            progress("topo", {"message": message})

    if detach:
        state = detach_network(cfg, topology=topology, cohorts=cohorts, params=params or {}, backend=backend,
                               controller=controller, progress=say)
        return NetworkResult(state.topology, state.phase, state_summary(state))
    removed = serve_network(cfg, built, backend=backend, controller=controller, progress=say, on_ready=on_ready)
    return NetworkResult(built.name, "down", {"topology": built.name, "removed": removed})


def image_build(*, force: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build (or find) the Docker image of Containernet hosts, offline (root); {"image", "id", "built"}."""
    from mlfo_toolkit.net.image import build_image

    return build_image(force=force, progress=progress or (lambda message: None))


def topo_down(config: Config | None = None) -> NetworkResult:
    """Remove exactly what `topo_up` recorded, also after it was killed."""
    from mlfo_toolkit.net.network import network_down

    data = network_down(_config(config))
    return NetworkResult(str(data.get("topology", "")), "down", data)


def topo_status(config: Config | None = None) -> NetworkResult:
    """The running network: hosts, processes, published ports, CPU limits, warnings (phase "none": no network)."""
    from mlfo_toolkit.net.network import network_status
    from mlfo_toolkit.net.state import state_path

    cfg = _config(config)
    if not state_path(Path(cfg.paths.state_dir)).exists():
        return NetworkResult("", "none", {"topology": None, "phase": "none"})
    data = network_status(cfg)
    return NetworkResult(data["topology"], data["phase"], data)


def topo_show(topology: Path | str | None = None, *, cohorts: int | None = None, params: dict[str, int] | None = None) -> Any:
    """The expanded `Topology` (hosts, switches, links, DPIDs) of a file or a shipped name; no root needed."""
    return _topology(topology, cohorts, params)


def topo_exec(node: str, argv: list[str], config: Config | None = None, *, capture: bool = False) -> dict[str, Any]:
    """Run argv inside NODE (no shell); {"node", "exit_code"[, "stdout", "stderr"]}."""
    from mlfo_toolkit.net.network import host_exec

    return host_exec(_config(config), node, argv, capture=capture)


def topo_ping(config: Config | None = None) -> dict[str, Any]:
    """Every host pings every other: {"pairs", "loss_percent", "seconds", "failed"}."""
    from mlfo_toolkit.net.network import ping_mesh

    return ping_mesh(_config(config))


def init(config: Config | None = None, *, cpus: float | None = None, clients: bool = False, bg_rate: str | None = "20M") -> dict[str, Any]:
    """The prototype's init.sh: CPU limits, reachability of the FL servers, iperf3 background traffic."""
    from mlfo_toolkit.net.network import init_network

    return init_network(_config(config), cpus=cpus, clients=clients, bg_rate=bg_rate)


# --- meters -----------------------------------------------------------------------------------
def meter_set(cohort: int, rate: str = "100mbit", config: Config | None = None, *, burst: str | None = None,
              direction: str = "both", controller: str = "ovs") -> MeterResult:
    """Meter cohort N (the prototype's IN_PORT N) on the running network; replaces an earlier meter."""
    from mlfo_toolkit.meters.core import set_meter

    return MeterResult([cohort], set_meter(_config(config), cohort, rate, burst, direction, controller))


def meter_show(config: Config | None = None) -> MeterResult:
    from mlfo_toolkit.meters.core import show_meters

    data = show_meters(_config(config))
    return MeterResult(sorted(int(c) for c in data), data)


def meter_clear(config: Config | None = None, cohort: int | None = None) -> MeterResult:
    """Remove the meters and flows mlfo added (of one cohort, or all)."""
    from mlfo_toolkit.meters.core import clear_meters

    cleared = clear_meters(_config(config), cohort)
    return MeterResult(cleared, {"cleared": cleared})


def meter_verify(cohort: int, rate: str = "10mbit", config: Config | None = None, *, burst: str | None = None,
                 controller: str = "ovs", seconds: int = 3) -> MeterResult:
    """iperf3 from a client of cohort N to its server, unmetered then metered, and another cohort meanwhile."""
    from mlfo_toolkit.meters.core import verify_meter

    return MeterResult([cohort], verify_meter(_config(config), cohort, rate, burst, controller, seconds))


# --- services (foreground, until SIGINT/SIGTERM) -------------------------------------------------
def serve_mlfo(config: Config, role: str) -> None:
    """Serve a campus or cloud MLFO on mlfo.host:mlfo.port (campus) or mlfo.momo_port (cloud)."""
    from mlfo_toolkit.http.service import run_mlfo

    run_mlfo(config, role)


def serve_agent(config: Config) -> None:
    """Serve a node agent on agent.host:agent.port."""
    from mlfo_toolkit.http.service import run_agent

    run_agent(config)


def serve_exporter(config: Config, app: str, match_port: int, host: str, port: int) -> None:
    """Serve the socket exporter of one app's TCP flows."""
    from mlfo_toolkit.http.service import run_exporter

    run_exporter(config, app, match_port, host, port)


# --- monitoring and reports ---------------------------------------------------------------------
def monitor_up(config: Config | None = None) -> MonitorResult:
    """Start Prometheus (and node_exporter; Grafana when Docker and its image are here)."""
    from mlfo_toolkit.monitoring.prometheus import monitor_up as up

    data = up(_config(config))
    return MonitorResult(data.get("prometheus"), list(data.get("processes", [])), data)


def monitor_config(config: Config | None = None, *, topology: Path | None = None, cohorts: int | None = None,
                   loopback: bool = False, output: Path | None = None) -> dict[str, Any]:
    """prometheus.yml for a topology, the running network, or loopback (`mlfo demo`); checked when written."""
    from mlfo_toolkit.monitoring.prometheus import check_config, render_config
    from mlfo_toolkit.net.state import running_topology

    cfg = _config(config)
    built = None
    if topology or cohorts:
        built = _topology(topology, cohorts, None)
    elif not loopback and (running := running_topology(Path(cfg.paths.state_dir))):
        built = running[1]
    text = render_config(cfg, built)
    if output:
        output.write_text(text)
        check_config(output)
    return {"config": text, "targets": f"topology {built.name}" if built else "loopback", "written": str(output) if output else None}


def monitor_down(config: Config | None = None) -> MonitorResult:
    from mlfo_toolkit.monitoring.prometheus import monitor_down as down

    data = down(_config(config))
    return MonitorResult(None, list(data.get("stopped", [])), data)


def report(run_dir: Path, config: Config | None = None, *, fmt: str = "png", prometheus: str | None = None,
           topology: Path | None = None) -> ReportResult:
    """Plots (accuracy, loss, orchestration, traffic, round anatomy) and a manifest under RUN_DIR/report/."""
    from mlfo_toolkit.experiments.compare import build_experiment_report, is_experiment
    from mlfo_toolkit.monitoring.report import build_report

    cfg = _config(config)
    if is_experiment(Path(run_dir)):
        data = build_experiment_report(Path(run_dir))
        return ReportResult([Path(p) for p in data["plots"]], Path(data["report"]) / "table.json", Path(data["html"]), data)
    url = prometheus or f"http://127.0.0.1:{cfg.monitor.prometheus_port}"
    data = build_report(Path(run_dir), fmt, url, {"topology": topology} if topology else None)
    return ReportResult([Path(p) for p in data["plots"]], Path(data["manifest"]),
                        Path(data["html"]) if data.get("html") else None, data)


# --- experiments --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExperimentResult:
    """An experiment's runs (finished now or earlier) and where they are."""

    name: str
    folder: Path
    runs: list[dict[str, Any]]
    data: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return self.data


def plan_experiment(path: Path, config: Config | None = None) -> dict[str, Any]:
    """Check an experiment file and list its runs, events and expected duration; starts nothing."""
    from mlfo_toolkit.experiments.runner import plan_summary
    from mlfo_toolkit.experiments.spec import load_experiment

    return plan_summary(load_experiment(Path(path)), _config(config))


def run_experiment(path: Path, config: Config | None = None, *, out_dir: Path | None = None,
                   progress: Progress | None = None) -> ExperimentResult:
    """Run every run of an experiment file not finished yet (a rerun resumes); write runs and index.json.

    The folder defaults to paths.runs_dir/experiments/NAME; `report(folder)` compares the runs."""
    from mlfo_toolkit.experiments.runner import run_experiment as run
    from mlfo_toolkit.experiments.spec import load_experiment

    cfg = _config(config)
    experiment = load_experiment(Path(path))
    folder = out_dir or Path(cfg.paths.runs_dir) / "experiments" / experiment.name
    index = run(experiment, cfg, folder, progress=progress or (lambda event, data: None))
    return ExperimentResult(experiment.name, folder, index["runs"], {**index, "folder": str(folder)})

