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
from mlfo_toolkit.experiments.spec import Event, Experiment, RunPlan
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
    return dataclasses.replace(shaped, cohorts=[dataclasses.replace(c, **changes) for c in shaped.cohorts])


def plan_summary(experiment: Experiment, config: Config) -> dict[str, Any]:
    """What `--dry-run` prints: the runs, the events, a rough duration."""
    runs: list[dict[str, Any]] = []
    for plan in experiment.runs:
        cohorts = cohorts_for(experiment, config, plan)
        runs.append({"key": plan.key, "point": plan.point, "seed": plan.seed,
                     "cohorts": [{"name": c.name, "clients": c.size, "rounds": c.rounds, "strategy": c.strategy} for c in cohorts.cohorts]})
    rounds = max((c["rounds"] for r in runs for c in r["cohorts"]), default=0)
    return {
        "experiment": experiment.name,
        "backend": experiment.spec.backend,
        "runs": runs,
        "events": [{"at": e.at.model_dump(exclude_none=True), "kind": e.kind, "what": getattr(e, e.kind)} for e in experiment.spec.timeline],
        # Measured here (4 clients): about 20 s to start and end a loopback run, 4-8 s per round
        # (a round that waits for a killed client takes fl.round_timeout).
        "expected_seconds": len(runs) * (20 + 5 * rounds),
    }


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
        rounds_of = {c.name: c.record.get("rounds", []) for c in sent}
        for record in self.records:
            cohort = record["at"].get("cohort") or (record["what"].get("cohort") if isinstance(record["what"], dict) else None)
            rounds: list[dict[str, Any]] = rounds_of.get(str(cohort)) or next(iter(rounds_of.values()), [])
            record["round"], record["phase"] = place_in_rounds(record["fired"], rounds)


def _jsonable(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


def place_in_rounds(fired: float, rounds: list[dict[str, Any]]) -> tuple[int | None, str | None]:
    """The round (and phase of it) a wall time fell into, from the rounds' end times and phase durations."""
    for entry in sorted(rounds, key=lambda r: r["round"]):
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


def run_loopback(experiment: Experiment, plan: RunPlan, config: Config, run_dir: Path, progress: Progress) -> dict[str, Any]:
    """One run on loopback: MLFOs, agents and Flower in this process's care, events fired at rounds."""
    from mlfo_toolkit.demo import LoopbackNetwork
    from mlfo_toolkit.monitoring.runs import cohort_summary, manifest
    from mlfo_toolkit.orchestrator.sending import send_cohorts, wait_for_deployments

    spec = experiment.spec
    overrides: dict[str, Any] = {"fl.seed": plan.seed, "mlfo.client_check_seconds": 1.0}
    if spec.fl.round_timeout:
        overrides["fl.round_timeout"] = spec.fl.round_timeout
    cfg = config.with_overrides(overrides)
    cohort_file = cohorts_for(experiment, cfg, plan)
    network = LoopbackNetwork(cfg, run_dir)
    started = time.monotonic()
    sent: list[Any] = []

    def kill(event: Event) -> dict[str, Any]:
        assert event.kill is not None
        target = next((c for c in sent if c.name == event.kill.cohort), None)
        if target is None:
            raise ValidationError(f"no cohort '{event.kill.cohort}' in this run", field="timeline.kill.cohort")
        record = target.record
        client = next((c for c in record.get("clients", []) if c.get("part") == event.kill.part), None)
        if client is None:
            raise ValidationError(f"cohort '{target.name}' has no client part {event.kill.part}", field="timeline.kill.part")
        # The demo network adds an agent and its label together, so the two lists line up.
        by_address = {label[0]: agent for label, agent in zip(network.agent_labels, network.agents)}
        agent = by_address.get(client["agent"])
        if agent is None:
            raise ValidationError(f"no agent at {client['agent']}", field="timeline.kill")
        victims = [c for c in agent.clients if c.params.deployment == target.deployment_id and c.process.running()]
        for victim in victims:
            os.kill(victim.process.pid, signal.SIGKILL)
        return {"agent": client["agent"], "part": event.kill.part, "killed_pids": [v.process.pid for v in victims]}

    timeline = Timeline(list(spec.timeline), kill)

    try:
        num_servers = sum(1 for c in cohort_file.cohorts if not c.sameserver)
        network.start(num_servers, sum(c.size for c in cohort_file.cohorts))
        sent.extend(send_cohorts(cohort_file, network.config, network.campus_address))
        with timeline.ticking():
            wait_for_deployments(sent, network.config, network.campus_address, timeout=spec.timeout,
                                 progress=timeline.follow(progress, plan.key), poll_seconds=0.5)
    finally:
        network.close()
    cohorts = [cohort_summary(c) for c in sent]
    timeline.place(sent)
    for record in timeline.records:
        if record["kind"] == "kill" and record["ok"]:
            target = next(c for c in sent if c.name == record["what"]["cohort"])
            client = next(c for c in target.record.get("clients", []) if c.get("part") == record["what"]["part"])
            record["effect"]["client_state"] = client.get("state")
            record["effect"]["lost_after_seconds"] = round(client["lost_at"] - record["fired"], 2) if client.get("lost_at") else None
    return {
        "cohorts": cohorts,
        "events": timeline.records,
        "run_dir": str(run_dir),
        "wall_seconds": round(time.monotonic() - started, 2),
        "point": plan.point,
        "seed": plan.seed,
        "repetition": plan.repetition,
        "manifest": manifest({"experiment": experiment.source}, {"fl.seed": plan.seed}),
    }


def _meter_rate(event: Event, point: dict[str, Any]) -> str:
    assert event.meter is not None
    return str(point.get("meter.rate", event.meter.rate))


def run_network(experiment: Experiment, plan: RunPlan, config: Config, run_dir: Path, progress: Progress,
                campus: str) -> dict[str, Any]:
    """One run in the running emulated network: cohorts sent to its campus MLFO, meters set at rounds,
    the cohort's rate measured with iperf3 just before and after each meter change."""
    from mlfo_toolkit.meters.core import CohortProbe, clear_meters, set_meter
    from mlfo_toolkit.monitoring.runs import cohort_summary, manifest
    from mlfo_toolkit.orchestrator.sending import send_cohorts, wait_for_deployments

    spec = experiment.spec
    cohort_file = cohorts_for(experiment, config, plan)
    started = time.monotonic()

    def act(event: Event) -> dict[str, Any]:
        if event.meter is not None:
            rate = _meter_rate(event, plan.point)
            with CohortProbe(config, event.meter.cohort) as probe:
                before = probe.measure()
                installed = set_meter(config, event.meter.cohort, rate, None, "both", "ovs")
                after = probe.measure()
            return {"cohort": event.meter.cohort, "rate": rate, "rate_kbps": installed["rate_kbps"],
                    "measured_mbit_before": before, "measured_mbit_after": after, "client": probe.client.name}
        assert event.meter_clear is not None
        with CohortProbe(config, event.meter_clear) as probe:
            before = probe.measure()
            cleared = clear_meters(config, event.meter_clear)
            after = probe.measure()
        return {"cohort": event.meter_clear, "cleared": cleared, "measured_mbit_before": before, "measured_mbit_after": after}

    timeline = Timeline(list(spec.timeline), act)

    sent = send_cohorts(cohort_file, config, campus)
    try:
        with timeline.ticking():
            wait_for_deployments(sent, config, campus, timeout=spec.timeout, progress=timeline.follow(progress, plan.key),
                                 poll_seconds=0.5)
    finally:
        clear_meters(config)  # the next run starts unmetered
    timeline.place(sent)
    return {
        "cohorts": [cohort_summary(c) for c in sent],
        "events": timeline.records,
        "run_dir": str(run_dir),
        "wall_seconds": round(time.monotonic() - started, 2),
        "point": plan.point,
        # Agents in the network read fl.seed from the network's config, so every run shares it.
        "seed": config.fl.seed,
        "repetition": plan.repetition,
        "backend": "network",
        "manifest": manifest({"experiment": experiment.source}, {"fl.seed": config.fl.seed}),
    }


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
            api.topo_up(None, self.config, topology=choice.file, params=choice.params, detach=True)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    network = _Network(experiment, config, progress) if experiment.spec.backend == "network" else None
    with network if network is not None else contextlib.nullcontext():
        return _run_all(experiment, config, out_dir, progress, network)


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
        run_dir.mkdir(parents=True, exist_ok=True)
        progress("run", {"run": plan.key, "state": "starting", "point": plan.point, "seed": plan.seed})
        try:
            if network is not None:
                summary = run_network(experiment, plan, config, run_dir, progress, network.campus)
            else:
                summary = run_loopback(experiment, plan, config, run_dir, progress)
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
