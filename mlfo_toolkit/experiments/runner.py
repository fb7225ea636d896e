"""`mlfo run experiment.yaml`: every run of an experiment, its timeline fired at FL rounds, all recorded.

Each run gets a folder under the experiment folder (run.json as `mlfo demo` writes it, plus the
events: when each fired, in which round and phase it fell, and whether it took effect). The
experiment folder's index.json lists the runs; a run whose run.json exists is skipped, so an
interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MlfoError, ValidationError
from mlfo_toolkit.experiments.spec import NETWORK_EVENTS, Event, Experiment, RunPlan
from mlfo_toolkit.files import write_json_atomically
from mlfo_toolkit.orchestrator.cohorts import CohortFile, load_cohort_file, parse_cohort_file

log = logging.getLogger(__name__)
Progress = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, data: dict[str, Any]) -> None:
    pass


def cohorts_for(experiment: Experiment, config: Config, plan: RunPlan) -> CohortFile:
    """The experiment's cohort file, shaped, with its fl overrides and this run's sweep point applied."""
    from mlfo_toolkit.demo import shape_cohorts

    spec, base = experiment.spec, experiment.source.parent
    if isinstance(spec.cohorts, str):
        cohort_file = load_cohort_file(base / spec.cohorts, config)
    else:
        text = yaml.safe_dump({"cohorts": spec.cohorts}, sort_keys=False)
        cohort_file = parse_cohort_file(text, f"{experiment.source}: cohorts", base, config)
    point = plan.point
    clients = point.get("clients", spec.shape.clients)
    shaped = shape_cohorts(cohort_file, spec.shape.cohorts, clients, point.get("rounds", spec.shape.rounds))
    changes: dict[str, Any] = {}
    strategy = point.get("strategy", spec.fl.strategy)
    if strategy:
        from mlfo_toolkit.fl.strategies import canonical_strategy

        changes["strategy"] = canonical_strategy(str(strategy))
    fraction = point.get("fraction_fit", spec.fl.fraction_fit)
    if fraction:
        changes["fraction_fit"] = float(fraction)
    if spec.fl.min_fit:
        changes["min_fit"] = spec.fl.min_fit
    if spec.fl.min_available:
        changes["min_available"] = spec.fl.min_available
    # Per cohort, so agents of a running network (whose config the run cannot change) use them too.
    changes["seed"] = plan.seed
    if spec.fl.round_timeout:
        changes["round_timeout"] = spec.fl.round_timeout
    return dataclasses.replace(shaped, cohorts=[dataclasses.replace(c, **changes) for c in shaped.cohorts])


def check_cohorts(experiment: Experiment, cohort_file: CohortFile) -> None:
    """Events name cohorts (and client parts) a run has: checked for every run before any starts."""
    from mlfo_toolkit.experiments.spec import where

    sizes = {c.name: c.size for c in cohort_file.cohorts}
    for i, event in enumerate(experiment.spec.timeline):
        action = getattr(event, event.kind)
        for field, name in (("at.cohort", event.at.cohort), (f"{event.kind}.cohort", getattr(action, "cohort", None))):
            if isinstance(name, str) and name not in sizes:
                raise ValidationError(f"no cohort '{name}' in this experiment (cohorts: {', '.join(sizes)})",
                                      field=f"timeline[{i}].{field}", line=where(experiment.lines, "timeline", i, *field.split(".")),
                                      source=str(experiment.source))
        part = getattr(action, "part", None)
        if isinstance(part, int) and isinstance(action.cohort, str) and part >= sizes[action.cohort]:
            raise ValidationError(f"cohort '{action.cohort}' has {sizes[action.cohort]} clients (parts 0-{sizes[action.cohort] - 1})",
                                  field=f"timeline[{i}].{event.kind}.part", line=where(experiment.lines, "timeline", i, event.kind, "part"),
                                  source=str(experiment.source))


def plan_summary(experiment: Experiment, config: Config) -> dict[str, Any]:
    """What `--dry-run` prints: the runs, the events, a rough duration."""
    runs: list[dict[str, Any]] = []
    for plan in experiment.runs:
        cohorts = cohorts_for(experiment, config, plan)
        check_cohorts(experiment, cohorts)
        runs.append({"key": plan.key, "point": plan.point, "seed": plan.seed,
                     "cohorts": [{"name": c.name, "clients": c.size, "rounds": c.rounds, "strategy": c.strategy} for c in cohorts.cohorts]})
    rounds = max((c["rounds"] for r in runs for c in r["cohorts"]), default=0)
    return {
        "experiment": experiment.name,
        "backend": experiment.spec.backend,
        "runs": runs,
        "events": [{"at": e.at.model_dump(exclude_none=True), "kind": e.kind, "what": _jsonable(getattr(e, e.kind))} for e in experiment.spec.timeline],
        "expected_seconds": _expected_seconds(experiment, len(runs), rounds),
    }


def _expected_seconds(experiment: Experiment, runs: int, rounds: int) -> int:
    """A rough duration, from what was measured here: about 20 s to start and end a loopback run and 5 s
    per round; a round that waits for a dead or cut-off client takes round_timeout; a network event
    about 3 s (its iperf3 probes); bringing the small topology up and down about 40 s."""
    spec = experiment.spec
    timeout = spec.fl.round_timeout or 600.0
    first_fault = min((e.at.round for e in spec.timeline if e.at.round and (e.kill or (e.link and e.link.state == "down"))),
                      default=None)
    waiting = 0 if first_fault is None else max(0, rounds - first_fault + 1)
    per_run = 20 + 5 * (rounds - waiting) + timeout * waiting
    per_run += 3 * sum(1 for e in spec.timeline if e.kind in NETWORK_EVENTS)
    network = 40 if spec.backend == "network" else 0
    return int(network + runs * per_run)


class Timeline:
    """Fires an experiment's events during one run and records each: when, and what it did."""

    def __init__(self, events: list[Event], act: Callable[[Event], dict[str, Any]]) -> None:
        self.pending = list(enumerate(events))
        self.act = act
        self.records: list[dict[str, Any]] = []
        self.started = time.time()
        self._lock = threading.Lock()

    def due(self, *, cohort: str | None = None, starting_round: int | None = None) -> None:
        """Fire what is due: round events as that round of that cohort starts, time events once their time came."""
        now = time.time()
        with self._lock:
            ready = [(i, e) for i, e in self.pending
                     if (e.at.round is not None and cohort == e.at.cohort and starting_round is not None and starting_round >= e.at.round)
                     or (e.at.seconds is not None and now - self.started >= e.at.seconds)]
            self.pending = [(i, e) for i, e in self.pending if (i, e) not in ready]
        for index, event in ready:
            fired = time.time()
            try:
                effect = self.act(event)
                ok = True
            except MlfoError as err:
                effect, ok = {"error": err.message}, False
            except OSError as err:  # e.g. a process or interface gone under the event
                effect, ok = {"error": str(err)}, False
            self.records.append({"index": index, "kind": event.kind, "at": event.at.model_dump(exclude_none=True),
                                 "what": _jsonable(getattr(event, event.kind)), "fired": fired,
                                 "offset_seconds": round(fired - self.started, 2), "ok": ok, "effect": effect})


    def follow(self, progress: Progress, run: str) -> Progress:
        """A deployment-progress callback that passes events on and fires what each one makes due."""

        def hook(event: str, data: dict[str, Any]) -> None:
            progress(event, {**data, "run": run})
            if event == "state" and data.get("state") == "running":
                self.due(cohort=data["cohort"], starting_round=1)
            elif event == "round":
                self.due(cohort=data["cohort"], starting_round=int(data["round"]) + 1)
            else:
                self.due()

        return hook

    @contextlib.contextmanager
    def ticking(self) -> Iterator[None]:
        """Check time-triggered events twice a second while the block runs (from the cohorts' sending on)."""
        self.started = time.time()
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                self.due()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join(timeout=5)

    def place(self, sent: list[Any]) -> None:
        """Put each fired event in the round (and phase) of its cohort it fell into."""
        records = {c.name: c.record for c in sent}
        for record in self.records:
            cohort = record["at"].get("cohort") or (record["what"].get("cohort") if isinstance(record["what"], dict) else None)
            run: dict[str, Any] = records.get(str(cohort)) or next(iter(records.values()), {})
            record["round"], record["phase"] = place_in_rounds(record["fired"], run.get("rounds", []),
                                                               (run.get("params") or {}).get("rounds"))


def _jsonable(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value


def place_in_rounds(fired: float, rounds: list[dict[str, Any]], total: int | None = None) -> tuple[int | None, str | None]:
    """The round (and phase of it) a wall time fell into, from the rounds' end times and phase durations.
    After the last finished round of a run that stopped short of `total`: the round that never finished."""
    ordered = sorted(rounds, key=lambda r: r["round"])
    if ordered and total and int(ordered[-1]["round"]) < total and fired > float(ordered[-1].get("time") or 0):
        return int(ordered[-1]["round"]) + 1, None
    for entry in ordered:
        end = float(entry.get("time") or 0)
        if fired > end:
            continue
        phases = entry.get("phases") or {}
        start = end - sum(float(v) for v in phases.values())
        position = start
        for phase, seconds in phases.items():
            position += float(seconds)
            if fired <= position:
                return int(entry["round"]), phase
        return int(entry["round"]), None
    return None, None


def run_one(experiment: Experiment, plan: RunPlan, config: Config, run_dir: Path, progress: Progress,
            campus: str | None = None) -> dict[str, Any]:
    """One run: on loopback (MLFOs, agents and Flower in this process's care) or, given the published campus
    MLFO of the running emulated network, there; the timeline fired at rounds; network changes undone after."""
    from mlfo_toolkit.demo import LoopbackNetwork
    from mlfo_toolkit.experiments.events import Actions
    from mlfo_toolkit.meters.core import clear_meters
    from mlfo_toolkit.monitoring.runs import cohort_summary, manifest
    from mlfo_toolkit.orchestrator.sending import send_cohorts, wait_for_deployments

    spec = experiment.spec
    loopback = campus is None
    cfg = config.with_overrides({"fl.seed": plan.seed, "mlfo.client_check_seconds": 1.0}) if loopback else config
    cohort_file = cohorts_for(experiment, cfg, plan)
    network = LoopbackNetwork(cfg, run_dir) if loopback else None
    started = time.monotonic()
    actions = Actions(cfg, campus or "", plan.point, [])
    init_effect: dict[str, Any] | None = None
    timeline = Timeline(list(spec.timeline), actions)
    partial = _Partial(run_dir, timeline, actions.sent, cfg)
    try:
        if network is not None:
            num_servers = sum(1 for c in cohort_file.cohorts if not c.sameserver)
            network.start(num_servers, sum(c.size for c in cohort_file.cohorts))
            actions.campus = network.campus_address
        if spec.init is not None:
            init = spec.init.model_copy(update={k.split(".", 1)[1]: v for k, v in plan.point.items() if k.startswith("init.")})
            progress("run", {"run": plan.key, "state": f"init: {init.model_dump(exclude_none=True)}"})
            init_effect = actions.init(init)
        actions.sent.extend(send_cohorts(cohort_file, cfg, actions.campus))
        with timeline.ticking():
            wait_for_deployments(actions.sent, cfg, actions.campus, timeout=spec.timeout,
                                 progress=timeline.follow(progress, plan.key), poll_seconds=0.5)
    except BaseException:
        partial.keep(actions.campus)
        if not loopback:
            _stop_deployments(actions.sent, cfg, actions.campus)  # the network's MLFO would run them on
        raise
    finally:
        undone = actions.restore()
        if not loopback:
            clear_meters(cfg)  # the next run starts unmetered
        if network is not None:
            network.close()
    timeline.place(actions.sent)
    reaction(timeline.records, actions.sent)
    return {
        "cohorts": [cohort_summary(c) for c in actions.sent],
        "events": timeline.records,
        "run_dir": str(run_dir),
        "wall_seconds": round(time.monotonic() - started, 2),
        "point": plan.point,
        "seed": plan.seed,
        "repetition": plan.repetition,
        "backend": spec.backend,
        "init": init_effect,
        "undo_problems": undone,
        "manifest": manifest({"experiment": experiment.source}, {"fl.seed": plan.seed}),
    }


def reaction(records: list[dict[str, Any]], sent: list[Any]) -> None:
    """Add the MLFO's view to each kill and restart: the client's state, how soon it was seen lost, the deployment's end."""
    for record in records:
        what = record["what"]
        if record["kind"] not in ("kill", "restart") or not record["ok"]:
            continue
        target = next((c for c in sent if c.name == what["cohort"]), None)
        if target is None:
            continue
        if record["kind"] == "kill" and what.get("server"):
            record["effect"].update(deployment_state=target.record.get("state"), deployment_reason=target.record.get("reason"))
            continue
        client: dict[str, Any] = next((c for c in target.record.get("clients", []) if c.get("part") == what["part"]), {})
        record["effect"]["client_state"] = client.get("state")
        if record["kind"] == "kill":
            # Seen lost before a restart, or still lost at the end.
            lost_at = next((r.get("lost_at") for r in client.get("restarts", []) if (r.get("lost_at") or 0) >= record["fired"]),
                           client.get("lost_at"))
            record["effect"]["lost_after_seconds"] = round(lost_at - record["fired"], 2) if lost_at else None
            record["effect"]["client_state"] = "lost" if lost_at else client.get("state")
            record["effect"]["restarted_later"] = bool(client.get("restarts"))


def _stop_deployments(sent: list[Any], config: Config, campus: str) -> None:
    from mlfo_toolkit.orchestrator.clients import MlfoClient

    client = MlfoClient(campus, token=config.api.token, timeout=config.api.timeout_seconds, retries=0)
    try:
        for cohort in sent:
            with contextlib.suppress(MlfoError):
                client.stop_deployment(cohort.deployment_id)
    finally:
        client.close()


class _Partial:
    """What an interrupted run had measured: its events and each deployment's rounds so far, in partial.json."""

    def __init__(self, run_dir: Path, timeline: Timeline, sent: list[Any], config: Config) -> None:
        self.run_dir, self.timeline, self.sent, self.config = run_dir, timeline, sent, config

    def keep(self, campus: str) -> None:
        from mlfo_toolkit.monitoring.runs import cohort_summary
        from mlfo_toolkit.orchestrator.clients import MlfoClient

        if campus and self.sent:
            client = MlfoClient(campus, token=self.config.api.token, timeout=5, retries=0)
            try:
                for cohort in self.sent:
                    with contextlib.suppress(MlfoError):
                        cohort.record = client.deployment(cohort.deployment_id)
            finally:
                client.close()
        self.timeline.place(self.sent)
        write_json_atomically(self.run_dir / "partial.json", {
            "interrupted": time.time(), "events": self.timeline.records,
            "cohorts": [cohort_summary(c) for c in self.sent if c.record],
        })


class _Network:
    """The emulated network an experiment runs in: the one running, or one it brings up and takes down."""

    def __init__(self, experiment: Experiment, config: Config, progress: Progress) -> None:
        self.experiment, self.config, self.progress = experiment, config, progress
        self.started_here = False
        self.campus = ""

    def __enter__(self) -> _Network:
        from mlfo_toolkit import api
        from mlfo_toolkit.errors import NeedsRootError
        from mlfo_toolkit.net.state import load_state, state_path

        if os.geteuid() != 0:
            raise NeedsRootError("backend: network builds an emulated network, which needs root", hint="run it with sudo")
        state_dir = Path(self.config.paths.state_dir)
        if not state_path(state_dir).exists():
            choice = self.experiment.spec.topology
            self.progress("run", {"run": "network", "state": f"bringing up topology {choice.file}"})
            api.topo_up(None, self.config, topology=choice.file, params=choice.params, backend=choice.backend, detach=True)
            self.started_here = True
        state = load_state(state_dir)
        published = next((outer for inner, outer in state.published.items() if inner.endswith(f":{self.config.mlfo.port}")), None)
        if published is None:
            raise ValidationError("the running network publishes no campus MLFO port on loopback", field="topology",
                                  hint="give the topology's campus host a publish port")
        self.campus = published
        return self

    def __exit__(self, *exc: object) -> None:
        from mlfo_toolkit import api

        if self.started_here:
            self.progress("run", {"run": "network", "state": "taking the network down"})
            api.topo_down(self.config)


def run_experiment(experiment: Experiment, config: Config, out_dir: Path, *, progress: Progress = _quiet) -> dict[str, Any]:
    """Run every run not already finished; write index.json after each; return the index."""
    for plan in experiment.runs:
        check_cohorts(experiment, cohorts_for(experiment, config, plan))
    out_dir.mkdir(parents=True, exist_ok=True)
    network = _Network(experiment, config, progress) if experiment.spec.backend == "network" else None
    with _terminate_as_interrupt(), network if network is not None else contextlib.nullcontext():
        return _run_all(experiment, config, out_dir, progress, network)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) stop a run as Ctrl-C does: what was started is stopped, what was measured is kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run_all(experiment: Experiment, config: Config, out_dir: Path, progress: Progress, network: _Network | None) -> dict[str, Any]:
    from mlfo_toolkit.monitoring.runs import write_run

    index_path = out_dir / "index.json"
    index: dict[str, Any] = {"experiment": experiment.name, "source": str(experiment.source), "runs": []}
    for plan in experiment.runs:
        run_dir = out_dir / "runs" / plan.key
        entry = {"key": plan.key, "point": plan.point, "seed": plan.seed, "repetition": plan.repetition, "dir": str(run_dir)}
        if (run_dir / "run.json").exists():
            entry["state"] = "skipped (finished earlier)"
            index["runs"].append(entry)
            progress("run", {"run": plan.key, "state": "skipped"})
            continue
        if run_dir.exists():
            # An interrupted attempt: keep what it measured beside the new one.
            attempt = 1 + sum(1 for _ in run_dir.parent.glob(f"{plan.key}.attempt-*"))
            run_dir.rename(run_dir.with_name(f"{plan.key}.attempt-{attempt}"))
            entry["earlier_attempts"] = attempt
        run_dir.mkdir(parents=True, exist_ok=True)
        progress("run", {"run": plan.key, "state": "starting", "point": plan.point, "seed": plan.seed})
        try:
            summary = run_one(experiment, plan, config, run_dir, progress, network.campus if network is not None else None)
        except KeyboardInterrupt:
            entry["state"] = "interrupted"
            index["runs"].append(entry)
            write_json_atomically(index_path, index)
            raise
        write_run(run_dir, summary)
        failed = [c["name"] for c in summary["cohorts"] if c["state"] == "failed"]
        entry["state"] = "failed: " + ", ".join(failed) if failed else "done"
        index["runs"].append(entry)
        write_json_atomically(index_path, index)
        progress("run", {"run": plan.key, "state": entry["state"]})
    write_json_atomically(index_path, index)
    return index
