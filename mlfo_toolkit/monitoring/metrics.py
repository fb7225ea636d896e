"""Prometheus metrics of mlfo's services: one registry per service, values computed at scrape time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from mlfo_toolkit.fl.anatomy import PHASES
from mlfo_toolkit.monitoring.sockets import ByteTotals, TcpConnection, tcp_connections

ORCHESTRATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)


class ServiceMetrics:
    """The registry of one HTTP service and the metrics every service has (HTTP traffic)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter("mlfo_http_requests", "HTTP requests served", ["service", "status"], registry=self.registry)
        self.http_in = Counter("mlfo_http_request_bytes", "Bytes of HTTP request bodies received", ["service"], registry=self.registry)
        self.http_out = Counter("mlfo_http_response_bytes", "Bytes of HTTP response bodies sent", ["service"], registry=self.registry)

    def observe_http(self, status: int, request_bytes: int, response_bytes: int) -> None:
        self.http_requests.labels(self.service, str(status)).inc()
        self.http_in.labels(self.service).inc(request_bytes)
        self.http_out.labels(self.service).inc(response_bytes)

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)


class MlfoMetrics(ServiceMetrics):
    """What an MLFO counts: intents, rejections by reason, orchestration time, Mo-Mo calls."""

    def __init__(self, role: str) -> None:
        super().__init__(f"{role} MLFO")
        self.role = role
        self.intents = Counter("mlfo_intents_received", "Intents received", ["role"], registry=self.registry)
        self.rejected = Counter("mlfo_intents_rejected", "Intents rejected, by reason", ["role", "reason"], registry=self.registry)
        self.orchestration = Histogram(
            "mlfo_orchestration_seconds", "Time from an intent to its FL clients started", ["role"],
            buckets=ORCHESTRATION_BUCKETS, registry=self.registry,
        )
        self.momo = Counter("mlfo_momo_calls", "Mo-Mo calls (campus: sent, cloud: served), by result", ["role", "result"], registry=self.registry)
        self.store_errors = Counter("mlfo_store_errors", "Writes to the MLFO's store that failed (disk full, read-only)", ["role"],
                                    registry=self.registry)
        self.recovered = Counter("mlfo_recovered", "What an MLFO set right after a restart or a lost answer, by action",
                                 ["role", "action"], registry=self.registry)
        self.actions = Counter("mlfo_assurance_actions", "Actions the closed loop carried out, by kind", ["action"],
                               registry=self.registry)
        self.queued = Gauge("mlfo_queued_deployments", "Deployments waiting for a free FL server", ["role"], registry=self.registry)


class DeploymentStates(Collector):
    """mlfo_deployments{state}: how many deployments are in each state."""

    def __init__(self, states: Callable[[], list[str]]) -> None:
        self.states = states

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("mlfo_deployments", "Deployments by state", labels=["state"])
        counts = {state: 0 for state in ("planned", "queued", "deploying", "running", "done", "failed")}
        for state in self.states():
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


ASSURANCE_STATES = ("on_track", "at_risk", "met", "missed")


@dataclass(frozen=True)
class AssuredDeployment:
    """What the assurance metrics show of one deployment with a target."""

    cohort: str
    deployment: str
    metric: str
    value: float | None
    state: str | None  # on_track, at_risk, met, missed (None: not assessed yet)


class AssuranceStates(Collector):
    """mlfo_intent_target{cohort,deployment,metric}: the value each deployment must reach;
    mlfo_intent_target_met{cohort,deployment}: 1 once it was reached;
    mlfo_assurance_state{cohort,deployment,state}: 1 for the state the closed loop last assessed."""

    def __init__(self, deployments: Callable[[], list[AssuredDeployment]]) -> None:
        self.deployments = deployments

    def collect(self) -> Iterable[Metric]:
        target = GaugeMetricFamily("mlfo_intent_target", "The value an intent's target asks for", labels=["cohort", "deployment", "metric"])
        met = GaugeMetricFamily("mlfo_intent_target_met", "1 once a deployment reached its target's value",
                                labels=["cohort", "deployment"])
        state = GaugeMetricFamily("mlfo_assurance_state", "1 for a deployment's assurance state (on_track, at_risk, met, missed)",
                                  labels=["cohort", "deployment", "state"])
        for d in self.deployments():
            if d.value is not None:
                target.add_metric([d.cohort, d.deployment, d.metric], d.value)
                met.add_metric([d.cohort, d.deployment], 1.0 if d.state == "met" else 0.0)
            if d.state is not None:
                for name in ASSURANCE_STATES:
                    state.add_metric([d.cohort, d.deployment, name], 1.0 if name == d.state else 0.0)
        yield from (target, met, state)


# Listing a process's descendants reads every process on the machine (/proc/*/stat): an FL server's tree (its
# SuperLink, SuperExec, ServerApp) changes at its start and end, not between two polls of its agent.
TREE_REUSE_SECONDS = 5.0
_trees: dict[int, tuple[float, list[psutil.Process]]] = {}
_trees_lock = threading.Lock()


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (Flower detaches some: the parent link still holds), at most
    TREE_REUSE_SECONDS old."""
    now = time.monotonic()
    with _trees_lock:
        taken, tree = _trees.get(pid, (0.0, []))
        if now - taken < TREE_REUSE_SECONDS and tree and tree[0].is_running():
            return tree
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        tree = []
    with _trees_lock:
        for old in [p for p, (t, _) in _trees.items() if now - t >= TREE_REUSE_SECONDS]:
            del _trees[old]
        if tree:
            _trees[pid] = (now, tree)
    return tree


def _cpu_and_memory(processes: list[psutil.Process]) -> tuple[float, int]:
    cpu, memory = 0.0, 0
    for proc in processes:
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system
            memory += proc.memory_info().rss
        except psutil.Error:
            continue
    return cpu, memory


@dataclass
class FlowTraffic:
    """One FL process's connections at a sample, and its bytes accumulated so far."""

    side: str
    deployment: str
    cohort: str
    connections: list[TcpConnection]
    bytes_sent: int
    bytes_received: int
    processes: list[psutil.Process]
    tier: str = "global"  # hierarchical FL: edge for an edge run and the clients under it, global for the rest


class AgentCollector(Collector):
    """An agent's FL processes: model_loss / model_accuracy per round, TCP stats, bytes, CPU, memory."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def describe(self) -> Iterable[Metric]:
        # Registering must not sample the agent (prometheus_client collects once unless told what to expect).
        return []

    def collect(self) -> Iterable[Metric]:
        labels = ["deployment", "cohort", "side"]
        accuracy = GaugeMetricFamily("model_accuracy", "Held-out accuracy of the global model after the last round", labels=labels[:2])
        loss = GaugeMetricFamily("model_loss", "Held-out loss of the global model after the last round", labels=labels[:2])
        round_ = GaugeMetricFamily("mlfo_fl_round", "Last finished FL round", labels=labels[:2])
        flow_labels = [*labels, "tier"]
        rtt = GaugeMetricFamily("mlfo_tcp_rtt_seconds", "Smoothed RTT of FL connections", labels=[*flow_labels, "peer"])
        cwnd = GaugeMetricFamily("mlfo_tcp_cwnd_segments", "Congestion window of FL connections", labels=[*flow_labels, "peer"])
        rate = GaugeMetricFamily("mlfo_tcp_delivery_rate_bytes", "Delivery rate of FL connections (bytes/s)", labels=[*flow_labels, "peer"])
        sent = CounterMetricFamily("mlfo_fl_bytes_sent", "Bytes sent on FL connections", labels=flow_labels)
        received = CounterMetricFamily("mlfo_fl_bytes_received", "Bytes received on FL connections", labels=flow_labels)
        cpu = CounterMetricFamily("mlfo_fl_process_cpu_seconds", "CPU time of the Flower processes", labels=flow_labels)
        memory = GaugeMetricFamily("mlfo_fl_process_memory_bytes", "Resident memory of the Flower processes", labels=flow_labels)
        for flow in self.agent.traffic():
            values = [flow.deployment, flow.cohort, flow.side, flow.tier]
            for c in flow.connections:
                rtt.add_metric([*values, c.peer], c.rtt_seconds)
                cwnd.add_metric([*values, c.peer], c.cwnd)
                rate.add_metric([*values, c.peer], c.delivery_rate_bytes)
            sent.add_metric(values, flow.bytes_sent)
            received.add_metric(values, flow.bytes_received)
            cpu_seconds, rss = _cpu_and_memory(flow.processes)
            cpu.add_metric(values, cpu_seconds)
            memory.add_metric(values, rss)
        phases = HistogramMetricFamily(
            "mlfo_fl_round_phase_seconds", "Seconds each FL round spent per phase (see README: round anatomy)",
            labels=[*labels[:2], "phase"],
        )
        short = CounterMetricFamily("mlfo_fl_short_rounds", "Rounds that got fewer results than they sampled", labels=labels[:2])
        for deployment, cohort, status in self.agent.runs():
            if status.get("tier") == "edge":
                continue  # an edge run's local rounds: not the cohort's model (its bytes and CPU are counted above, tier=edge)
            if status["rounds"]:
                last = status["rounds"][-1]
                accuracy.add_metric([deployment, cohort], last["accuracy"])
                loss.add_metric([deployment, cohort], last["loss"])
                round_.add_metric([deployment, cohort], last["round"])
            for phase in PHASES:
                seconds = [r["phases"][phase] for r in status["rounds"] if r.get("phases")]
                buckets, total = histogram_buckets(seconds, PHASE_BUCKETS)
                phases.add_metric([deployment, cohort, phase], buckets, total)
            short.add_metric([deployment, cohort], sum(1 for r in status["rounds"] if r.get("results", 0) < r.get("sampled", 0)))
        yield from (accuracy, loss, round_, rtt, cwnd, rate, sent, received, cpu, memory, phases, short)


PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def histogram_buckets(values: list[float], bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (and the sum) of `values`, recomputed at each scrape from the run's record."""
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in bounds]
    buckets.append(("+Inf", float(len(values))))
    return buckets, float(sum(values))


class SocketCollector(Collector):
    """TCP statistics of the connections to or from one port (the prototype's ss exporter, e.g. for the
    background app's iperf3 flow), labelled app=..."""

    def __init__(self, app: str, port: int) -> None:
        self.app = app
        self.port = port
        self.totals = ByteTotals()

    def collect(self) -> Iterable[Metric]:
        labels = ["app", "peer"]
        rtt = GaugeMetricFamily("mlfo_app_tcp_rtt_seconds", "Smoothed RTT of the app's connections", labels=labels)
        cwnd = GaugeMetricFamily("mlfo_app_tcp_cwnd_segments", "Congestion window of the app's connections", labels=labels)
        sent = CounterMetricFamily("mlfo_app_bytes_sent", "Bytes the app's connections sent", labels=["app"])
        received = CounterMetricFamily("mlfo_app_bytes_received", "Bytes the app's connections received", labels=["app"])
        # The app's own end of each flow: on loopback both ends are visible, count one.
        chosen = [c for c in tcp_connections() if c.peer_port == self.port]
        for c in chosen:
            rtt.add_metric([self.app, c.peer], c.rtt_seconds)
            cwnd.add_metric([self.app, c.peer], c.cwnd)
        total_sent, total_received = self.totals.update(chosen)
        sent.add_metric([self.app], total_sent)
        received.add_metric([self.app], total_received)
        yield from (rtt, cwnd, sent, received)
