"""The MLFOs' records, typed: a deployment with its clients, FL server and rounds, and a cloud allocation.

They are kept in the store and served by the APIs as JSON (`to_json()`), in the same shape the
prototype-era dictionaries had; unknown keys of older records are kept (`extra="allow"`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# planned: accepted; queued: waiting for a free FL server; deploying; running; done or failed, with a reason.
DeploymentState = Literal["planned", "queued", "deploying", "running", "done", "failed"]
DEPLOYMENT_STATES: tuple[DeploymentState, ...] = ("planned", "queued", "deploying", "running", "done", "failed")
TERMINAL_STATES: tuple[DeploymentState, ...] = ("done", "failed")
# planned: not started yet; starting: its agent was asked; running; lost: its SuperNode or agent is gone;
# failed: it never started; stopped: its deployment ended and it was stopped; spare: its part is not run
# (beyond the intent's client cap, or taken out), its host free for the closed loop to use.
# auto: the MLFO measures each edge and places an aggregator where its placement policy says it pays.
Aggregation = Literal["flat", "hierarchical", "auto"]
AGGREGATIONS: tuple[Aggregation, ...] = ("flat", "hierarchical", "auto")
# An edge aggregator: planned, starting (its edge run, clients and relay being started), running, failed
# (it never started, see error), stopped (its deployment ended).
# lost: it died mid-run (its edge run or relay exited, or its agent went silent); its clients were re-homed
# to the global server or dropped (placement.on_edge_lost).
TierState = Literal["planned", "starting", "running", "failed", "stopped", "lost"]
ClientState = Literal["planned", "starting", "running", "lost", "failed", "stopped", "spare"]


class Record(BaseModel):
    """Base of every record: plain JSON in and out, unknown keys of older versions kept."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ClientRestart(Record):
    """A lost client started again: what it was before, and when it was restarted."""

    restarted_at: float
    agent: str | None = None  # where it ran before, when it was started on another host
    node_id: int | None = None
    name: str | None = None
    pid: int | None = None
    lost_at: float | None = None
    lost_reason: str | None = None
    error: str | None = None


class ClientRecord(Record):
    """One FL client of a deployment: the agent that runs it and its SuperNode."""

    agent: str
    part: int
    state: ClientState = "planned"
    error: str | None = None
    name: str | None = None  # the agent's name for it (also its registration with the shared executor)
    pid: int | None = None  # its SuperNode
    since: float | None = None
    ready_seconds: float | None = None
    lost_at: float | None = None
    lost_reason: str | None = None
    silent_since: float | None = None  # its agent has not answered since then
    node_id: int | None = None  # its SuperNode's id at the SuperLink (Flower's), once known
    restarts: list[ClientRestart] = Field(default_factory=list)


class FlRound(Record):
    """One finished FL round as the FL server reported it (accuracy and loss on the held-out split)."""

    round: int
    loss: float | None = None
    accuracy: float | None = None
    time: float | None = None
    sampled: int | None = None
    results: int | None = None
    failures: int | None = None
    phases: dict[str, float] | None = None
    client_train_seconds: dict[str, float] | None = None  # partition id -> its training seconds this round
    held_seconds: float | None = None  # the round waited this long for the MLFO (an experiment's events) before it started

    @property
    def short(self) -> bool:
        """Fewer results than clients sampled."""
        return self.sampled is not None and (self.results or 0) < self.sampled


class ServerRecord(Record):
    """The FL server the cloud MLFO gave a deployment."""

    server: str  # HOST:PORT clients connect to
    agent: str
    shared_with: str | None = None
    pid: int | None = None


class DeploymentParams(Record):
    """What the FL run was asked to be (the /receive form with the config's defaults filled in)."""

    ipstart: int
    cohortsize: int
    sameserver: bool = False
    strategy: str
    fraction_fit: float
    min_fit: int
    min_available: int
    rounds: int
    seed: int | None = None  # None: the agents' fl.seed
    round_timeout: float | None = None  # None: the agents' fl.round_timeout
    partition: dict[str, Any] | None = None  # None: the agents' fl.partitioning (a PartitionSpec's fields)
    aggregation: Aggregation = "flat"  # hierarchical: an edge aggregator per group of clients (mlfo_toolkit.fl.edge)
    edges: int | None = None  # hierarchical: how many edges the clients are split into
    local_rounds: int = 1  # hierarchical: the edges' local rounds per global round


class EdgeTier(Record):
    """One edge of a hierarchical deployment: its aggregator (an edge SuperLink and a relay SuperNode of the
    global SuperLink, on one agent) and the client parts under it."""

    edge: int  # 0 ..; also the relay's part among the global server's clients
    agent: str  # the aggregator's agent
    parts: list[int]  # the deployment's client parts that train under it
    name: str | None = None  # the network's name for the edge (ip_plan.edges)
    kind: str | None = None  # its backhaul's kind, as declared
    link: dict[str, Any] | None = None  # its backhaul as declared: bandwidth_mbit, delay_ms
    state: TierState = "planned"
    server: str | None = None  # the edge SuperLink, HOST:PORT, which its clients connect to
    pid: int | None = None  # the edge SuperLink
    relay: str | None = None  # the relay SuperNode's name on the agent
    relay_pid: int | None = None
    relay_node_id: int | None = None  # the relay's SuperNode id at the global SuperLink, once known
    error: str | None = None
    silent_since: float | None = None  # its agent has not answered since then
    lost_at: float | None = None
    handled: str | None = None  # what the MLFO did when it was lost: rehome or drop
    parts_before: list[int] = Field(default_factory=list)  # its client parts before it was lost
    traffic: dict[str, Any] | None = None  # its edge SuperLink's FL bytes so far (bytes_sent, bytes_received), as last seen


MAX_DECISIONS = 500  # decisions kept in a deployment record (a long, noisy run flips on_track / at_risk often)


class Decision(Record):
    """One turn of the closed loop: what the MLFO saw, how the deployment stood, which rule fired, what was
    done (each action: done, refused by its bound, or failed), and what came of it by the next round."""

    at: float
    round: int
    trigger: str  # start, round or lost
    policy: str
    observed: dict[str, Any] = Field(default_factory=dict)
    assessment: dict[str, Any] | None = None  # {state, reason}
    rules: list[str] = Field(default_factory=list)
    actions: list[dict[str, Any]] = Field(default_factory=list)  # {kind, ..., status, detail}
    error: str | None = None  # the policy failed or answered nonsense: the deployment went on under none
    outcome: str | None = None


class Deployment(Record):
    """One intent's deployment on the campus MLFO: an FL server, its clients, and the run's rounds."""

    id: str
    name: str
    intent_id: str
    intent: dict[str, Any]
    pipeline: dict[str, Any]
    params: DeploymentParams
    state: DeploymentState
    reason: str | None = None
    created: float
    updated: float
    server: ServerRecord | None = None
    clients: list[ClientRecord] = Field(default_factory=list)
    tiers: list[EdgeTier] = Field(default_factory=list)  # hierarchical: the edges, each with its aggregator and parts
    rounds: list[FlRound] = Field(default_factory=list)
    initial: dict[str, Any] | None = None  # the initial model's evaluation (round 0)
    traffic: dict[str, Any] | None = None
    short_rounds: list[int] = Field(default_factory=list)
    orchestration_seconds: float | None = None
    client_ready_seconds: dict[str, float | None] | None = None
    finished: float | None = None
    memory_mb: int | None = None
    queue: dict[str, Any] | None = None  # while queued: position (1 = next), since, estimated wait
    released: bool | None = None  # its FL server given back to the cloud MLFO (None: it never had one)
    policy: str | None = None  # the closed loop's policy for it
    assurance_settings: dict[str, Any] | None = None  # thresholds the intent's sender set (over the config's)
    target: dict[str, Any] | None = None  # what the MLFO reads from the intent (Target)
    assurance: dict[str, Any] | None = None  # {state: on_track|at_risk|met|missed, reason, since}
    decisions: list[Decision] = Field(default_factory=list)
    decisions_dropped: int = 0  # the oldest decisions without an action, dropped past MAX_DECISIONS
    control: dict[str, Any] | None = None  # the run's current settings, as its ServerApp reads them

    def round_seconds(self) -> list[float | None]:
        """Wall seconds of each round: from the previous round's evaluation (round 0: the initial one) to its own."""
        times = [r.time for r in sorted(self.rounds, key=lambda r: r.round)]
        previous = [(self.initial or {}).get("time"), *times[:-1]]
        return [round(t - p, 3) if t is not None and p is not None else None for t, p in zip(times, previous)]

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def settled(self) -> bool:
        """Ended, and its ending done: its FL server given back (if it had one), no client or edge aggregator left
        running. Only then are its hosts free for another deployment's FL servers."""
        busy = ("running", "starting")
        return (self.ended and self.released is not False and not any(c.state in busy for c in self.clients)
                and not any(t.state in busy for t in self.tiers))

    def client(self, part: int) -> ClientRecord | None:
        return next((c for c in self.clients if c.part == part), None)

    def tier_of(self, part: int) -> EdgeTier | None:
        """The edge a client part trains under (None: it talks to the global FL server)."""
        return next((t for t in self.tiers if part in t.parts), None)

    def server_for(self, part: int) -> str | None:
        """The FL server (HOST:PORT) client `part` connects to: its edge's, or the deployment's."""
        tier = self.tier_of(part)
        if tier is not None:
            return tier.server
        return self.server.server if self.server else None

    def summary(self) -> dict[str, Any]:
        """The short form of `GET /deployments?view=summary`."""
        return {
            **{k: getattr(self, k) for k in ("id", "name", "intent_id", "state", "reason", "created", "updated", "finished")},
            "clients": len(self.clients),
            "rounds": len(self.rounds),
            "accuracy": self.rounds[-1].accuracy if self.rounds else None,
        }


class Allocation(Record):
    """An FL server of the cloud MLFO's pool given to a deployment (or shared with an earlier one)."""

    deployment: str
    agent: str
    server: str | None = None
    active: bool = True
    intent_id: str = ""
    created: float
    shares: str | None = None  # the deployment whose server this one shares
