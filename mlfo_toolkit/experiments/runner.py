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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mlfo_toolkit.backends.base import Backend
from mlfo_toolkit.backends.emulated import EmulatedBackend
from mlfo_toolkit.backends.loopback import LoopbackBackend
from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ConflictError, MlfoError, ValidationError
from mlfo_toolkit.experiments.availability import absences, availability_events, availability_record
from mlfo_toolkit.experiments.events import Actions
from mlfo_toolkit.experiments.spec import NETWORK_EVENTS, Event, Experiment, RunPlan, where
from mlfo_toolkit.experiments.timeline import Timeline, jsonable
from mlfo_toolkit.fl.partitions import PartitionSpec
from mlfo_toolkit.fl.strategies import canonical_strategy
from mlfo_toolkit.meters.operations import clear_meters
from mlfo_toolkit.net.backhaul import BackhaulCounter
from mlfo_toolkit.net.network import network_conditions
from mlfo_toolkit.net.profiles import ProfileSpec
from mlfo_toolkit.net.state import network_topology
from mlfo_toolkit.orchestrator.api_clients import campus_client
from mlfo_toolkit.orchestrator.assurance import load_policy
from mlfo_toolkit.orchestrator.cohorts import CohortFile, load_cohort_file, parse_cohort_file, shape_cohorts
from mlfo_toolkit.orchestrator.intents import config_with_app
from mlfo_toolkit.orchestrator.records import Deployment
from mlfo_toolkit.orchestrator.sending import SentCohort, follow_deployments, post_cohorts, wait_settled
from mlfo_toolkit.reports.runs import cohort_summary, manifest, write_run
from mlfo_toolkit.util.files import write_json_atomically
from mlfo_toolkit.util.progress import Progress, quiet
from mlfo_toolkit.util.signals import terminate_as_interrupt

log = logging.getLogger(__name__)


def cohorts_for(experiment: Experiment, config: Config, plan: RunPlan) -> CohortFile:
    """The experiment's cohort file, shaped, with its fl overrides and this run's sweep point applied."""
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
    partition = point.get("partition") or (spec.fl.partition.model_dump(exclude_none=True) if spec.fl.partition else None)
    if partition:
        changes["partition"] = PartitionSpec.model_validate(partition)
    for name in ("aggregation", "local_rounds"):
        value = point.get(name, getattr(spec.fl, name))
        if value is not None:
            changes[name] = value
    edges = point.get("edges", spec.fl.edges)
    if edges:  # never more edges than a cohort has clients
        shaped = dataclasses.replace(shaped, cohorts=[dataclasses.replace(c, edges=min(int(edges), c.size)) for c in shaped.cohorts])
    policy = run_policy(experiment, plan)
    if policy:
        changes["policy"] = policy
    thresholds = {**(spec.assurance or {}), **{k.split(".", 1)[1]: v for k, v in point.items() if k.startswith("assurance.")}}
    if thresholds:
        changes["assurance"] = thresholds
    return dataclasses.replace(shaped, cohorts=[dataclasses.replace(c, **changes) for c in shaped.cohorts])


def run_policy(experiment: Experiment, plan: RunPlan) -> str | None:
    """The run's policy: swept, or the experiment's; a policy file is named relative to the experiment file."""
    policy = plan.point.get("policy", experiment.spec.policy)
    if policy is None:
        return None
    where, _, name = str(policy).rpartition(":")
    if where.endswith(".py") and not Path(where).is_absolute():
        return f"{(experiment.source.parent / where).resolve()}:{name}"
    return str(policy)


def check_cohorts(experiment: Experiment, cohort_file: CohortFile) -> None:
    """Events name cohorts (and client parts) a run has: checked for every run before any starts."""
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


def check_policies(experiment: Experiment, cohort_file: CohortFile, config: Config) -> None:
    """A run's policy loads, with its thresholds, before any run starts (field and line on failure)."""
    for cohort in cohort_file.cohorts:
        if cohort.policy is None:
            continue
        settings = config.assurance.with_thresholds(cohort.assurance)
        try:
            load_policy(cohort.policy, settings)
        except ValidationError as err:
            swept = "policy" in experiment.spec.sweep
            raise ValidationError(err.message, field="sweep.policy" if swept else "policy", source=str(experiment.source),
                                  line=where(experiment.lines, "sweep", "policy") if swept else where(experiment.lines, "policy"),
                                  hint=err.hint) from None


def run_availability(experiment: Experiment, cohorts: CohortFile, plan: RunPlan) -> tuple[list[Event], dict[str, Any] | None]:
    """The run's availability events (kills and restarts) and its record, or nothing when the experiment has none."""
    availability = experiment.spec.availability
    if availability is None:
        return [], None
    cohort = next((c for c in cohorts.cohorts if c.name == availability.cohort), None)
    if cohort is None:
        raise ValidationError(f"no cohort '{availability.cohort}' in this run (cohorts: {', '.join(c.name for c in cohorts.cohorts)})",
                              field="availability.cohort", line=where(experiment.lines, "availability", "cohort"), source=str(experiment.source))
    spells = absences(availability, cohort.size, cohort.rounds, plan.seed)
    return availability_events(availability, spells), availability_record(availability, spells, cohort.size, cohort.rounds)


def plan_summary(experiment: Experiment, config: Config) -> dict[str, Any]:
    """What `--dry-run` prints: the runs, the events, a rough duration."""
    runs: list[dict[str, Any]] = []
    for plan in experiment.runs:
        cohorts = cohorts_for(experiment, config, plan)
        check_cohorts(experiment, cohorts)
        check_policies(experiment, cohorts, config)
        _, availability = run_availability(experiment, cohorts, plan)
        runs.append({"key": plan.key, "point": plan.point, "seed": plan.seed,
                     "cohorts": [{"name": c.name, "clients": c.size, "rounds": c.rounds, "strategy": c.strategy,
                                  "policy": c.policy, "aggregation": c.aggregation, "edges": c.edges,
                                  "local_rounds": c.local_rounds} for c in cohorts.cohorts],
                     **({"absences": availability["absences"]} if availability else {})})
    rounds = max((c["rounds"] for r in runs for c in r["cohorts"]), default=0)
    return {
        "experiment": experiment.name,
        "backend": experiment.spec.backend,
        "runs": runs,
        "events": [{"at": e.at.model_dump(exclude_none=True), "kind": e.kind, "what": jsonable(getattr(e, e.kind))} for e in experiment.spec.timeline],
        "expected_seconds": _expected_seconds(experiment, len(runs), rounds),
    }


def _expected_seconds(experiment: Experiment, runs: int, rounds: int) -> int:
    """A rough duration, from what was measured here: about 20 s to start and end a loopback run and 5 s
    per round; a round that waits for a dead or cut-off client takes round_timeout; a network event
    about 3 s (its iperf3 probes); bringing the small topology up and down about 40 s."""
    spec = experiment.spec
    timeout = spec.fl.round_timeout or 600.0
    faults = [e.at.round for e in spec.timeline if e.at.round and (e.kill or (e.link and e.link.state == "down"))]
    if spec.availability is not None:  # clients away: every round from the first absence waits for them
        faults.append(min([a.away for a in spec.availability.absences or []] or [spec.availability.from_round]))
    first_fault = min(faults, default=None)
    waiting = 0 if first_fault is None else max(0, rounds - first_fault + 1)
    per_run = 20 + 5 * (rounds - waiting) + timeout * waiting
    per_run += 3 * sum(1 for e in spec.timeline if e.kind in NETWORK_EVENTS)
    network = 40 if spec.backend == "network" else 0
    return int(network + runs * per_run)


def run_one(experiment: Experiment, plan: RunPlan, config: Config, run_dir: Path, progress: Progress,
            network: Backend | None = None) -> dict[str, Any]:
    """One run: on a loopback backend of its own or, given the experiment's (entered) network backend, there;
    the timeline fired at rounds; network changes undone after."""
    spec = experiment.spec
    cfg = config
    if network is None:
        # The run's own campus MLFO: it may load the experiment's policy.
        policy = run_policy(experiment, plan)
        allowed = [*config.assurance.allowed_policies, *([policy] if policy else [])]
        cfg = config.with_overrides({"fl.seed": plan.seed, "mlfo.client_check_seconds": 1.0, "assurance.allowed_policies": allowed})
        if spec.app is not None:
            cfg = config_with_app(cfg, experiment.source.parent / spec.app, run_dir)
    cohort_file = cohorts_for(experiment, cfg, plan)
    if network is None:
        servers = sum(1 for c in cohort_file.cohorts if not c.sameserver)
        backend_block: Any = LoopbackBackend(cfg, run_dir, servers=servers, clients=sum(c.size for c in cohort_file.cohorts))
    else:
        backend_block = contextlib.nullcontext(network)
    started = time.monotonic()
    actions = Actions(cfg, "", plan.point, [])
    init_effect: dict[str, Any] | None = None
    profiles_effect: dict[str, Any] | None = None
    away_events, availability = run_availability(experiment, cohort_file, plan)
    timeline = Timeline([*spec.timeline, *away_events], actions, hold=lambda cohort, number: _hold(actions, cohort, number))
    partial = _Partial(run_dir, timeline, actions.sent, cfg)
    conditions: dict[str, Any] | None = None
    backhaul: BackhaulCounter | contextlib.nullcontext[None] = contextlib.nullcontext(None)
    with backend_block as backend:
        actions.campus = backend.campus
        if network is not None:
            conditions = network_conditions(cfg)
            edges = network_topology(Path(cfg.paths.state_dir))[1].edges()
            if edges:  # the bytes over each edge's backhaul, on its interface, while the run goes on
                backhaul = BackhaulCounter(edges)
        try:
            if spec.init is not None:
                init = spec.init.model_copy(update={k.split(".", 1)[1]: v for k, v in plan.point.items() if k.startswith("init.")})
                progress("run", {"run": plan.key, "state": f"init: {init.model_dump(exclude_none=True)}"})
                init_effect = actions.init(init)
            profile_spec = plan.point.get("profiles") or (spec.profiles.model_dump(by_alias=True, exclude_none=True) if spec.profiles else None)
            if profile_spec:
                profiles = ProfileSpec.model_validate(profile_spec)
                progress("run", {"run": plan.key, "state": f"device profiles: {profiles.label()}"})
                profiles_effect = actions.profiles(profiles, plan.seed)
            with backhaul:
                actions.sent.extend(post_cohorts(cohort_file, cfg, backend.campus))
                for cohort in timeline.cohorts_with_rounds():
                    _hold(actions, cohort, timeline.held_round(cohort), wait_for_server=spec.timeout)
                with timeline.ticking():
                    follow_deployments(actions.sent, cfg, backend.campus, timeout=spec.timeout,
                                       progress=timeline.follow(progress, plan.key), poll_seconds=0.5)
            if network is not None:
                wait_settled(actions.sent, cfg, backend.campus)  # the next run must find the hosts free
        except BaseException:
            partial.keep(backend.campus)
            if network is not None:
                _stop_deployments(actions.sent, cfg, backend.campus)  # the network's MLFO would run them on
            raise
        finally:
            undone = actions.restore()
            if network is not None:
                clear_meters(cfg)  # the next run starts unmetered
    timeline.place(actions.sent)
    reaction(timeline.records, actions.sent)
    cohorts = [cohort_summary(c, cfg) for c in actions.sent]
    if isinstance(backhaul, BackhaulCounter):
        for summary, sent in zip(cohorts, actions.sent):
            if sent.record is not None and sent.record.initial and sent.record.rounds:
                ends = [sent.record.initial.get("time"), *(r.time for r in sorted(sent.record.rounds, key=lambda r: r.round))]
                if all(t is not None for t in ends):
                    summary["backhaul"] = backhaul.summary([float(t) for t in ends if t is not None])
    return {
        "cohorts": cohorts,
        "events": timeline.records,
        "run_dir": str(run_dir),
        "wall_seconds": round(time.monotonic() - started, 2),
        "point": plan.point,
        "seed": plan.seed,
        "repetition": plan.repetition,
        "backend": spec.backend,
        "init": init_effect,
        "conditions": conditions,
        "availability": availability,
        "profiles": profiles_effect,
        "undo_problems": undone,
        "manifest": manifest({"experiment": experiment.source}, {"fl.seed": plan.seed}),
    }


def reaction(records: list[dict[str, Any]], sent: list[SentCohort]) -> None:
    """Add the MLFO's view to each kill and restart: the client's state, how soon it was seen lost, whether a restarted
    client ran to the end, the deployment's end."""
    for record in records:
        what = record["what"]
        if record["kind"] not in ("kill", "restart") or not record["ok"]:
            continue
        target = next((c.record for c in sent if c.name == what["cohort"] and c.record is not None), None)
        if target is None:
            continue
        if record["kind"] == "kill" and what.get("server"):
            record["effect"].update(deployment_state=target.state, deployment_reason=target.reason)
            if target.finished is not None and record.get("fired") is not None:
                record["effect"]["ended_after_seconds"] = round(max(0.0, target.finished - float(record["fired"])), 2)
            continue
        if record["kind"] == "kill" and what.get("edge") is not None:
            # How the MLFO took an edge aggregator's death: when it saw it, what it did with the edge's clients.
            tier = next((t for t in target.tiers if t.lost_at and what["edge"] in (t.name, t.edge)), None)
            if tier is not None and tier.lost_at is not None:
                record["effect"].update(edge_state=tier.state, handled=tier.handled, parts=tier.parts_before,
                                        lost_after_seconds=round(tier.lost_at - float(record["fired"]), 2))
            record["effect"]["deployment_state"] = target.state
            continue
        if what.get("part") is None:
            continue
        client = target.client(what["part"])
        if client is None:
            continue
        record["effect"]["client_state"] = client.state  # at the end of the run: `stopped` once its deployment ended
        if record["kind"] == "restart":
            # What a restart is for: the client came back and was not lost again before the run ended.
            record["effect"]["ran_to_end"] = bool(client.restarts) and client.state in ("running", "stopped") and client.lost_at is None
        if record["kind"] == "kill":
            # Seen lost before a restart, or still lost at the end.
            lost_at = next((r.lost_at for r in client.restarts if (r.lost_at or 0) >= record["fired"]), client.lost_at)
            record["effect"]["lost_after_seconds"] = round(lost_at - record["fired"], 2) if lost_at else None
            record["effect"]["client_state"] = "lost" if lost_at else client.state
            record["effect"]["restarted_later"] = bool(client.restarts)


def _hold(actions: Actions, cohort: str, number: int, *, wait_for_server: float = 0.0) -> None:
    """Hold round `number` (and later ones) of a cohort's FL run until its events fired; 0 lets it go on.
    With `wait_for_server`, retry until the deployment has its FL server (rounds start only once its clients
    connected, later still). A hold that cannot be set is logged: the events then fire when they are seen."""
    sent = next((c for c in actions.sent if c.name == cohort), None)
    if sent is None:
        return
    deadline = time.monotonic() + wait_for_server
    with campus_client(actions.config, actions.campus) as client:
        while True:
            try:
                client.control(sent.deployment_id, {"hold": number})
                return
            except MlfoError as err:
                # 409 until the deployment has its FL server; one that ended without it (refused, failed) never will.
                if (time.monotonic() >= deadline or err.exit_code != ConflictError.exit_code
                        or Deployment.model_validate(client.deployment(sent.deployment_id)).ended):
                    log.warning("could not hold round %d of cohort %s: %s", number, cohort, err.message)
                    return
            time.sleep(0.1)


def _stop_deployments(sent: list[SentCohort], config: Config, campus: str) -> None:
    with campus_client(config, campus, retries=0) as client:
        for cohort in sent:
            with contextlib.suppress(MlfoError):
                client.stop_deployment(cohort.deployment_id)


class _Partial:
    """What an interrupted run had measured: its events and each deployment's rounds so far, in partial.json."""

    def __init__(self, run_dir: Path, timeline: Timeline, sent: list[SentCohort], config: Config) -> None:
        self.run_dir, self.timeline, self.sent, self.config = run_dir, timeline, sent, config

    def keep(self, campus: str) -> None:
        if campus and self.sent:
            with campus_client(self.config, campus, timeout=5, retries=0) as client:
                for cohort in self.sent:
                    with contextlib.suppress(MlfoError):
                        cohort.record = Deployment.model_validate(client.deployment(cohort.deployment_id))
        self.timeline.place(self.sent)
        write_json_atomically(self.run_dir / "partial.json", {
            "interrupted": time.time(), "events": self.timeline.records,
            "cohorts": [cohort_summary(c) for c in self.sent if c.record],
        })


def execute(experiment: Experiment, config: Config, out_dir: Path, *, progress: Progress = quiet,
            after_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every run not already finished; write index.json after each, then call `after_run` with its
    index entry and its record (`run`); return the index."""
    for plan in experiment.runs:
        cohorts = cohorts_for(experiment, config, plan)
        check_cohorts(experiment, cohorts)
        check_policies(experiment, cohorts, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    network: Any = contextlib.nullcontext(None)
    if experiment.spec.backend == "network":
        choice = experiment.spec.topology
        network = EmulatedBackend(config, topology=choice.file, params=choice.params, builder=choice.backend,
                                  controller=choice.controller, progress=progress)
    with terminate_as_interrupt(), network as entered:
        return _run_all(experiment, config, out_dir, progress, entered, after_run)


def _run_all(experiment: Experiment, config: Config, out_dir: Path, progress: Progress, network: Backend | None,
             after_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
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
            summary = run_one(experiment, plan, config, run_dir, progress, network)
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
        if after_run is not None:
            after_run({**entry, "run": summary})
    write_json_atomically(index_path, index)
    return index
