"""The shared executor follows its registration folder; admission control refuses what cannot fit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import CapacityError
from mlfo_toolkit.fl.executor import Executor, Registration, register, unregister
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.store import Store


def registration(name: str, pid: int, tmp_path: Path) -> Registration:
    return Registration(name, "127.0.0.1:1", pid, str(tmp_path / name), str(tmp_path / f"{name}.log"))


def test_registrations_come_and_go(tmp_path: Path) -> None:
    folder = tmp_path / "executor"
    executor = Executor(folder)
    executor.refresh()  # no folder yet: nothing served, no error
    assert executor.served == {}
    register(folder, registration("a", os.getpid(), tmp_path))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    register(folder, registration("b", sleeper.pid, tmp_path))
    (folder / "junk.json").write_text("{not json")
    executor.refresh()
    assert sorted(s.registration.name for s in executor.served.values()) == ["a", "b"]
    # Same namespace as the executor: no setns needed (and none allowed without root).
    assert all(s.namespace_fd is None for s in executor.served.values())
    sleeper.kill()
    # Killed and not yet reaped, as an agent whose parent does not wait for it: a zombie is gone.
    deadline = time.monotonic() + 5
    while psutil.Process(sleeper.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    executor.refresh()
    assert [s.registration.name for s in executor.served.values()] == ["a"]
    sleeper.wait()
    unregister(folder, "a")
    executor.refresh()
    assert executor.served == {}  # "a" unregistered, "b"'s SuperNode is gone
    executor.close()


def test_unreachable_supernode_is_retried_later_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "executor"
    register(folder, registration("a", os.getpid(), tmp_path))
    executor = Executor(folder)
    executor.refresh()
    assert executor.poll_once() == 0  # nothing listens on 127.0.0.1:1
    (served,) = executor.served.values()
    assert served.retry_at > 0 and served.client is None
    executor.close()


@contextmanager
def campus(config: Config, tmp_path: Path) -> Iterator[CampusMlfo]:
    mlfo = CampusMlfo(config, Store(tmp_path / "campus.sqlite3"))
    try:
        yield mlfo
    finally:
        mlfo.close()


def test_admission_refuses_with_the_numbers(config: Config, tmp_path: Path) -> None:
    available_mb = psutil.virtual_memory().available // 2**20
    per_client = available_mb // 4  # five clients cannot fit
    with campus(config.with_overrides({"mlfo.client_memory_mb": per_client}), tmp_path) as mlfo:
        with pytest.raises(CapacityError) as refused:
            mlfo.admission.check("big", 5 * per_client + 650, 5, False)
        message = refused.value.message
        assert "cohort 'big'" in message and f"5 clients x {per_client} MB" in message and "MemAvailable is" in message
        mlfo.admission.check("small", per_client, 1, True)  # one client fits
    with campus(config.with_overrides({"mlfo.client_memory_mb": 0}), tmp_path) as off:
        off.admission.check("anything", 10**9, 10_000, False)  # 0 turns admission control off


def test_spawned_supernode_handle_follows_and_stops_by_pid(tmp_path: Path) -> None:
    import json

    from mlfo_toolkit.fl.executor import Spawned

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "x.started").write_text(json.dumps({"pid": sleeper.pid, "create_time": psutil.Process(sleeper.pid).create_time()}))
    (tmp_path / "x.log").write_text("one\ntwo\n")
    handle = Spawned.wait_started(tmp_path, "x", tmp_path / "x.log", timeout=5)
    assert handle.running() and handle.returncode() is None and handle.tail(1) == "two"
    (tmp_path / "x.exited").write_text(json.dumps({"pid": sleeper.pid, "code": 3}))
    handle.stop(timeout=2)
    sleeper.wait(5)
    assert not handle.running() and handle.returncode() == 3
    unregister(tmp_path, "x")
    assert not (tmp_path / "x.exited").exists()


def test_no_executor_means_a_clear_error(tmp_path: Path) -> None:
    from mlfo_toolkit.errors import UnreachableError
    from mlfo_toolkit.fl.executor import Spawned

    with pytest.raises(UnreachableError, match="did not start flower-supernode x"):
        Spawned.wait_started(tmp_path, "x", tmp_path / "x.log", timeout=0.3)


def test_a_restarted_agent_numbers_its_runs_after_the_last(config: Config, tmp_path: Path) -> None:
    from mlfo_toolkit.agent.node import NodeAgent

    for name in ("client-1", "client-7", "server-2", "client-x"):
        (tmp_path / "agent" / name).mkdir(parents=True)
    agent = NodeAgent(config, work_dir=tmp_path / "agent")
    assert (agent._client_runs, agent._runs) == (7, 2)  # the next client is client-8: no name is used twice


class _Clock:
    def __init__(self) -> None:
        self.now, self.slept = 100.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_busy_supernode_polls_fast_and_an_idle_one_as_flower_does() -> None:
    from mlfo_toolkit.fl.polls import PollClock

    clock = _Clock()
    polls = PollClock(fast=0.2, hot=30, clock=clock)
    polls.sleep(3)  # just started: its first message is coming
    polls.sleep(0.5)  # waiting for its ClientApp's reply: busy
    assert clock.slept == [0.2, 0.05]
    clock.now += 31  # nothing for longer than the hot window
    polls.sleep(3)
    assert clock.slept[-1] == 3  # Flower's own idle poll
    assert PollClock(0.2, 30).time() > 0  # everything else is the real time module's


def test_the_poll_lever_is_applied_only_on_the_flower_it_was_tested_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr
    from flwr.supernode import start_client_internal as loop

    from mlfo_toolkit.errors import MissingDependencyError
    from mlfo_toolkit.fl.polls import PollClock, quicken_supernode

    assert quicken_supernode(0, 30) is None and loop.time is time  # 0: Flower's own timing
    monkeypatch.setattr(loop, "time", time)
    assert isinstance(quicken_supernode(0.2, 30), PollClock) and isinstance(loop.time, PollClock)
    monkeypatch.setattr(loop, "time", time)
    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    with pytest.raises(MissingDependencyError, match="tested on Flower 1.42.x, not 1.43.0"):
        quicken_supernode(0.2, 30)


def test_the_fl_server_is_forked_only_on_the_flower_mlfo_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from mlfo_toolkit.fl import polls

    assert polls.tested_flower()  # the pinned one is installed here
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.43.0")
    assert not polls.tested_flower()  # another: the agent starts Flower's own SuperLink process instead


TASK_PROBE = """
import sys
from flwr.app import Context, RecordDict
from mlfo_toolkit.fl import apps, models
from mlfo_toolkit.fl.executor import Executor
Executor.preload()
preloaded = set(sys.modules)
# What a ClientApp task of mlfo's app does with a train message: its partition of the data, training, the packed reply.
context = Context(run_id=1, node_id=1, node_config={"source": "handmnist", "num-partitions": 10, "partition-id": 3},
                  state=RecordDict(), run_config={})
dataset, indices = apps._local_data(context)
params = models.init_params("complex", dataset.num_features, dataset.num_classes)
params, loss = models.train(params, dataset.x_train[indices], dataset.y_train[indices], epochs=1, learning_rate=0.1,
                            batch_size=32, seed=1)
models.pack(params)
print(sorted(set(sys.modules) - preloaded))
"""


def test_a_task_imports_nothing_the_executor_did_not_preload(tmp_path: Path) -> None:
    """Every ClientApp task is forked from the executor: a module its work imports is imported again by every task
    (numpy.random was, a fifth of a task's CPU samples). After the executor's preload, a train task's own work
    (its partition, training, the packed reply) imports nothing."""
    out = subprocess.run([sys.executable, "-c", TASK_PROBE], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-2000:]


def test_a_kept_clientapp_process_ends_each_task_as_flower_does_and_lives_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's `run_clientapp` ends its task with `flwr_exit`: its exit handlers push the task's final status to the
    SuperNode, then the process exits (and a thread kills it 5 s later if it does not). In the process mlfo keeps for a
    SuperNode, the same handlers run, in Flower's order, and the task ends with its code; the process, its signal
    handlers and its threads are as they were."""
    import functools
    import importlib
    import signal
    import threading

    from flwr.supercore.exit import exit_handler
    from flwr.supercore.telemetry import EventType

    from mlfo_toolkit.fl.polls import TaskEnded, keep_clientapp_process

    module = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    for name in ("flwr_exit", "register_signal_handlers"):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    assert keep_clientapp_process()
    sigterm, threads = signal.getsignal(signal.SIGTERM), threading.active_count()
    for code in (0, 105):  # two tasks, one after the other; the second failed (Flower's code for an app's exception)
        ran: list[str] = []
        module.register_signal_handlers(event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE, exit_message="Task stopped.",
                                        exit_handlers=[functools.partial(ran.append, "final status pushed")])
        exit_handler.add_exit_handler(functools.partial(ran.append, "before the force exit"), run_before_force_exit=True)
        with pytest.raises(TaskEnded) as ended:
            module.flwr_exit(code=code, event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE)
        assert ended.value.code == code
        assert ran == ["before the force exit", "final status pushed"]
        assert exit_handler.registered_exit_handlers == []  # nothing of this task is left for the next
    assert signal.getsignal(signal.SIGTERM) is sigterm and threading.active_count() == threads


def test_the_process_kept_for_a_supernode_outlives_a_failed_ask_and_a_lost_one_is_replaced(tmp_path: Path) -> None:
    """clientapp_processes: per-node. A SuperNode that cannot be asked (nothing listens) does not end the process kept
    for it; one that died (killed) is reaped and replaced at the next task, and closing the executor ends it."""
    folder = tmp_path / "executor"
    register(folder, Registration("a", "127.0.0.1:1", os.getpid(), str(tmp_path / "a"), str(tmp_path / "a.log"),
                                  clientapp_processes="per-node"))
    executor = Executor(folder)
    executor.refresh()
    (served,) = executor.served.values()
    try:
        executor._hand(served, None)  # "ask your SuperNode": it does not answer
        first = served.worker
        assert first is not None
        time.sleep(1.0)
        executor.reap()
        assert served.worker == first and psutil.Process(first).status() != psutil.STATUS_ZOMBIE
        assert "flwr-clientapp [mlfo executor] a" in " ".join(psutil.Process(first).cmdline())
        os.kill(first, 9)
        deadline = time.monotonic() + 5
        while psutil.Process(first).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        executor._hand(served, None)  # a message before the executor reaped it: its pipe is broken, a new one takes it
        second = served.worker
        assert second not in (None, first) and psutil.Process(second).status() != psutil.STATUS_ZOMBIE
        deadline = time.monotonic() + 5
        while first in executor.workers and time.monotonic() < deadline:
            executor.reap()
            time.sleep(0.05)
        assert first not in executor.workers and served.worker == second
        os.kill(second, 9)  # one that ends between messages is reaped, and the next message forks another
        while served.worker == second and time.monotonic() < deadline + 5:
            executor.reap()
            time.sleep(0.05)
        assert served.worker is None
        executor._hand(served, None)
        assert served.worker not in (None, first, second)
        third = served.worker
    finally:
        executor.close()
    assert not psutil.pid_exists(third) and executor.workers == {}


def test_a_kept_clientapp_process_imports_each_tasks_app_afresh_and_keeps_the_rest(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Module-level state of an app does not pass from one message to the next (nor to another version of the app),
    as with a process per message; what the app imports from elsewhere stays imported."""
    import importlib

    from mlfo_toolkit.fl.executor import _forget_app_modules

    app = tmp_path / "apps" / "mlfo.counter.1.0.0.abcdef" / "counter_app"
    app.mkdir(parents=True)
    (app / "__init__.py").write_text("import json\nSEEN = []\n")
    monkeypatch.syspath_prepend(str(app.parent))
    first = importlib.import_module("counter_app")
    first.SEEN.append("task 1")
    _forget_app_modules(f"{tmp_path / 'apps'}{os.sep}")
    assert "counter_app" not in sys.modules and "json" in sys.modules
    assert importlib.import_module("counter_app").SEEN == []
    sys.modules.pop("counter_app")


def test_an_object_not_there_yet_is_asked_for_again_soon_not_after_flowers_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ServerApp that pulls a reply whose objects are still being pushed waited Flower's first backoff, 1 s: every
    other round of one cohort on loopback. In the processes mlfo forks the first wait is OBJECT_PULL_FIRST_WAIT, for
    every puller (ClientApp, ServerApp, SuperNode), whatever wait the caller passed; the rest of the call is Flower's."""
    import importlib

    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from mlfo_toolkit.fl import polls

    asked: list[float] = []
    for name in polls._OBJECT_PULLERS:
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "pull_objects", module.pull_objects)  # restored after the test
    flower = importlib.import_module(polls._OBJECT_PULLERS[0])
    monkeypatch.setattr(flower, "pull_objects", lambda *a, initial_backoff=1.0, **k: asked.append(initial_backoff))
    assert polls.quick_object_pulls()
    flower.pull_objects(["a"], lambda i: b"")
    flower.pull_objects(["a"], lambda i: b"", initial_backoff=1)  # as pull_and_inflate_object_from_tree passes it
    assert asked == [polls.OBJECT_PULL_FIRST_WAIT] * 2
    assert polls.quick_object_pulls()  # applied twice: still one wrapper
    flower.pull_objects(["a"], lambda i: b"")
    assert asked == [polls.OBJECT_PULL_FIRST_WAIT] * 3
    # Flower's own function behind it: an object missing at the first ask is pulled at the second.
    grid = importlib.import_module("flwr.superlink.grid.http_grid")
    tries: list[str] = []

    def pull(object_id: str) -> bytes:
        tries.append(object_id)
        if len(tries) == 1:
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert grid.pull_objects(["reply"], pull) == {"reply": b"content"} and tries == ["reply", "reply"]


def test_a_request_flower_retries_logs_what_it_met(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A retried request can find its work done (an object push stored, its answer lost, the retry into a closed push
    session): in the processes mlfo forks, why the first attempt failed is logged at WARNING, with Flower's own
    retry invoker and a transport error it retries, where Flower logs it at DEBUG, below its INFO level."""
    import importlib
    import logging

    import httpx

    from mlfo_toolkit.fl import polls

    module = importlib.import_module("flwr.supercore.retry.http_retry")
    monkeypatch.setattr(module, "log", module.log)  # restored after the test
    monkeypatch.setattr(module, "MAX_RETRY_DELAY", 0.01, raising=False)
    attempts: list[int] = []

    def push() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return "stored"

    def retried() -> str:
        with caplog.at_level(logging.INFO, logger="flwr"):
            return str(module.make_simple_http_retry_invoker().invoke(push))

    assert retried() == "stored" and "Server disconnected" not in caplog.text  # Flower's own: at DEBUG, dropped
    caplog.clear()
    attempts.clear()
    assert polls.logged_retries() and polls.logged_retries()  # applied twice: one wrapper
    assert retried() == "stored"
    failures = [r for r in caplog.records if r.getMessage().startswith(polls.RETRY_FAILURE)]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING
    assert "Server disconnected without sending a response" in failures[0].getMessage()


def test_a_push_whose_answer_was_lost_is_retried_into_a_stored_object_and_counts_as_stored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ServerApp's object push reached its SuperLink's state, which stored the last object and ended the push
    session, and the answer was lost: Flower retried, the state said "not stored", and `ObjectPushError` ended the
    run (one cohort in some 110 of the seed bench). With Flower's own push, retry invoker and in-memory state, in the
    processes mlfo forks a repeated push of a stored object counts as stored; a push of an object the state never
    asked for is still refused."""
    import importlib

    import httpx
    import numpy as np
    from flwr.app import ArrayRecord
    from flwr.proto.message_pb2 import PushObjectRequest, PushObjectResponse
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
    from flwr.supercore.inflatable.inflatable_protobuf_utils import make_push_object_fn_protobuf
    from flwr.supercore.inflatable.inflatable_utils import ObjectPushError, push_objects
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    from mlfo_toolkit.fl import polls

    state_class = importlib.import_module(polls._STATE_MODULE).InMemoryCoreState
    monkeypatch.setattr(state_class, "store_object", state_class.store_object)  # restored after the test
    monkeypatch.setattr(importlib.import_module("flwr.supercore.retry.http_retry"), "MAX_RETRY_DELAY", 0.01, raising=False)

    def push_all(state: InMemoryNodeState) -> None:
        record = ArrayRecord([np.arange(1000.0), np.ones(10)])
        session = state.start_session(7)
        missing = state.preregister_object_tree(get_object_tree(record), session)
        answered: list[str] = []

        def push_object(request: PushObjectRequest) -> PushObjectResponse:
            stored = state.store_object(7, request.session_id, request.object_id, request.object_content)
            if request.object_id == missing[-1] and not answered:
                answered.append("lost")
                raise httpx.ReadError("the answer to the last object's push was lost")
            return PushObjectResponse(stored=stored)

        invoker = make_simple_http_retry_invoker()
        push_fn = make_push_object_fn_protobuf(lambda r: invoker.invoke(push_object, r), Node(node_id=1), 7, session)
        push_objects(get_all_nested_objects(record), push_fn, object_ids_to_push=set(missing), max_concurrent_pushes=1)
        assert answered == ["lost"] and all(state.object_store.get(i) for i in missing)

    with pytest.raises(ObjectPushError):  # Flower's own: the run ends
        push_all(InMemoryNodeState(ObjectStoreFactory().store()))
    assert polls.repeatable_object_pushes() and polls.repeatable_object_pushes()  # applied twice: one wrapper
    push_all(InMemoryNodeState(ObjectStoreFactory().store()))  # the retry counts as stored
    state = InMemoryNodeState(ObjectStoreFactory().store())
    session = state.start_session(7)
    assert not state.store_object(7, session, "0" * 64, b"never asked for")
