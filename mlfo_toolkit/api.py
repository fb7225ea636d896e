"""mlfo's public Python API: everything the CLI does, callable with no Click involved.

Every `mlfo` command calls one function here and formats what it returns, as text or `--json`
(`result.to_dict()`). Every function returns a result of `mlfo_toolkit.results` (a frozen dataclass)
and takes an optional `Config` (default: `load_config()`, i.e. defaults < ./mlfo.yaml < MLFO_*
environment); errors are `mlfo_toolkit.errors.MlfoError` subclasses, whose `exit_code` is what the CLI
exits with.

    from mlfo_toolkit import api
    result = api.demo(clients=3, rounds=3)
    print(result.cohorts[0].accuracy[-1])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlfo_toolkit.backends.base import AttachedBackend
from mlfo_toolkit.backends.loopback import LoopbackBackend
from mlfo_toolkit.config import Config, load_config
from mlfo_toolkit.errors import AuthError, ValidationError
from mlfo_toolkit.experiments.runner import execute, plan_summary
from mlfo_toolkit.experiments.spec import load_experiment
from mlfo_toolkit.fl import fetch
from mlfo_toolkit.fl.data import load_dataset
from mlfo_toolkit.fl.partitions import PartitionSpec, cached_split, label_counts
from mlfo_toolkit.http.agent_service import run_agent, run_exporter
from mlfo_toolkit.http.schema import openapi_schema
from mlfo_toolkit.http.service import run_mlfo
from mlfo_toolkit.meters.controllers import resolve_controller
from mlfo_toolkit.meters.operations import clear_meters, set_meter, show_meters, verify_meter
from mlfo_toolkit.monitoring import prometheus as monitoring
from mlfo_toolkit.net.changes import init_network
from mlfo_toolkit.net.hosts import host_exec, ping_mesh
from mlfo_toolkit.net.image import build_image
from mlfo_toolkit.net.network import detach_network, network_down, network_status, serve_network, state_summary
from mlfo_toolkit.net.state import NetworkState, load_state, running_topology, state_path
from mlfo_toolkit.net.topology import Topology, load_topology
from mlfo_toolkit.net.traces import start_trace, stop_traces
from mlfo_toolkit.orchestrator.api_clients import campus_client
from mlfo_toolkit.orchestrator.cohorts import load_cohort_file, plan_cohorts, shape_cohorts
from mlfo_toolkit.orchestrator.intents import Catalog, config_with_app, load_intent_file, understood
from mlfo_toolkit.orchestrator.records import Deployment
from mlfo_toolkit.orchestrator.sending import follow_deployments, post_cohorts, raise_for_failures, wait_settled
from mlfo_toolkit.reports.compare import build_experiment_report, is_experiment, load_index, load_runs
from mlfo_toolkit.reports.report import build_report, load_run, plot_label_distribution
from mlfo_toolkit.reports.runs import cohort_summary, manifest, new_run_dir, write_run
from mlfo_toolkit.reports.style import parse_formats
from mlfo_toolkit.reports.trackers import to_mlflow, to_tensorboard
from mlfo_toolkit.results import (
    ApiSchema,
    ClientRestarted,
    CohortResult,
    DataResult,
    DeploymentStatus,
    DeploymentStopped,
    ExecResult,
    ExperimentPlan,
    ExperimentResult,
    ImageResult,
    InitResult,
    IntentCheck,
    MeterResult,
    MonitorConfig,
    MonitorResult,
    NetworkResult,
    PingResult,
    PlanResult,
    ReportResult,
    Result,
    RunResult,
    SentCohorts,
    TraceResult,
    fields_of,
)
from mlfo_toolkit.util.files import write_text
from mlfo_toolkit.util.progress import Progress, quiet
from mlfo_toolkit.util.resources import resource_path

__all__ = [
    # results
    "ApiSchema", "ClientRestarted", "CohortResult", "DataResult", "DeploymentStatus", "DeploymentStopped", "ExecResult", "ExperimentPlan", "ExperimentResult",
    "ImageResult", "InitResult", "IntentCheck", "MeterResult", "MonitorConfig", "MonitorResult", "NetworkResult", "PingResult",
    "PlanResult", "Progress", "ReportResult", "Result", "RunResult", "SentCohorts", "TraceResult",
    # functions
    "api_schema", "data_get", "data_import", "data_list", "data_show", "demo", "deployment_status", "image_build", "init", "load_config", "meter_clear", "meter_set", "meter_show", "meter_verify",
    "monitor_config", "monitor_down", "monitor_up", "plan", "plan_experiment", "report", "restart_client", "run_experiment",
    "send_cohorts", "serve_agent", "serve_exporter", "serve_mlfo", "stop_deployment", "topo_down", "topo_exec", "topo_ping",
    "topo_show", "topo_status", "topo_trace", "topo_trace_stop", "topo_up", "validate_intent", "wait",
]


def _config(config: Config | None) -> Config:
    return config if config is not None else load_config(None)


def _run_summary(sent: list[Any], run_dir: Path, inputs: dict[str, Path | None], config: Config,
                 started: float | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "cohorts": [cohort_summary(c, config) for c in sent],
        "orchestration_seconds": [c.record.orchestration_seconds if c.record else None for c in sent],
        "run_dir": str(run_dir),
        "manifest": manifest(inputs, {"fl.seed": config.fl.seed}),
    }
    if started is not None:
        summary["wall_seconds"] = round(time.monotonic() - started, 2)
    write_run(run_dir, summary)
    return summary


# --- intents and deployments --------------------------------------------------------------------
def demo(config: Config | None = None, *, cohorts: int | None = None, clients: int | None = None, rounds: int | None = None,
         cohort_file: Path | None = None, timeout: float = 900.0, progress: Progress | None = None,
         app: Path | None = None, aggregation: str | None = None, edges: int | None = None,
         local_rounds: int | None = None) -> RunResult:
    """The whole chain on loopback (MLFOs, agents, Flower), no root; raises DeploymentFailed if a cohort failed
    (the run folder is written first). `app`: a Flower app's folder, trained instead of mlfo's own model.
    `aggregation="hierarchical"`: each cohort's clients train under `edges` edge aggregators, `local_rounds`
    rounds per global round."""
    cfg = _config(config)
    progress = progress or quiet
    cohort_path = cohort_file or resource_path("intents/cohorts.yaml")
    shaped = shape_cohorts(load_cohort_file(cohort_path, cfg), cohorts, clients, rounds, aggregation=aggregation, edges=edges,
                           local_rounds=local_rounds)
    run_dir = new_run_dir(Path(cfg.paths.runs_dir), "demo")
    if app is not None:
        cfg = config_with_app(cfg, app, run_dir)
    started = time.monotonic()
    servers = sum(1 for c in shaped.cohorts if not c.sameserver)
    clients_total = sum(c.size for c in shaped.cohorts)
    progress("setup", {"servers": servers, "clients": clients_total, "run_dir": str(run_dir)})
    with LoopbackBackend(cfg, run_dir, servers=servers, clients=clients_total) as backend:
        sent = post_cohorts(shaped, backend.config, backend.campus)
        follow_deployments(sent, backend.config, backend.campus, timeout=timeout, progress=progress, poll_seconds=0.5)
        wait_settled(sent, backend.config, backend.campus, timeout=30.0)
        # With `mlfo monitor up` running, stay up until Prometheus scraped once more: the final round reaches it.
        monitoring.wait_for_final_scrape(cfg, time.time())
    summary = _run_summary(sent, run_dir, {"cohort_file": cohort_path, **({"app": app / "pyproject.toml"} if app else {})}, cfg,
                           started)
    raise_for_failures(sent)
    return RunResult.from_summary(summary)


def validate_intent(path: Path, config: Config | None = None) -> IntentCheck:
    """Parse and check an intent file; ValidationError names the field and line of the first problem."""
    cfg = _config(config)
    parsed = load_intent_file(path)
    catalog = Catalog.load(cfg.mlfo.catalog)
    pipelines = [catalog.resolve(parsed, i).to_dict() for i in range(len(parsed.targets))]
    intent = parsed.model_dump(exclude_none=True)
    read = [understood(t) for t in parsed.targets]
    return IntentCheck(parsed.intentID, intent, pipelines, read, data={"intent": intent, "pipelines": pipelines, "understood": read})


def plan(cohort_file: Path | None = None, config: Config | None = None, *, any_intent_path: bool = False) -> PlanResult:
    """Which FL server and client agents each cohort gets, contacting nothing.

    Without a file: the shipped intents/cohorts.yaml (what `mlfo demo` sends)."""
    cfg = _planned_against(_config(config))
    path = cohort_file or resource_path("intents/cohorts.yaml")
    return PlanResult.of(plan_cohorts(load_cohort_file(path, cfg, any_intent_path=any_intent_path), cfg))


def _planned_against(config: Config) -> Config:
    """The config cohorts are planned with: its own IP plan, else the running network's (whose clients
    may be more than the default plan's 50: `topo up 10` has 100)."""
    if config.ip_plan.clients:
        return config
    running = running_topology(Path(config.paths.state_dir))
    if running is None:
        return config
    _, topology = running
    return config.with_overrides({"ip_plan.clients": [h.ip for h in topology.fl_clients()],
                                  "ip_plan.servers": [h.ip for h in topology.fl_servers()]})


def _without_token(config: Config) -> Config:
    return config.model_copy(update={"api": config.api.model_copy(update={"token": None})})


def send_cohorts(cohort_file: Path, config: Config | None = None, *, mlfo: str | None = None,
                 any_intent_path: bool = False, trust_file_address: bool = False) -> SentCohorts:
    """POST every cohort of the file to the campus MLFO (the prototype's multipart form).

    Checks the whole file, and plans it against the IP plan, before sending anything. The MLFO is `mlfo`,
    else the file's `mlfo:` (`mlfoadd:`), else the config's. api.token goes only to an MLFO the user named
    (`mlfo`, or the config's): a cohort file from someone else cannot collect it, unless
    `trust_file_address` says to trust the address the file names."""
    cfg = _config(config)
    parsed = load_cohort_file(cohort_file, cfg, any_intent_path=any_intent_path)
    plan_cohorts(parsed, _planned_against(cfg))  # the same checks as `plan`: what plan accepts, send accepts
    own = f"{cfg.mlfo.host}:{cfg.mlfo.port}"
    address = mlfo or parsed.mlfo or own
    trusted = bool(mlfo) or address == own or trust_file_address
    with AttachedBackend(cfg if trusted else _without_token(cfg), address) as backend:
        try:
            sent = post_cohorts(parsed, backend.config, backend.campus)
        except AuthError as err:
            if trusted:
                raise
            raise AuthError(err.message, status=err.status, body=err.body,
                            hint=f"{cohort_file} names this MLFO, so api.token was not sent to it: pass --mlfo {address} "
                            "(or --trust-file-mlfo) to send it") from None
        return SentCohorts.of(backend.campus, cohort_file, sent, trusted)


def wait(sent: SentCohorts, config: Config | None = None, *, timeout: float = 3600.0, progress: Progress | None = None) -> RunResult:
    """Follow sent cohorts until their FL runs end; write a run folder (run.json, plots)."""
    cfg = _config(config)
    cfg = cfg if sent.trusted else _without_token(cfg)
    follow_deployments(sent.sent, cfg, sent.mlfo, timeout=timeout, progress=progress or quiet)
    run_dir = new_run_dir(Path(cfg.paths.runs_dir), "send")
    return RunResult.from_summary(_run_summary(sent.sent, run_dir, {"cohort_file": sent.cohort_file}, cfg))


def restart_client(deployment: str, part: int, config: Config | None = None, *, mlfo: str | None = None) -> ClientRestarted:
    """Start a lost client's SuperNode again (POST /deployments/ID/clients/PART/restart); it rejoins the FL run."""
    with campus_client(_config(config), mlfo) as client:
        answer = dict(client.restart_client(deployment, part))
    return ClientRestarted(**fields_of(answer, ClientRestarted), data=answer)


def deployment_status(deployment: str, config: Config | None = None, *, mlfo: str | None = None) -> DeploymentStatus:
    """A deployment as the campus MLFO holds it (GET /deployments/ID): its rounds, its target, how it stands
    against it, and each decision of the closed loop."""
    with campus_client(_config(config), mlfo) as client:
        answer = dict(client.deployment(deployment))
    return DeploymentStatus.of(Deployment.model_validate(answer), answer)


def stop_deployment(deployment: str, config: Config | None = None, *, mlfo: str | None = None) -> DeploymentStopped:
    """Stop a running deployment (POST /deployments/ID/stop): its clients and server stop."""
    with campus_client(_config(config), mlfo) as client:
        answer = dict(client.stop_deployment(deployment))
    return DeploymentStopped(**fields_of(answer, DeploymentStopped), data=answer)


# --- the emulated network (root) ------------------------------------------------------------------
def _topology(topology: Path | str | None, cohorts: int | None, params: dict[str, int] | None) -> Topology:
    parameters = dict(params or {})
    if cohorts:
        parameters["cohorts"] = cohorts
    return load_topology(Path(topology) if topology else None, parameters or None)


def topo_up(cohorts: int | None = None, config: Config | None = None, *, topology: Path | str | None = None,
            params: dict[str, int] | None = None, backend: str = "mininet", controller: str | None = None, detach: bool = True,
            progress: Progress | None = None, on_ready: Callable[[NetworkState], None] | None = None) -> NetworkResult:
    """Build the network and start the MLFOs and agents in it (root).

    detach=True returns once it is up and leaves it running for `topo_down()`; detach=False serves
    it in this process until SIGINT/SIGTERM, then tears it down.
    """
    cfg = _config(config)
    progress = progress or quiet
    built = _topology(topology, cohorts, params)
    if detach:
        state = detach_network(cfg, topology=topology, cohorts=cohorts, params=params or {}, backend=backend,
                               controller=controller, progress=progress)
        return NetworkResult(state.topology, state.phase, data=state_summary(state))
    # Faucet is started by the network itself (it is configured from the topology); ONOS is reached over REST.
    address = controller if controller == "faucet" else resolve_controller(cfg, controller, progress)
    kind = controller if controller in ("faucet", "onos") else None
    removed = serve_network(cfg, built, backend=backend, controller=address, controller_kind=kind, progress=progress, on_ready=on_ready)
    return NetworkResult(built.name, "down", data={"topology": built.name, "removed": removed})


def image_build(*, force: bool = False, progress: Progress | None = None) -> ImageResult:
    """Build (or find) the Docker image of Containernet hosts, offline (root)."""
    data = build_image(force=force, progress=progress or quiet)
    return ImageResult(**fields_of(data, ImageResult), data=data)


def topo_down(config: Config | None = None) -> NetworkResult:
    """Remove exactly what `topo_up` recorded, also after it was killed."""
    data = network_down(_config(config))
    return NetworkResult(str(data.get("topology", "")), "down", data=data)


def topo_status(config: Config | None = None) -> NetworkResult:
    """The running network: hosts, processes, published ports, CPU limits, warnings (phase "none": no network)."""
    cfg = _config(config)
    if not state_path(Path(cfg.paths.state_dir)).exists():
        return NetworkResult("", "none", data={"topology": None, "phase": "none"})
    data = network_status(cfg)
    return NetworkResult(data["topology"], data["phase"], data=data)


def topo_show(topology: Path | str | None = None, *, cohorts: int | None = None, params: dict[str, int] | None = None) -> Topology:
    """The expanded `Topology` (hosts, switches, links, DPIDs) of a file or a shipped name; no root needed."""
    return _topology(topology, cohorts, params)


def topo_exec(node: str, argv: list[str], config: Config | None = None, *, capture: bool = False) -> ExecResult:
    """Run argv inside NODE (no shell), with this terminal or with its output captured."""
    data = host_exec(load_state(Path(_config(config).paths.state_dir)), node, argv, capture=capture)
    return ExecResult(**fields_of(data, ExecResult), data=data)


def topo_ping(config: Config | None = None) -> PingResult:
    """Every host pings every other."""
    data = ping_mesh(load_state(Path(_config(config).paths.state_dir)))
    return PingResult(**fields_of(data, PingResult), data=data)


def topo_trace(a: str, b: str, trace: str, config: Config | None = None, *, loop: bool = False) -> TraceResult:
    """Replay a link trace (a CSV path or a shipped name: leo-pass, cellular-drive) on the link between a and b."""
    data = start_trace(_config(config), a, b, trace, loop=loop)
    return TraceResult(data["link"], data=data)


def topo_trace_stop(config: Config | None = None, a: str | None = None, b: str | None = None) -> TraceResult:
    """Stop the trace on the link between a and b (or every trace); each link gets its configured rate back."""
    stopped = stop_traces(_config(config), a, b)
    return TraceResult(f"{a}-{b}" if a and b else None, stopped, data={"stopped": stopped})


def init(config: Config | None = None, *, cpus: float | None = None, clients: bool = False, bg_rate: str | None = "20M",
         bg_pattern: str = "constant", bg_period: float = 30.0) -> InitResult:
    """The prototype's init.sh: CPU limits, reachability of the FL servers, iperf3 background traffic (at a constant
    rate, or following a step, sine or poisson pattern over bg_period seconds)."""
    data = init_network(_config(config), cpus=cpus, clients=clients, bg_rate=bg_rate, bg_pattern=bg_pattern, bg_period=bg_period)
    return InitResult(**fields_of(data, InitResult), data=data)


# --- meters -----------------------------------------------------------------------------------
def meter_set(cohort: int, rate: str = "100mbit", config: Config | None = None, *, burst: str | None = None,
              direction: str = "both", controller: str | None = None) -> MeterResult:
    """Meter cohort N (the prototype's IN_PORT N) on the running network; replaces an earlier meter.
    `controller` None: through the network's own controller (Faucet, ONOS), else OVS directly."""
    return MeterResult([cohort], data=set_meter(_config(config), cohort, rate, burst, direction, controller))


def meter_show(config: Config | None = None) -> MeterResult:
    """The meters mlfo set, with what the switches report."""
    data = show_meters(_config(config))
    return MeterResult(sorted(int(c) for c in data), data=data)


def meter_clear(config: Config | None = None, cohort: int | None = None) -> MeterResult:
    """Remove the meters and flows mlfo added (of one cohort, or all)."""
    cleared = clear_meters(_config(config), cohort)
    return MeterResult(cleared, data={"cleared": cleared})


def meter_verify(cohort: int, rate: str = "10mbit", config: Config | None = None, *, burst: str | None = None,
                 controller: str | None = None, seconds: int = 3) -> MeterResult:
    """iperf3 from a client of cohort N to its server, unmetered then metered, and another cohort meanwhile."""
    return MeterResult([cohort], data=verify_meter(_config(config), cohort, rate, burst, controller, seconds))


# --- services (foreground, until SIGINT/SIGTERM) -------------------------------------------------
def serve_mlfo(config: Config, role: str) -> None:
    """Serve a campus or cloud MLFO on mlfo.host:mlfo.port (campus) or mlfo.momo_port (cloud)."""
    run_mlfo(config, role)


def serve_agent(config: Config) -> None:
    """Serve a node agent on agent.host:agent.port."""
    run_agent(config)


def serve_exporter(config: Config, app: str, match_port: int, host: str, port: int) -> None:
    """Serve the socket exporter of one app's TCP flows."""
    run_exporter(config, app, match_port, host, port)


def api_schema(service: str) -> ApiSchema:
    """The OpenAPI 3 document of a service (campus, cloud or agent), as it serves at /openapi.json."""
    return ApiSchema(service, data=openapi_schema(service))


# --- monitoring and reports ---------------------------------------------------------------------
def monitor_up(config: Config | None = None) -> MonitorResult:
    """Start Prometheus (and node_exporter; Grafana when Docker and its image are here)."""
    data = monitoring.monitor_up(_config(config))
    return MonitorResult(data.get("prometheus"), list(data.get("processes", [])), data=data)


def monitor_config(config: Config | None = None, *, topology: Path | None = None, cohorts: int | None = None,
                   loopback: bool = False, output: Path | None = None) -> MonitorConfig:
    """prometheus.yml for a topology, the running network, or loopback (`mlfo demo`); checked when written."""
    cfg = _config(config)
    built, faucet = None, None
    if topology or cohorts:
        built = _topology(topology, cohorts, None)
    elif not loopback and (running := running_topology(Path(cfg.paths.state_dir))):
        built = running[1]
        faucet = monitoring.faucet_target(running[0], built)
    text = monitoring.render_config(cfg, built, faucet)
    if output:
        write_text(output, text)
        monitoring.check_config(output)
    data = {"config": text, "targets": f"topology {built.name}" if built else "loopback", "written": str(output) if output else None}
    return MonitorConfig(**fields_of(data, MonitorConfig), data=data)


def monitor_down(config: Config | None = None) -> MonitorResult:
    """Stop what `monitor_up` started."""
    data = monitoring.monitor_down(_config(config))
    return MonitorResult(None, list(data.get("stopped", [])), data=data)


def report(run_dir: Path | list[Path], config: Config | None = None, *, fmt: str = "png", prometheus: str | None = None,
           topology: Path | None = None, output: Path | None = None, trackers: list[str] | None = None) -> ReportResult:
    """Plots (accuracy, loss, orchestration, traffic, round anatomy), a manifest and index.html under RUN_DIR/report/;
    for an experiment folder, its runs side by side; for several experiment folders, all of them side by side
    (in `output`). `fmt`: figure formats, a comma list of png, svg, pdf. `trackers`: also log the runs to
    mlflow and/or tensorboard (tracking.*)."""
    cfg = _config(config)
    formats = parse_formats(fmt)
    folders = [Path(p) for p in run_dir] if isinstance(run_dir, list) else [Path(run_dir)]
    if len(folders) > 1 or is_experiment(folders[0]):
        plain = [f for f in folders if not is_experiment(f)]
        if plain:
            raise ValidationError(f"{plain[0]} is not an experiment folder (index.json and runs/)", field="run_dir",
                                  hint="several folders are compared only when each is an experiment run by `mlfo run`")
        out = output or (folders[0] / "report" if len(folders) == 1 else Path("report-compare"))
        data = build_experiment_report(folders, formats=formats, out=out)
        entries = [entry for folder in folders for entry in load_runs(folder)]
        name = " vs ".join(str(load_index(f).get("experiment") or f.name) for f in folders)
        data["tracked"] = _track(cfg, trackers or [], entries, name, out)
        return ReportResult([Path(p) for p in data["plots"]], Path(data["report"]) / "table.json", Path(data["html"]), data=data)
    url = prometheus or f"http://127.0.0.1:{cfg.monitor.prometheus_port}"
    data = build_report(folders[0], formats, url, {"topology": topology} if topology else None)
    run = load_run(folders[0])
    entry = {"key": folders[0].name, "point": {}, "seed": (run.get("manifest") or {}).get("seeds", {}).get("fl.seed"), "run": run}
    data["tracked"] = _track(cfg, trackers or [], [entry], folders[0].name, Path(data["report_dir"]))
    return ReportResult([Path(p) for p in data["plots"]], Path(data["manifest"]),
                        Path(data["html"]) if data.get("html") else None, data=data)


def _track(cfg: Config, trackers: list[str], entries: list[dict[str, Any]], name: str, report_dir: Path) -> dict[str, str]:
    """Log runs to the trackers asked for, with the report folder's files; where each went."""
    files = sorted(p for p in report_dir.iterdir() if p.suffix in (".png", ".svg", ".pdf", ".csv", ".html")) if report_dir.is_dir() else []
    tracked = {}
    if "mlflow" in trackers:
        tracked["mlflow"] = to_mlflow(entries, name, cfg.tracking.mlflow_uri, report_dir, files)
    if "tensorboard" in trackers:
        tracked["tensorboard"] = to_tensorboard(entries, cfg.tracking.tensorboard_dir or report_dir / "tensorboard", files)
    return tracked


# --- experiments --------------------------------------------------------------------------------
def plan_experiment(path: Path, config: Config | None = None) -> ExperimentPlan:
    """Check an experiment file and list its runs, events and expected duration; starts nothing."""
    data = plan_summary(load_experiment(Path(path)), _config(config))
    return ExperimentPlan(**fields_of(data, ExperimentPlan), data=data)


def run_experiment(path: Path, config: Config | None = None, *, out_dir: Path | None = None,
                   progress: Progress | None = None, track: list[str] | None = None) -> ExperimentResult:
    """Run every run of an experiment file not finished yet (a rerun resumes); write runs and index.json.

    The folder defaults to paths.runs_dir/experiments/NAME; `report(folder)` compares the runs."""
    cfg = _config(config)
    experiment = load_experiment(Path(path))
    folder = out_dir or Path(cfg.paths.runs_dir) / "experiments" / experiment.name
    trackers = track or []

    def log_run(entry: dict[str, Any]) -> None:  # each run as it finishes, into the store the report uses
        _track(cfg, trackers, [entry], experiment.name, folder / "report")

    if trackers:
        (folder / "report").mkdir(parents=True, exist_ok=True)
    index = execute(experiment, cfg, folder, progress=progress or quiet, after_run=log_run if trackers else None)
    return ExperimentResult(experiment.name, folder, index["runs"], data={**index, "folder": str(folder)})


# --- datasets -------------------------------------------------------------------------------------------
def data_get(name: str, config: Config | None = None, *,
             progress: Callable[[str, int, int | None], None] | None = None) -> DataResult:
    """Download dataset `name` into fl.data_dir from its source, checking every file's SHA-256 (a broken
    download resumes; a wrong file is removed and refused with ChecksumError, exit code 4)."""
    cfg = _config(config)
    report = fetch.get(name, cfg.fl.data_dir.resolve(), extra=cfg.fl.dataset_sources,
                       progress=progress or (lambda *_: None))
    return DataResult([name], data=report.to_dict())


def data_import(name: str, files: list[Path], config: Config | None = None) -> DataResult:
    """Lay out files the user already has as dataset `name` in fl.data_dir, each checked like a download."""
    cfg = _config(config)
    return DataResult([name], data=fetch.import_files(name, files, cfg.fl.data_dir.resolve(), extra=cfg.fl.dataset_sources).to_dict())


def data_list(config: Config | None = None) -> DataResult:
    """Every dataset mlfo can use, and whether it is present in fl.data_dir."""
    cfg = _config(config)
    rows = fetch.listing(cfg.fl.data_dir.resolve(), cfg.fl.dataset_sources)
    return DataResult([r["dataset"] for r in rows if r["present"]], data={"datasets": rows})


def data_show(dataset: str = "handmnist", clients: int = 10, partition: PartitionSpec | None = None,
              config: Config | None = None, *, seed: int | None = None, plot: Path | None = None) -> DataResult:
    """Samples of each label per client for a cohort of `clients` split by `partition` (default:
    fl.partitioning), without running anything; with `plot`, drawn to that file too."""
    cfg = _config(config)
    fl = cfg.fl
    spec = partition or PartitionSpec.configured(fl)
    split_seed = spec.seed if spec.seed is not None else (seed if seed is not None else fl.seed)
    data_dir = fl.data_dir.resolve()
    loaded = load_dataset(dataset, data_dir)
    parts = cached_split(loaded.y_train, clients, spec, split_seed, data_dir / ".partitions")
    counts = label_counts(loaded.y_train, parts, loaded.num_classes)
    if plot is not None:
        plot_label_distribution([(f"{dataset}, {clients} clients, {spec.label()}, seed {split_seed}", counts)], plot)
    return DataResult([dataset], data={"dataset": dataset, "clients": clients, "partition": spec.model_dump(),
                                       "seed": split_seed, "label_counts": counts,
                                       "plot": str(plot) if plot is not None else None})
