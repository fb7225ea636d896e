"""What each timeline event does, and what it measures, in one run.

A client or server is killed by the PID the MLFO recorded for it (checked to be the process started
for this deployment), and restarted through the campus MLFO, as a user would. Network events change
the running emulated network through `net.changes` and `meters.operations`, and measure the effect: the
rate a cohort's client gets to its FL server just before and after (iperf3, 1 s), whether it still
reaches it, the CPU limit the kernel holds. Every network change is undone when the run ends, so the
next run starts from the same network.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MlfoError, ValidationError
from mlfo_toolkit.experiments.spec import SWEEPABLE_EVENT_FIELDS, Background, Cpu, Event
from mlfo_toolkit.meters.operations import clear_meters, set_meter
from mlfo_toolkit.meters.plan import parse_rate_kbps
from mlfo_toolkit.meters.probe import CohortProbe
from mlfo_toolkit.net.changes import (
    background_mbit,
    link_ends,
    read_link,
    remove_shaping,
    set_link,
    start_background,
    stop_background,
)
from mlfo_toolkit.net.hosts import read_cpu_limit, read_memory, set_cpu, set_memory
from mlfo_toolkit.net.network import agent_process, restart_agent
from mlfo_toolkit.net.profiles import ProfileSpec, assign_profiles, profiles_record
from mlfo_toolkit.net.state import running_network
from mlfo_toolkit.net.traces import start_trace, stop_traces
from mlfo_toolkit.orchestrator.api_clients import campus_client
from mlfo_toolkit.orchestrator.records import ClientRecord, Deployment, EdgeTier
from mlfo_toolkit.orchestrator.sending import SentCohort

# How long a restart waits for the MLFO to see the killed client lost (it checks every client_check_seconds).
LOST_WAIT_SECONDS = 60.0


def event_value(event: Event, point: dict[str, Any]) -> Any:
    """The event's action, with this run's sweep point applied (e.g. meter.rate)."""
    action = getattr(event, event.kind)
    for key, (kind, name) in SWEEPABLE_EVENT_FIELDS.items():
        if kind == event.kind and key in point:
            action = type(action).model_validate({**action.model_dump(), name: point[key]})
    return action


def _kill_pid(pid: int | None, what: str, since: float) -> None:
    """SIGKILL `pid` if it is the process started for this deployment (PIDs are reused)."""
    if not pid:
        raise MlfoError(f"the MLFO recorded no PID for {what}")
    try:
        process = psutil.Process(pid)
        if process.create_time() < since - 1:
            raise MlfoError(f"PID {pid} of {what} now belongs to an older process; not killing it")
        process.kill()
    except psutil.NoSuchProcess:
        raise MlfoError(f"{what} (PID {pid}) is already gone") from None


@dataclass
class Actions:
    """Carries out a run's events against its campus MLFO (and network, if any); undoes network changes."""

    config: Config
    campus: str
    point: dict[str, Any]
    sent: list[SentCohort]  # filled once the cohorts are sent
    undo: list[Callable[[], object]] = field(default_factory=list)

    def __call__(self, event: Event) -> dict[str, Any]:
        action = event_value(event, self.point)
        handler: Callable[[Any], dict[str, Any]] = getattr(self, f"_{event.kind}")
        return handler(action)

    def _deployment(self, cohort: str) -> Deployment:
        target = next((c for c in self.sent if c.name == cohort), None)
        if target is None:
            raise ValidationError(f"no cohort '{cohort}' in this run (cohorts: {', '.join(c.name for c in self.sent)})",
                                  field="timeline.cohort")
        with campus_client(self.config, self.campus) as client:
            return Deployment.model_validate(client.deployment(target.deployment_id))

    def _client(self, record: Deployment, cohort: str, part: int | None, event: str) -> ClientRecord:
        client = record.client(part) if part is not None else None
        if client is None:
            raise ValidationError(f"cohort '{cohort}' has no client part {part}", field=f"timeline.{event}.part")
        return client

    # --- FL processes ---------------------------------------------------------------------------
    def _kill(self, kill: Any) -> dict[str, Any]:
        record = self._deployment(kill.cohort)
        if kill.agent:
            return self._kill_agent(kill, record)
        if kill.edge is not None:
            tier = self._tier(record, kill.cohort, kill.edge)
            killed = []
            for pid, what in ((tier.relay_pid, "relay"), (tier.pid, "edge SuperLink")):
                try:
                    _kill_pid(pid, f"the {what} of edge {tier.name or tier.edge} of {kill.cohort}", record.created)
                    killed.append(pid)
                except MlfoError:
                    if not killed and what == "edge SuperLink":
                        raise
            return {"cohort": kill.cohort, "edge": tier.name or tier.edge, "agent": tier.agent, "pids": killed}
        if kill.server:
            server = record.server
            _kill_pid(server.pid if server else None, f"the FL server of {kill.cohort}", record.created)
            return {"cohort": kill.cohort, "server": server.server if server else None, "pid": server.pid if server else None}
        client = self._client(record, kill.cohort, kill.part, "kill")
        _kill_pid(client.pid, f"client part {kill.part} of {kill.cohort}", record.created)
        return {"cohort": kill.cohort, "part": kill.part, "agent": client.agent, "pid": client.pid}

    def _tier(self, record: Deployment, cohort: str, edge: int | str) -> EdgeTier:
        tier = next((t for t in record.tiers if edge in (t.edge, t.name)), None)
        if tier is None:
            raise ValidationError(f"cohort '{cohort}' has no edge aggregator {edge!r} (edges: "
                                  f"{', '.join(str(t.name or t.edge) for t in record.tiers) or 'none'})", field="timeline.kill.edge")
        return tier

    def _agent_of(self, record: Deployment, cohort: str, part: int | None, server: bool, event: str,
                  edge: int | str | None = None) -> tuple[str, Any]:
        """The address and recorded agent process that run a deployment's FL server, an edge aggregator or a client."""
        if edge is not None:
            address = self._tier(record, cohort, edge).agent
        else:
            address = (record.server.agent if record.server else "") if server else self._client(record, cohort, part, event).agent
        state, _, _ = running_network(self.config)
        return address, agent_process(state, address)

    def _kill_agent(self, kill: Any, record: Deployment) -> dict[str, Any]:
        address, agent = self._agent_of(record, kill.cohort, kill.part, kill.server, "kill", kill.edge)
        if not agent.alive():
            raise MlfoError(f"the agent on {agent.host} (PID {agent.pid}) is not running")
        os.kill(agent.pid, signal.SIGKILL)  # a crash: its Flower processes die with it, nothing stops them cleanly
        self.undo.append(lambda: self._agent_back(str(agent.host)))
        return {"cohort": kill.cohort, "host": agent.host, "agent": address, "pid": agent.pid, "part": kill.part,
                "server": kill.server or None, "edge": kill.edge}

    def _agent_back(self, host: str) -> dict[str, Any] | None:
        """Start a host's killed agent again (at a restart event, or when the run ends)."""
        state, _, _ = running_network(self.config)
        current = next(p for p in state.processes if p.host == host and p.name == "agent")
        if current.alive():
            return None
        started = time.monotonic()
        new = restart_agent(self.config, host)
        return {"agent_pid": new.pid, "agent_start_seconds": round(time.monotonic() - started, 2)}

    def _restart(self, restart: Any) -> dict[str, Any]:
        agent_effect: dict[str, Any] = {}
        if restart.agent:
            _, agent = self._agent_of(self._deployment(restart.cohort), restart.cohort, restart.part, False, "restart")
            agent_effect = self._agent_back(str(agent.host)) or {"agent": "was running"}
        waited = time.monotonic()
        deadline = waited + LOST_WAIT_SECONDS
        while True:
            record = self._deployment(restart.cohort)
            client = self._client(record, restart.cohort, restart.part, "restart")
            if client.state in ("lost", "failed"):
                break
            if record.state != "running" or time.monotonic() > deadline:
                raise MlfoError(f"client part {restart.part} of {restart.cohort} is {client.state} (deployment "
                                f"{record.state}): nothing to restart", hint="kill it first, in an earlier round")
            time.sleep(0.5)
        with campus_client(self.config, self.campus) as mlfo:
            answer = mlfo.restart_client(record.id, restart.part)
        return {"cohort": restart.cohort, "part": restart.part, "pid": answer.get("pid"), **agent_effect,
                "waited_for_lost_seconds": round(time.monotonic() - waited, 2), "start_seconds": answer.get("seconds")}

    # --- the network ------------------------------------------------------------------------------
    def _probe(self, cohort: int, client: str | None = None) -> CohortProbe:
        return CohortProbe(self.config, cohort, client=client)

    def _meter(self, meter: Any) -> dict[str, Any]:
        with self._probe(meter.cohort) as probe:
            before = probe.measure()
            installed = set_meter(self.config, meter.cohort, meter.rate, None, "both", None)  # the network's controller
            after = probe.measure()
        return {"cohort": meter.cohort, "rate": meter.rate, "rate_kbps": installed["rate_kbps"],
                "measured_mbit_before": before, "measured_mbit_after": after, "client": probe.client.name}

    def _meter_clear(self, cohort: int) -> dict[str, Any]:
        with self._probe(cohort) as probe:
            before = probe.measure()
            cleared = clear_meters(self.config, cohort)
            after = probe.measure()
        return {"cohort": cohort, "cleared": cleared, "measured_mbit_before": before, "measured_mbit_after": after}

    def _link(self, link: Any) -> dict[str, Any]:
        state, topology, _ = running_network(self.config)
        ends, configured = link_ends(topology, link.a, link.b)
        # Measure through the link where it carries a cohort's FL traffic: from a client at one end,
        # or to a server at one end.
        hosts = {h.name: h for h in topology.hosts}
        measured = next((hosts[n] for n in (link.a, link.b) if n in hosts and hosts[n].role in ("fl-client", "fl-server")), None)
        probe = None
        if measured is not None:
            cohort = measured.campus if measured.role == "fl-client" else measured.cohort
            probe = self._probe(int(cohort or 0), measured.name if measured.role == "fl-client" else None)
        effect: dict[str, Any] = {"link": f"{link.a}-{link.b}", "configured_mbit": configured}
        with contextlib.ExitStack() as stack:
            if probe is not None:
                stack.enter_context(probe)
                effect.update(client=probe.client.name, server=probe.server.name, **_around(probe, link.state, "before"))
            effect["before"] = read_link(state, ends)
            if link.rate is not None:
                set_link(state, ends, rate_mbit=parse_rate_kbps(link.rate) / 1000)
                self.undo.append(lambda: set_link(state, ends, rate_mbit=configured) if configured else remove_shaping(state, ends))
            else:
                set_link(state, ends, up=link.state == "up")
                self.undo.append(lambda: set_link(state, ends, up=True))
            effect["after"] = read_link(state, ends)
            if probe is not None:
                effect.update(_around(probe, link.state, "after"))
        return effect

    def _trace(self, trace: Any) -> dict[str, Any]:
        started = start_trace(self.config, trace.a, trace.b, trace.file, loop=trace.loop)
        self.undo.append(lambda: stop_traces(self.config, trace.a, trace.b))
        return started

    def _cpu(self, cpu: Any) -> dict[str, Any]:
        state, _, _ = running_network(self.config)
        before = read_cpu_limit(state, cpu.host)
        set_cpu(state, cpu.host, cpu.cpus)
        self.undo.append(lambda: set_cpu(state, cpu.host, before))
        return {"host": cpu.host, "cpus_before": before, "cpus_after": read_cpu_limit(state, cpu.host)}

    def _background(self, background: Any) -> dict[str, Any]:
        state, topology, state_dir = running_network(self.config)
        before = (state.extra.get("background") or {}).get("rate")
        if background.rate == "off":
            stopped = stop_background(state, state_dir)
            effect: dict[str, Any] = {"rate": "off", "stopped": stopped}
        else:
            started = start_background(state, topology, self.config, state_dir, background.rate, background.pattern,
                                       background.period, self.config.fl.seed)
            effect = {**started, "measured_mbit": background_mbit(state)}

        def restore() -> None:
            current, _, directory = running_network(self.config)
            if before:
                start_background(current, topology, self.config, directory, before)
            else:
                stop_background(current, directory)

        self.undo.append(restore)
        return {**effect, "rate_before": before}

    def init(self, init: Any) -> dict[str, Any]:
        """`mlfo init` for this run: CPU limits of the FL servers (and clients), background traffic, link changes; undone
        after it."""
        state, topology, _ = running_network(self.config)
        limits = {}
        for host in topology.hosts:
            if host.role == "fl-server" or (init.clients and host.role == "fl-client"):
                limits[host.name] = self._cpu(Cpu(host=host.name, cpus=init.cpus if init.cpus is not None else host.cpus))
            elif host.role == "fl-aggregator" and host.cpus:  # an edge aggregator: the CPU its topology gives it
                limits[host.name] = self._cpu(Cpu(host=host.name, cpus=host.cpus))
        background = self._background(Background(rate=init.background)) if init.background else None
        links = [self._link(link) for link in init.links]
        return {"cpu_limits": {name: effect["cpus_after"] for name, effect in limits.items()}, "background": background,
                **({"links": links} if links else {})}

    def profiles(self, spec: ProfileSpec, seed: int) -> dict[str, Any]:
        """Every FL client's device profile for this run: its CPU limit and access link rate; undone after it."""
        state, topology, _ = running_network(self.config)
        clients = topology.fl_clients()
        assigned = assign_profiles(spec, [h.name for h in clients], seed)
        for host in clients:
            profile = assigned[host.name]
            self._cpu(Cpu(host=host.name, cpus=profile.cpus))
            if profile.memory_mb is not None:
                before = read_memory(state, host.name)
                set_memory(state, host.name, profile.memory_mb)
                self.undo.append(functools.partial(set_memory, state, host.name, before))
            if profile.link_mbit is not None:
                ends, configured = link_ends(topology, host.name, host.switch)
                set_link(state, ends, rate_mbit=profile.link_mbit)
                self.undo.append(functools.partial(_link_back, state, ends, configured))
        record = profiles_record(spec, assigned)
        for host in clients:
            record["clients"][host.name]["ip"] = host.ip
        return record

    def restore(self) -> list[str]:
        """Undo the run's network changes, newest first; what could not be undone."""
        problems = []
        while self.undo:
            step = self.undo.pop()
            try:
                step()
            except MlfoError as err:
                problems.append(err.message)
            except OSError as err:
                problems.append(str(err))
        return problems


def _link_back(state: Any, ends: list[Any], configured: float | None) -> None:
    """A link's rate as the topology configured it (or unshaped, if it did not)."""
    if configured:
        set_link(state, ends, rate_mbit=configured)
    else:
        remove_shaping(state, ends)


LINK_UP_SECONDS = 5.0


def _around(probe: Any, state: str | None, key: str) -> dict[str, Any]:
    """The probe's reading on one side of a link change: throughput, or (for down / up) whether it reaches."""
    if state is None:
        return {f"measured_mbit_{key}": probe.measure()}
    # After a link came up, give it LINK_UP_SECONDS to carry traffic again; a link that went down is judged at once.
    return {f"reaches_{key}": probe.reaches(within=LINK_UP_SECONDS if (state, key) == ("up", "after") else 0.0)}

