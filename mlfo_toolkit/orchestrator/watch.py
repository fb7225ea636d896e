"""Following a running deployment: its FL server's rounds from the server's agent, its clients from theirs.

A client whose SuperNode exited, or whose agent stays silent for `mlfo.lost_after_seconds`, is marked
lost; the deployment ends when the FL run ends, or fails when the FL server is gone or silent.

The server's agent is asked to answer when the next round ends (`GET /status?rounds_after=N&wait=S`), so that
the closed loop takes each round as it ends, however short the rounds: polled every `mlfo.poll_seconds`, a
loop saw sub-second rounds late, or two at once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import MlfoError, SlowAnswerError, StorageError
from mlfo_toolkit.orchestrator.api_clients import AgentPool
from mlfo_toolkit.orchestrator.deployments import DeploymentTable
from mlfo_toolkit.orchestrator.loop import AssuranceLoop
from mlfo_toolkit.orchestrator.records import TERMINAL_STATES, ClientRecord, EdgeTier, FlRound
from mlfo_toolkit.orchestrator.tiers import edge_traffic

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30.0  # the longest an FL server's agent is asked to hold its answer (the agent's own limit)
Finish = Callable[[str, str, "str | None"], None]
EdgeLost = Callable[[str, int], None]


class DeploymentWatch:
    """The campus MLFO's watch over running deployments; `follow(id)` runs until that deployment ends."""

    def __init__(self, config: Config, table: DeploymentTable, finish: Finish, loop: AssuranceLoop | None = None,
                 edge_lost: EdgeLost | None = None) -> None:
        self.config = config
        self.table = table
        self.finish = finish
        self.loop = loop
        self.edge_lost = edge_lost
        self.stopping = threading.Event()
        # Polled every second (servers) or every client_check_seconds (clients, edges): connections and threads are
        # kept, not made anew for each poll.
        self.agents = AgentPool(config, timeout=min(config.api.timeout_seconds, config.mlfo.lost_after_seconds / 2))
        self._checks = ThreadPoolExecutor(max_workers=16, thread_name_prefix="check")
        self._asking: set[threading.Event] = set()  # the asks in flight, each ended at once by close()
        self._asking_lock = threading.Lock()

    def stop(self) -> None:
        """Stop following: each follow() returns at once, or after the turn it is in (an ask in flight is given up)."""
        with self._asking_lock:
            self.stopping.set()
            for asking in self._asking:
                asking.set()

    def close(self) -> None:
        """Stop following and drop the kept connections and threads."""
        self.stop()
        self._checks.shutdown(wait=False, cancel_futures=True)
        self.agents.close()

    def follow(self, deployment_id: str) -> None:
        """Follow the FL run on the server's agent until it ends; record rounds and lost clients as they come.

        Nothing ends this thread silently: a store it cannot write, or any other error, ends the deployment
        failed with the reason (its clients and server are stopped)."""
        try:
            self._follow(deployment_id)
        except StorageError as err:
            self.finish(deployment_id, "failed", f"the MLFO could not record the run: {err.message}")
        except Exception as err:
            log.exception("watching deployment %s", deployment_id)
            self.finish(deployment_id, "failed", f"internal error in the MLFO while watching the run: {err}")

    def _turn(self, deployment_id: str, trigger: str) -> None:
        """One turn of the closed loop after a round or a lost client."""
        loop = self.loop
        if loop is not None:
            _ask_loop(lambda: loop.step(deployment_id, trigger), deployment_id, trigger)

    def _conclude(self, deployment_id: str) -> str | None:
        """The closed loop's last word on a run that went all its rounds: its target met or missed."""
        loop = self.loop
        return _ask_loop(lambda: loop.conclude(deployment_id), deployment_id, "end") if loop is not None else None

    def _follow(self, deployment_id: str) -> None:
        cfg = self.config.mlfo
        seen_rounds = len(self.table.get(deployment_id).rounds)
        self._turn(deployment_id, "start" if not seen_rounds else "round")
        last_contact = time.monotonic()
        next_client_check = time.monotonic() + cfg.client_check_seconds
        while not self.stopping.is_set():
            record = self.table.get(deployment_id)
            if record.ended or record.server is None:
                return
            agent = self.agents.get(record.server.agent)
            # The server's agent holds its answer until a round after the last one seen ends (or the run does), so the
            # closed loop acts on each round as it ends; at most until the clients' next check, and never so long that
            # a silent agent is noticed much later than lost_after_seconds.
            wait = min(max(0.0, next_client_check - time.monotonic()), cfg.lost_after_seconds / 2, MAX_WAIT_SECONDS)
            asked = time.monotonic()
            try:
                status = self._ask(functools.partial(agent.status, rounds_after=seen_rounds, wait=wait)) if wait > 0 else agent.status()
                last_contact = time.monotonic()
            except _Closed:
                return
            except MlfoError as err:
                silent = time.monotonic() - last_contact
                if silent >= lost_after(self.config, err):
                    self.finish(deployment_id, "failed",
                                f"lost contact with the FL server's agent {record.server.agent} for {silent:.0f} s: {err.message}")
                    return
                self.stopping.wait(cfg.poll_seconds)
                continue
            server = status.get("server") or {}
            if server.get("address") != record.server.server:
                self.finish(deployment_id, "failed", "the FL server is no longer running on its agent")
                return
            rounds = [FlRound.model_validate(r) for r in server.get("rounds", [])]
            self.table.update(deployment_id, rounds=rounds, initial=server.get("initial"), traffic=server.get("traffic"),
                              short_rounds=[r.round for r in rounds if r.short], control=server.get("control"))
            new_round = len(rounds) > seen_rounds and server.get("state") not in TERMINAL_STATES
            if new_round:
                # The loop's turn first, then the clients' check: the next round is already under way, and a decision
                # (a stop) that lands after it is a round late.
                seen_rounds = len(rounds)
                self._turn(deployment_id, "round")
            lost = []
            if time.monotonic() >= next_client_check:
                if record.tiers:
                    for edge in self.check_tiers(deployment_id):
                        if self.edge_lost is not None:
                            self.edge_lost(deployment_id, edge)
                lost = self.check_clients(deployment_id)
                next_client_check = time.monotonic() + cfg.client_check_seconds
            if server.get("state") in TERMINAL_STATES:
                reason = server.get("reason")
                if server["state"] == "done":
                    reason = reason or self._conclude(deployment_id)
                self.finish(deployment_id, server["state"], reason)
                return
            if lost:
                self._turn(deployment_id, "lost")
            elif not new_round and wait > 0 and (early := time.monotonic() - asked) < min(wait, cfg.poll_seconds):
                # Nothing new, yet answered at once: an agent that does not wait. Ask it every poll_seconds.
                self.stopping.wait(cfg.poll_seconds - early)

    def _ask(self, call: Callable[[], T]) -> T:
        """`call()` on a thread of its own, given up (`_Closed`) as soon as the watch closes: an ask that waits for
        the next round holds its thread for seconds, and closing the MLFO must not wait for it."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["answer"] = call()
            except BaseException as err:  # handed to the asking thread
                box["error"] = err
            finally:
                done.set()

        with self._asking_lock:
            if self.stopping.is_set():
                raise _Closed
            self._asking.add(done)
        try:
            threading.Thread(target=run, name="ask-agent", daemon=True).start()
            done.wait()
        finally:
            with self._asking_lock:
                self._asking.discard(done)
        if "error" in box:
            raise box["error"]
        if "answer" not in box:
            raise _Closed
        answer: T = box["answer"]
        return answer

    def check_clients(self, deployment_id: str) -> list[int]:
        """Ask each client's agent about its SuperNode; a gone one (or a silent agent) shows `lost`. Returns the
        parts seen lost now."""
        if self.stopping.is_set():
            return []  # closing: the kept threads are gone
        clients = self.table.get(deployment_id).clients
        before = {c.part for c in clients if c.state == "lost"}

        def check(client: ClientRecord) -> None:
            if client.state not in ("running", "lost") or client.lost_reason == "exited":
                return
            try:
                status = self.agents.get(client.agent).status()
            except MlfoError as err:
                if client.silent_since is None:
                    client.silent_since = time.time()
                silent = time.time() - client.silent_since
                if silent >= lost_after(self.config, err) and client.state != "lost":
                    _lost(client, "unreachable", f"its agent has not answered for {silent:.0f} s: {err.message}")
                return
            client.silent_since = None
            mine: dict[str, Any] | None = next((c for c in status.get("clients", []) if c.get("name") == client.name), None)
            if mine is not None and isinstance(mine.get("node_id"), int):
                client.node_id = mine["node_id"]
            if mine is None:
                _lost(client, "exited", "its agent no longer runs this client (agent restarted?)")
            elif mine.get("state") != "running":
                _lost(client, "exited", f"its SuperNode exited with code {mine.get('returncode')}: {mine.get('log_tail') or ''}".strip())
            elif client.state == "lost":
                client.state, client.error, client.lost_at, client.lost_reason = "running", None, None, None

        list(self._checks.map(check, clients))
        with self.table.edit(deployment_id) as record:
            if record.ended:
                return []
            # A client restarted while the agents were asked keeps its new record.
            record.clients = [checked if checked.name == fresh.name else fresh for checked, fresh in zip(clients, record.clients)]
            return [c.part for c in record.clients if c.state == "lost" and c.part not in before]


    def check_tiers(self, deployment_id: str) -> list[int]:
        """Ask each edge aggregator's agent about its edge run and relay; return the edges seen lost now (their
        edge run or relay exited, or their agent was silent for mlfo.lost_after_seconds)."""
        if self.stopping.is_set():
            return []
        tiers = [t for t in self.table.get(deployment_id).tiers if t.state == "running"]
        found: dict[int, tuple[str | None, int | None, float | None]] = {}  # edge -> (why lost, relay node id, silent since)
        traffic: dict[int, dict[str, Any]] = {}  # edge -> its edge SuperLink's bytes so far

        def check(tier: EdgeTier) -> None:
            try:
                status = self.agents.get(tier.agent).status()
            except MlfoError as err:
                since = tier.silent_since or time.time()
                silent = time.time() - since
                why = f"its agent has not answered for {silent:.0f} s: {err.message}" if silent >= lost_after(self.config, err) else None
                found[tier.edge] = (why, tier.relay_node_id, since)
                return
            server = status.get("server") or {}
            seen = edge_traffic(status, tier)
            if seen is not None:
                traffic[tier.edge] = seen
            relay = next((c for c in status.get("clients", []) if c.get("name") == tier.relay), None)
            node_id = relay.get("node_id") if relay and isinstance(relay.get("node_id"), int) else tier.relay_node_id
            why = None
            if server.get("address") != tier.server or server.get("state") == "failed":
                why = f"its edge run is gone: {server.get('reason') or 'no FL server on its agent'}"
            elif relay is None or relay.get("state") != "running":
                why = f"its relay to the global server exited: {(relay or {}).get('log_tail') or 'no such client on its agent'}"
            found[tier.edge] = (why, node_id, None)

        list(self._checks.map(check, tiers))
        lost = []
        with self.table.edit(deployment_id) as record:
            if record.ended:
                return []
            for edge, (why, node_id, silent_since) in found.items():
                tier = record.tiers[edge]
                if tier.state != "running":
                    continue
                tier.relay_node_id, tier.silent_since = node_id, silent_since
                tier.traffic = traffic.get(edge, tier.traffic)
                if why is not None:
                    tier.state, tier.error, tier.lost_at = "lost", why, time.time()
                    lost.append(edge)
        return lost


def lost_after(config: Config, err: MlfoError) -> float:
    """How long an agent may be silent before it counts as lost. One that took the connection and did not answer in
    time is busy (at 10 x 10 on two cores, FL server agents answered late while their hosts were saturated), and
    gets mlfo.busy_lost_after_seconds; one that cannot be reached, mlfo.lost_after_seconds."""
    mlfo = config.mlfo
    return max(mlfo.lost_after_seconds, mlfo.busy_lost_after_seconds) if isinstance(err, SlowAnswerError) else mlfo.lost_after_seconds


T = TypeVar("T")


def _ask_loop(call: Callable[[], T], deployment_id: str, when: str) -> T | None:
    """Ask the closed loop; its failure is logged and never ends the watch (a store it cannot write does)."""
    try:
        return call()
    except StorageError:
        raise
    except Exception:
        log.exception("the closed loop of deployment %s (%s)", deployment_id, when)
        return None


class _Closed(Exception):
    """The watch closed while an ask was in flight."""


def _lost(client: ClientRecord, reason: str, error: str) -> None:
    client.state, client.lost_at, client.lost_reason, client.error = "lost", time.time(), reason, error
