"""Wake-ups between a ServerApp, its SuperNodes and the executor: a woken wait ends at once, an unwoken one
waits its full time, a dead receiver is skipped and its socket removed, and the packed model is the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlfo_toolkit.fl import models
from mlfo_toolkit.fl.executor import Executor, Registration, register
from mlfo_toolkit.fl.polls import REPLY_WAIT, PollClock
from mlfo_toolkit.fl.wake import (
    EXECUTOR_SOCKET,
    PLAIN,
    SERVER_SOCKET,
    TARGETED,
    Waker,
    WakeSocket,
    id_name,
    node_socket,
    remove_names_of,
    wake_dir,
)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return tmp_path / "wake" / "127.0.0.1_9092"


def test_a_woken_wait_ends_at_once_and_an_unwoken_one_waits(folder: Path) -> None:
    node = WakeSocket(node_socket(folder, 1234))
    waker = Waker(folder)
    started = time.monotonic()
    assert node.wait(0.3) == [] and time.monotonic() - started >= 0.29  # nobody woke it: the full wait
    assert waker.wake_nodes() == 1
    started = time.monotonic()
    assert node.wait(30) == [b"!"] and time.monotonic() - started < 1
    assert waker.has_nodes()
    node.close()
    assert not node_socket(folder, 1234).exists() and not waker.has_nodes()
    waker.close()


def test_a_socket_whose_process_died_is_skipped_and_removed(folder: Path) -> None:
    # A SuperNode killed by SIGKILL never removes its socket: the next wake-up finds nobody there.
    code = f"from mlfo_toolkit.fl.wake import WakeSocket; from pathlib import Path; WakeSocket(Path({str(folder)!r}) / 'node-1.sock')"
    subprocess.run([sys.executable, "-c", code + "; import os; os._exit(0)"], check=True)
    assert (folder / "node-1.sock").exists()
    live = WakeSocket(node_socket(folder, 2))
    waker = Waker(folder)
    assert waker.wake_nodes() == 1  # only the live one took it
    assert not (folder / "node-1.sock").exists() and live.wait(1) == [b"!"]
    assert waker.wake_server() is False  # no ServerApp waits here (yet): nothing happens
    live.close()
    waker.close()


def test_a_push_wakes_only_the_supernodes_it_sent_to_once_per_message(folder: Path) -> None:
    """A round samples 5 of 10 clients: the other 5 used to pull for nothing. Named by node ID, only the destinations are
    woken, one wake-up per message; a destination without a name (yet) means every SuperNode gets a plain one."""
    nodes = {node_id: WakeSocket(node_socket(folder, 100 + node_id)) for node_id in (1, 2, 3)}
    waker = Waker(folder)
    assert waker.wake_for([1, 2]) == 3  # nobody named yet: a plain wake-up for each of the three
    assert all(node.drain() == [PLAIN] for node in nodes.values())
    for node_id, node in nodes.items():
        node.name_as(id_name(node_id))
    assert waker.wake_for([2, 2, 3]) == 3
    assert nodes[1].wait(0.05) == [] and nodes[2].drain() == [TARGETED, TARGETED] and nodes[3].drain() == [TARGETED]
    assert waker.wake_for([1, 4]) == 3  # node 4 has no name here: everyone is woken plainly, not only node 1
    assert [node.drain() for node in nodes.values()] == [[PLAIN], [PLAIN], [PLAIN]]
    assert waker.wake_for([1, None]) == 3  # a message whose destination is not known: the same
    assert [node.drain() for node in nodes.values()] == [[PLAIN], [PLAIN], [PLAIN]]
    # A SuperNode killed by SIGKILL leaves its names; the executor that reaps it removes them with its socket.
    remove_names_of(folder, node_socket(folder, 103))
    node_socket(folder, 103).unlink()
    assert not (folder / id_name(3)).is_symlink() and (folder / id_name(1)).is_symlink()
    # A name left behind whose socket is gone: the wake-up falls back to all, and the dead name is removed.
    (folder / id_name(3)).symlink_to(node_socket(folder, 103).name)
    assert waker.wake_for([3]) == 2 and not (folder / id_name(3)).is_symlink()
    nodes[1].close()  # its own names go with it
    assert not (folder / id_name(1)).exists() and (folder / id_name(2)).is_symlink()
    for node in nodes.values():
        node.close()
    waker.close()


def test_a_supernode_woken_for_its_message_waits_for_the_next_instead_of_pulling_after_its_reply(folder: Path) -> None:
    """Flower's loop pulls again right after a reply went up and finds nothing (the ServerApp waits for the other
    replies). A SuperNode woken for its message waits for the next wake-up there; one sent two messages has two and
    pulls for each; one woken plainly pulls at once, as Flower does."""
    own = WakeSocket(node_socket(folder, os.getpid()))
    polls = PollClock(0, 30, _Clock(), wake=own, waker=Waker(folder), name="site-client-1")
    polls.named(7)
    assert os.readlink(folder / id_name(7)) == node_socket(folder, os.getpid()).name
    waker = Waker(folder)
    waker.wake_for([7, 7])  # two messages to this SuperNode in one push
    started = time.monotonic()
    polls.sleep(3)  # a pull found nothing: woken at once, by a wake-up for a message
    assert polls.targeted and time.monotonic() - started < 1
    polls.after_reply()  # its second wake-up is waiting: back to Flower's loop at once, to pull the second message
    assert polls.targeted and time.monotonic() - started < 1
    threading.Timer(0.3, waker.wake_for, args=([7],)).start()  # the next round's message, a while later
    waited = time.monotonic()
    polls.after_reply()
    assert 0.25 < time.monotonic() - waited < 5 and polls.targeted and polls.skipped_pulls == 2
    waker.wake_nodes()  # a plain wake-up (a destination without a name): Flower's pull after the reply stays
    polls.sleep(3)
    assert not polls.targeted
    waited = time.monotonic()
    polls.after_reply()
    assert time.monotonic() - waited < 0.05 and polls.skipped_pulls == 2
    own.close()
    waker.close()


def test_the_wake_folder_is_per_superlink_and_works_however_deep(tmp_path: Path) -> None:
    assert wake_dir("/tmp/x", "10.0.0.1:9092") == Path("/tmp/x/wake/10.0.0.1_9092")
    assert wake_dir("/tmp/x", "10.0.0.2:9092") != wake_dir("/tmp/x", "10.0.0.1:9092")
    assert wake_dir(None, "10.0.0.1:9092") is None and wake_dir("/tmp/x", "") is None
    # A run's folder is often deeper than a Unix socket's 108-byte path (bench runs were: no wake-ups, 3.6 s
    # rounds instead of 1.8): the sockets are reached through the folder held open.
    deep = wake_dir(tmp_path / ("d" * 100) / ("e" * 100), "127.0.0.1:45103")
    assert deep is not None and len(str(node_socket(deep, 4194304))) > 200
    node = WakeSocket(node_socket(deep, 1))
    waker = Waker(deep)
    assert waker.wake_nodes() == 1 and node.wait(1) == [b"!"]
    node.close()
    # The folder removed with its server and made again for the next one at the same address: the same
    # sender still reaches the new one.
    shutil.rmtree(deep)
    again = WakeSocket(node_socket(deep, 2))
    assert waker.wake_nodes() == 1 and again.wait(1) == [b"!"]
    again.close()
    waker.close()


class _Clock:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_a_supernode_with_wake_ups_tells_the_executor_and_the_server_and_waits_on_its_socket(folder: Path) -> None:
    server = WakeSocket(folder / SERVER_SOCKET)
    executor = WakeSocket(folder / EXECUTOR_SOCKET)
    own = WakeSocket(node_socket(folder, os.getpid()))
    clock = _Clock()
    polls = PollClock(0, 30, clock, wake=own, waker=Waker(folder), executor=Waker(folder), name="site-client-1")
    Waker(folder).wake_nodes()  # the ServerApp pushed a round
    started = time.monotonic()
    polls.sleep(3)  # a pull found nothing: wait on the socket, woken at once
    assert time.monotonic() - started < 1 and clock.slept == []
    polls.stored()  # it stored a message and waits for its ClientApp's reply
    waited = time.monotonic()
    polls.sleep(0.5)  # nothing pushed yet: it looks again after REPLY_WAIT, not Flower's 0.5 s
    assert REPLY_WAIT * 0.9 <= time.monotonic() - waited < 0.5
    threading.Timer(0.05, polls.came).start()  # the ClientApp pushes its reply
    waited = time.monotonic()
    polls.sleep(0.5)
    assert time.monotonic() - waited < REPLY_WAIT * 0.9, "not woken by the ClientApp's push"
    assert not polls.pushed_here.is_set()  # the next wait waits again
    assert executor.wait(1) == [b"site-client-1"]  # told once, by name
    assert clock.slept == []
    assert server.wait(0) == []
    polls.pushed()  # its reply went up: the ServerApp is told
    assert server.wait(0) == [b"!"]
    # The next pull found a message at once (no idle pull between): the executor is told again, for this one.
    polls.stored()
    assert executor.wait(1) == [b"site-client-1"]
    for sock in (server, executor, own):
        sock.close()


def test_flowers_loop_tells_the_clock_of_every_message_it_stored(tmp_path: Path) -> None:
    """Two messages back to back (a client whose link came back finds its missed round's message and the next one):
    the executor hears of each. Flower's own loop, with a pull that finds two messages, then nothing."""
    from flwr.supernode import start_client_internal as loop

    from mlfo_toolkit.fl.polls import quicken_supernode

    folder = tmp_path / "wake"
    folder.mkdir()
    executor = WakeSocket(folder / EXECUTOR_SOCKET)
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
    from flwr.supernode.servicer.runtime import runtime_handlers as handlers

    saved = (loop.time, loop._push_messages)
    saved_handlers = (handlers.push_messages, handlers.push_object)
    saved_set_node_id = InMemoryNodeState.set_node_id
    calls: list[str] = []
    loop._push_messages = lambda **kwargs: calls.append("push")
    stored: list[str] = []

    def storing(what: str) -> Any:
        def handler(*args: Any) -> None:
            assert not clock.pushed_here.is_set(), "the clock was told before the push was stored"  # type: ignore[union-attr]
            stored.append(what)
        return handler

    handlers.push_messages, handlers.push_object = storing("message"), storing("object")
    clock = None
    try:
        clock = quicken_supernode(0, 30, wake_folder=str(folder), executor_folder=str(folder), name="n1")
        assert clock is not None
        loop._push_messages(state=None, object_store=None, send=None, push_object=None)
        loop._push_messages(state=None, object_store=None, send=None, push_object=None)
        assert calls == ["push", "push"]
        assert executor.wait(1) + executor.wait(1) == [b"n1", b"n1"]
        # The ClientApp's pushes reach Flower's handlers (stand-ins here, wrapped as Flower's are), which then wake
        # the clock: after the push was stored.
        assert not clock.pushed_here.is_set()
        handlers.push_object(None, None, None)
        assert stored == ["object"] and clock.pushed_here.is_set()
        clock.pushed_here.clear()
        handlers.push_messages(None, None, None)
        assert stored == ["object", "message"] and clock.pushed_here.is_set()
        # Flower's loop stores the node ID it registered with: the SuperNode's socket is named by it.
        from flwr.supercore.object_store import ObjectStoreFactory

        state = InMemoryNodeState(ObjectStoreFactory().store())
        state.set_node_id(4242)
        assert state.get_node_id() == 4242 and os.readlink(folder / id_name(4242)) == node_socket(folder, os.getpid()).name
    finally:
        loop.time, loop._push_messages = saved
        handlers.push_messages, handlers.push_object = saved_handlers
        InMemoryNodeState.set_node_id = saved_set_node_id  # type: ignore[method-assign]
        if clock is not None:
            for sock in (clock.wake, clock.waker, clock.executor):
                if sock is not None:
                    sock.close()
        executor.close()


def test_a_woken_supernode_gets_a_child_that_asks_for_its_task_itself(tmp_path: Path) -> None:
    """The executor's loop never waits on a SuperNode: a woken one gets a forked child at once, which asks the
    SuperNode (here unreachable) for its task; one child at a time per SuperNode."""
    folder = tmp_path / "executor"
    register(folder, Registration("a", "127.0.0.1:9", os.getpid(), str(tmp_path / "a"), str(tmp_path / "a.log")))
    executor = Executor(folder)
    executor.refresh()
    served = executor.served["a.json"]
    served.woken = True
    assert executor.poll_once() == 1 and served.pickup is not None and not served.woken
    served.woken = True
    assert executor.poll_once() == 0  # its child is still asking: no second one
    deadline = time.monotonic() + 30
    while served.pickup is not None and time.monotonic() < deadline:
        executor.reap()
        time.sleep(0.05)
    assert served.pickup is None and not executor.children
    executor.close()


def test_the_packed_model_trains_and_evaluates_as_the_unpacked_one() -> None:
    params = models.init_params("complex", 64, 10, seed=3)
    packed = models.pack(params)
    assert len(packed) == 1 and packed[0].size == sum(p.size for p in params)
    back = models.unpack(packed, "complex", 64, 10)
    assert all(np.array_equal(a, b) for a, b in zip(params, back))
    assert models.unpack(params, "complex", 64, 10) is params  # an unpacked list passes through
    with pytest.raises(ValueError, match="has 4810 values, not 3"):
        models.unpack([np.zeros(3)], "complex", 64, 10)
    # FedAvg of packed models is the packed FedAvg of the models (element-wise).
    other = models.init_params("complex", 64, 10, seed=4)
    mean_packed = (packed[0] + models.pack(other)[0]) / 2
    mean = [(a + b) / 2 for a, b in zip(params, other)]
    assert np.allclose(mean_packed, models.pack(mean)[0])


def test_a_quietened_uvicorn_ticks_once_a_second_still_serves_and_stops_at_a_signal() -> None:
    import signal
    import threading
    import types

    import requests
    import uvicorn

    from mlfo_toolkit.fl.polls import quiet_uvicorn
    from mlfo_toolkit.util.processes import free_port, wait_for_port

    class Server(uvicorn.Server):  # a subclass: the patch must not reach the uvicorn mlfo's own services use
        ticks = 0

        async def on_tick(self, counter: int) -> bool:
            Server.ticks += 1
            return await super().on_tick(counter)

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    quiet_uvicorn(types.ModuleType("flower_like"))  # a module without uvicorn: nothing happens
    flower_like = types.ModuleType("flower_like")
    flower_like.uvicorn = types.SimpleNamespace(Server=Server)  # type: ignore[attr-defined]
    quiet_uvicorn(flower_like)
    assert uvicorn.Server.main_loop is not Server.main_loop
    port = free_port()
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, 10)
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).text == "ok"
    before = Server.ticks
    time.sleep(2.0)
    assert Server.ticks - before <= 3  # uvicorn's own loop: about 20 in two seconds
    started = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)  # as uvicorn's signal handler does
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 1.0


TELEMETRY_PROBE = """
import subprocess, threading
from mlfo_toolkit.fl.polls import quiet_telemetry
import flwr.supernode.runtime.run_clientapp as task
from flwr.supercore.exit import exit as flower_exit
from flwr.supercore.telemetry import EventType
ran = []
real = subprocess.check_output
subprocess.check_output = lambda *a, **k: ran.append(a) or real(*a, **k)
quieted = quiet_telemetry()
threads = threading.active_count()
answers = [module.event(EventType.FLWR_CLIENTAPP_RUN_ENTER).result(timeout=5) for module in (task, flower_exit)]
print(quieted, answers, len(ran), threading.active_count() - threads)
"""


@pytest.mark.parametrize(("enabled", "expected"), [("0", "True ['disabled', 'disabled'] 0 0"), ("1", "False")])
def test_a_tasks_telemetry_events_run_nothing_when_telemetry_is_off(enabled: str, expected: str) -> None:
    """With FLWR_TELEMETRY_ENABLED=0 Flower still built every event in a thread (running `file` on the Python binary)
    and dropped it: 18 ms of CPU per ClientApp task. In the executor an event is now what Flower would answer,
    at once. With telemetry on, Flower's own events stay (nothing is sent from here: the probe stops before)."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": enabled, "FLWR_TELEMETRY_LOGGING": "0"}
    probe = TELEMETRY_PROBE if enabled == "0" else TELEMETRY_PROBE.split("threads =")[0] + "print(quieted)\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_a_named_wake_up_waits_for_room_in_a_full_queue(folder: Path) -> None:
    """Linux queues ten datagrams on a Unix socket. A round's messages reach 25 SuperNodes at once; a SuperNode whose
    wake-up found the executor's queue full was never asked for its task until the executor's 30 s poll."""
    import threading

    executor = WakeSocket(folder / EXECUTOR_SOCKET)
    waker = Waker(folder)
    sent = 0
    while sent < 64:  # fill the queue: a plain wake-up into a full queue still counts as told
        try:
            waker.sock.sendto(b"filler", waker.held.address(EXECUTOR_SOCKET))
            sent += 1
        except BlockingIOError:
            break
    assert 0 < sent < 64 and waker.wake_socket(EXECUTOR_SOCKET, b"lost") is True  # dropped, as before
    drained: list[bytes] = []
    timer = threading.Timer(0.3, lambda: drained.extend(executor.drain()))
    timer.start()
    started = time.monotonic()
    assert waker.wake_socket(EXECUTOR_SOCKET, b"site-client-7", patience=2.0) is True
    assert 0.2 < time.monotonic() - started < 1.5
    timer.join()
    assert b"site-client-7" not in drained and b"lost" not in drained
    assert executor.wait(1) == [b"site-client-7"]  # it got in once there was room
    waker.close()
    executor.close()


LEAN_PROBE = """
import asyncio, json, sys
import httpx
from starlette.middleware.base import BaseHTTPMiddleware
from mlfo_toolkit.fl.polls import lean_superlink_middleware, lean_supernode_middleware
applied = sys.argv[1] == "lean" and lean_superlink_middleware() and lean_supernode_middleware()
dispatched, streamed = [], []  # per request: the middlewares' checks that ran, and the layers that streamed the response
setup, crossing = BaseHTTPMiddleware.__init__, BaseHTTPMiddleware.__call__
def set_up(self, *args, **kwargs):
    setup(self, *args, **kwargs)
    dispatch = self.dispatch_func
    async def counted(request, call_next):
        dispatched[-1] += 1
        return await dispatch(request, call_next)
    self.dispatch_func = counted
async def crossed(self, scope, receive, send):
    streamed[-1] += 1
    await crossing(self, scope, receive, send)
BaseHTTPMiddleware.__init__, BaseHTTPMiddleware.__call__ = set_up, crossed
import anyio.to_thread
handed = []  # per request: the synchronous calls handed to a worker thread
hand_off = anyio.to_thread.run_sync
async def counted_hand_off(*args, **kwargs):
    handed[-1] += 1
    return await hand_off(*args, **kwargs)
anyio.to_thread.run_sync = counted_hand_off
from flwr.superlink import main
from flwr.supernode import main as node_main
from flwr.supernode.nodestate import NodeStateFactory
from flwr.supercore.object_store import ObjectStoreFactory
apps = {"link": main.create_app(),
        "node": node_main.create_app(state_factory=NodeStateFactory(objectstore_factory=ObjectStoreFactory()),
                                     superexec_auth_secret=None)}
async def ask(client, method, path, body=b""):
    dispatched.append(0)
    streamed.append(0)
    handed.append(0)
    r = await client.request(method, path, content=body, headers={"content-type": "application/protobuf"})
    return {"status": r.status_code, "body": r.content.hex(), "headers": sorted(r.headers.items()),
            "dispatched": dispatched[-1], "streamed": streamed[-1], "handed": handed[-1]}
async def probe():
    answers = {"applied": applied}
    for name, app in apps.items():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://flower") as client:
            answers[name + " health"] = await ask(client, "GET", "/health")
            answers[name + " task"] = await ask(client, "POST", "/v1/runtime/acquire-task")
            answers[name + " garbled"] = await ask(client, "POST", "/v1/runtime/pull-object", b"\\xff\\xff")
            answers[name + " no token"] = await ask(client, "POST", "/v1/runtime/pull-object")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps["link"]), base_url="http://flower") as client:
        answers["link fleet"] = await ask(client, "POST", "/v1/fleet/pull-messages")
        answers["link login"] = await ask(client, "POST", "/v1/control/get-login-details")
    return answers
print(json.dumps(asyncio.run(probe())))
"""


COUNTS = ("dispatched", "streamed", "handed")


def test_lean_flower_apps_answer_as_flowers_own_with_fewer_middleware_layers() -> None:
    """Flower's SuperLink and SuperNode apps as mlfo's forked processes build them, against Flower's own, request by
    request: the same status, body and headers (a task, an unauthenticated pull, a garbled payload, an unsigned
    Fleet request, a Control route's no-cache header). Off the Control API the SuperLink runs three of its eight
    middlewares' checks (error translation, protobuf translation, the SuperNode signature check), and for a unary
    protobuf call (a Fleet or Runtime request) none of them streams the response through a task of its own; a
    Control request crosses all eight as in Flower. A unary call hands nothing to a worker thread."""
    results = {}
    for variant in ("flower", "lean"):
        out = subprocess.run([sys.executable, "-c", LEAN_PROBE, variant], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    flower, lean = results.pop("flower"), results.pop("lean")
    assert lean.pop("applied") and not flower.pop("applied")
    for key in flower:  # the same answers
        assert {k: v for k, v in lean[key].items() if k not in COUNTS} == {k: v for k, v in flower[key].items() if k not in COUNTS}, key
    statuses = {key: flower[key]["status"] for key in flower}
    assert statuses["link task"] == statuses["node task"] == 200 and statuses["link fleet"] == 401, statuses
    assert statuses["node garbled"] == 400 and statuses["node no token"] == 401, statuses
    layers = {key: (flower[key]["dispatched"], flower[key]["streamed"], lean[key]["dispatched"], lean[key]["streamed"])
              for key in flower}
    assert layers["link health"] == (8, 8, 3, 3), layers  # not a protobuf call: Flower's own three layers
    for key in ("link task", "link no token"):
        assert layers[key] == (8, 8, 3, 0), (key, layers)  # the three checks, none streaming
    assert layers["link fleet"] == (7, 7, 3, 0), layers  # refused by the signature check (the Fleet event log after it)
    assert layers["link garbled"] == (5, 5, 2, 0), layers  # the protobuf translation refuses it, as in Flower
    for key in ("node task", "node garbled", "node no token"):
        assert layers[key] == (2, 2, 2, 0), (key, layers)
    assert layers["link login"] == (8, 8, 8, 8) and lean["link login"]["headers"] == flower["link login"]["headers"], layers
    assert ["cache-control", "no-store"] in lean["link login"]["headers"], lean["link login"]
    # The synchronous work of a unary call (dependencies, the signature check, the handler) runs in line; a Control
    # call still hands its work to the thread pool as in Flower.
    for key in ("link task", "link no token", "link fleet", "node task", "node no token"):
        assert flower[key]["handed"] > 0 and lean[key]["handed"] == 0, (key, flower[key], lean[key])
    assert lean["link login"]["handed"] == flower["link login"]["handed"] > 0, (flower["link login"], lean["link login"])


def test_a_p256_node_key_signs_requests_flowers_superlink_accepts() -> None:
    """fl.node_key P-256: the key a SuperNode mlfo forked makes for itself is on P-256, and Flower's own SuperLink check
    (`authenticate_node`) accepts the headers Flower's own signing interceptor puts on its registration; a request
    signed by another key is refused (401). P-384 leaves Flower's key as it is."""
    from types import SimpleNamespace

    import httpx
    from fastapi import HTTPException
    from flwr.proto.fleet_pb2 import RegisterNodeFleetRequest
    from flwr.superlink.routers.fleet.node_auth import authenticate_node
    from flwr.supernode import fleet_http_connection as connection
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    from mlfo_toolkit.fl.polls import node_key

    flowers = connection.generate_key_pairs
    try:
        assert node_key("P-384") is False and connection.generate_key_pairs is flowers
        assert flowers()[0].curve.name == "secp384r1"  # Flower's own choice, which P-384 keeps
        assert node_key("P-256") is True
        private, public = connection.generate_key_pairs()
    finally:
        connection.generate_key_pairs = flowers
    assert private.curve.name == "secp256r1"

    def signed(key: Any, claimed: Any) -> SimpleNamespace:
        request = httpx.Request("POST", "http://127.0.0.1:9095/v1/fleet/register-node")
        NodeAuthHttpInterceptor(key, claimed).intercept(SimpleNamespace(request=request), lambda context: None)
        registration = RegisterNodeFleetRequest(public_key=connection.public_key_to_bytes(claimed))
        return SimpleNamespace(headers=dict(request.headers), state=SimpleNamespace(protobuf_request=registration))

    authenticate_node(signed(private, public))  # accepted: no exception
    with pytest.raises(HTTPException) as refused:
        authenticate_node(signed(flowers()[0], public))  # signed by another key than the one it claims
    assert refused.value.status_code == 401
    with pytest.raises(ValueError, match="P-999"):
        node_key("P-999")
