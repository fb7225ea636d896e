"""Flower's SuperNode, waiting at the speed of the work.

Flower 1.42's SuperNode (`flwr/supernode/start_client_internal.py`) sleeps a fixed 3 s whenever a
pull finds no message, and 0.5 s at a time while it waits for its ClientApp's reply; no flag sets
either. In a round of mlfo's emulated network that is most of the round: the work is milliseconds.

mlfo forks the SuperNodes it serves from its own executor, so it owns their process. Before Flower's
`flower-supernode` runs there, `quicken_supernode` gives that one module a `time` whose `sleep`
differs, in one of two ways:

* **wake-ups** (`fl.wakeups`, the default; `mlfo_toolkit/fl/wake.py`): an idle SuperNode waits on a
  socket of its own, which the cohort's ServerApp writes to right after it pushed a message to it,
  so it pulls at once; with nothing to do it still asks every 10 s (Flower's: 3 s). After its reply
  went up it waits there too, instead of Flower's pull at once, when the message came with a
  wake-up of its own (each one does: the next one wakes it). While
  it waits for its ClientApp's reply it is woken when the ClientApp pushes to it (looking every
  0.25 s anyway), the executor is told at once that a message came, and the ServerApp that the
  reply went up.
* **fast polls** (`fl.supernode_poll_seconds`, for comparison): for `hot` seconds after it last
  handled a message, a pull that found nothing waits `fast` seconds instead of 3, and the waits for a
  reply take `fast / 4`; then it falls back to Flower's 3 s.

Every message still goes Flower's own way (Fleet API, SuperNode, Runtime API, ClientApp); only the
waiting between polls changes. This reaches into a module of Flower's: it is applied only on the
Flower versions it was read and measured on (TESTED), and refused loudly on another (set
fl.wakeups: false and fl.supernode_poll_seconds: 0 to run Flower's own timing there).
"""

from __future__ import annotations

import contextvars
import importlib.metadata
import logging
import os
import sys
import threading
import time
import types
from collections.abc import MutableMapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

from mlfo_toolkit.errors import MissingDependencyError
from mlfo_toolkit.fl.wake import EXECUTOR_SOCKET, NAMED_WAKE_PATIENCE, TARGETED, Waker, WakeSocket, id_name, node_socket
from mlfo_toolkit.util.ticks import Ticks

TESTED = ("1.42.",)
FLOWER_IDLE_SLEEP = 3.0  # what Flower's SuperNode sleeps when a pull found nothing
# With wake-ups: how often an idle SuperNode asks anyway (a safety net: every push of mlfo's ServerApps wakes it).
# Flower's own 3 s made fifty idle SuperNodes a fifth of a core, with their SuperLinks' answers.
IDLE_WAIT = 10.0
# With wake-ups, a node that handles a message is woken when its ClientApp pushes to it (the reply, its objects);
# it looks anyway this often (a safety net). It looked every 20 ms before: Flower's scan of its message store at each
# look was 18 % of a loaded SuperNode's interpreter samples (py-spy --gil, `mlfo demo` 3 x 10 x 40).
REPLY_WAIT = 0.25


def tested_flower() -> bool:
    """Whether the installed Flower is one mlfo's changes to it were read and measured on (without importing it)."""
    try:
        return importlib.metadata.version("flwr").startswith(TESTED)
    except importlib.metadata.PackageNotFoundError:
        return False


PINNED = "install the Flower version mlfo pins (flwr==1.42.*)"
WAKEUPS_OFF = PINNED + ", or set fl.wakeups: false"


def _flower_function(module_name: str, name: str, does: str, lever: str, hint: str = PINNED) -> tuple[Any, Any]:
    """The function of Flower's a lever of mlfo's wraps (`name` in the module, or `Class.method`), and where it is
    (the module, or the class); refused loudly where it is not there."""
    owner: Any = importlib.import_module(module_name)
    *classes, attribute = name.split(".")
    for class_name in classes:
        owner = getattr(owner, class_name, None)
    function = getattr(owner, attribute, None)
    if not callable(function):
        raise MissingDependencyError(f"Flower's {module_name} {does} elsewhere: mlfo's {lever} cannot hook into it", hint=hint)
    return owner, function


class PollClock:
    """Stands in for the `time` module inside Flower's SuperNode loop; only `sleep` differs. Flower's loop also tells
    it when it stored a message (`stored`) and when the reply went up (`pushed`), see `quicken_supernode`."""

    def __init__(self, fast: float, hot: float, clock: Any = time, *, wake: WakeSocket | None = None,
                 waker: Waker | None = None, executor: Waker | None = None, name: str = "") -> None:
        self.fast, self.hot, self.clock = fast, hot, clock
        self.wake, self.waker, self.executor, self.name = wake, waker, executor, name
        self.last_busy = clock.monotonic()  # a SuperNode that just started is about to get its first message
        self.polls = 0
        self.pushed_here = threading.Event()  # the ClientApp pushed to this SuperNode (see `came`)
        self.targeted = False  # the last wake-up was sent for a message to this SuperNode (see `after_reply`)
        self.skipped_pulls = 0  # the pulls after a reply that waited for a wake-up instead

    def __getattr__(self, name: str) -> Any:
        return getattr(self.clock, name)

    def stored(self) -> None:
        """Flower's loop pulled and stored a message and now waits for its ClientApp's reply: the executor is told at
        once, for every message. (Told only after an idle pull, a message pulled right after the last reply went up
        waited for the executor's 30 s safety poll: 30 s rounds after a client's link came back.) A round's messages
        reach many SuperNodes at once, more than the executor's socket queues: this one waits for room."""
        self.last_busy = self.clock.monotonic()
        if self.executor is not None:
            self.executor.wake_socket(EXECUTOR_SOCKET, self.name.encode(), patience=NAMED_WAKE_PATIENCE)

    def came(self) -> None:
        """The ClientApp pushed its reply, or one of the reply's objects, to this SuperNode: Flower's loop, waiting
        for them, looks again at once. Set after the push was stored, so the look finds it."""
        self.pushed_here.set()

    def pushed(self) -> None:
        """The reply went up to the SuperLink: the ServerApp is told."""
        self.last_busy = self.clock.monotonic()
        if self.waker is not None:
            self.waker.wake_server()

    def named(self, node_id: int | None) -> None:
        """Flower's loop registered this SuperNode as `node_id`: its socket gets that name too, so the ServerApp wakes
        it (and only it) for each message it pushes to it."""
        if self.wake is not None and node_id is not None:
            self.wake.name_as(id_name(node_id))

    def after_reply(self) -> None:
        """The reply went up. Flower's loop pulls again at once, and nearly always finds nothing: the ServerApp waits
        for the other replies before it sends more. If the message this SuperNode handled came with a wake-up of its
        own, every message does: wait for the next one instead (or IDLE_WAIT, the safety net), so that pull finds it."""
        if self.wake is not None and self.targeted:
            self.skipped_pulls += 1
            self.targeted = self.wake.wait_one(IDLE_WAIT) == TARGETED

    def sleep(self, seconds: float) -> None:
        now = self.clock.monotonic()
        if seconds >= FLOWER_IDLE_SLEEP:  # a pull found nothing
            self.polls += 1
            if self.wake is not None:
                # Woken at once when the ServerApp pushed something; else it asks again after IDLE_WAIT (a
                # wake-up is never lost on one machine, so the idle asks are a safety net, not the path). One
                # wake-up at a time: a SuperNode sent two messages at once has two, one for each pull.
                self.targeted = self.wake.wait_one(max(seconds, IDLE_WAIT)) == TARGETED
            else:
                self.clock.sleep(self.fast if self.fast > 0 and now - self.last_busy < self.hot else seconds)
            return
        self.last_busy = now  # waiting for its ClientApp's reply, or for a reply's objects
        if self.wake is not None:
            # Cleared after the wait: a push that came before the clear was stored before Flower's next look (which
            # finds it); one after it leaves the event set for the next wait.
            if self.pushed_here.wait(min(seconds, REPLY_WAIT)):
                self.pushed_here.clear()
        else:
            self.clock.sleep(min(seconds, self.fast / 4 if self.fast > 0 else seconds))


def quicken_supernode(fast: float, hot: float, *, wake_folder: str = "", executor_folder: str = "",
                      name: str = "") -> PollClock | None:
    """Give this process's Flower SuperNode wake-ups (a `wake_folder`) or fast polls (`fast` > 0), see the
    module; None when it gets neither (Flower's own timing)."""
    if fast <= 0 and not wake_folder:
        return None
    import flwr
    from flwr.supernode import start_client_internal as loop

    version = getattr(flwr, "__version__", "")
    push = getattr(loop, "_push_messages", None)
    if not version.startswith(TESTED) or not isinstance(getattr(loop, "time", None), types.ModuleType) or push is None:
        raise MissingDependencyError(
            f"mlfo's SuperNode wake-ups are tested on Flower {', '.join(v + 'x' for v in TESTED)}, not {version}",
            hint="install the Flower version mlfo pins (flwr==1.42.*), or set fl.wakeups: false and "
            "fl.supernode_poll_seconds: 0 to keep Flower's own 3 s polls",
        )
    if wake_folder:
        folder = Path(wake_folder)
        clock = PollClock(fast, hot, wake=WakeSocket(node_socket(folder, os.getpid())), waker=Waker(folder),
                          executor=Waker(Path(executor_folder)) if executor_folder else None, name=name)
    else:
        clock = PollClock(fast, hot)
    setattr(loop, "time", clock)  # noqa: B010  (this module only: Flower's other modules keep theirs)

    def push_messages(*args: Any, **kwargs: Any) -> Any:
        # Flower's loop calls this right after it stored a pulled message; it waits for the reply and pushes it.
        clock.stored()
        done = push(*args, **kwargs)
        clock.pushed()
        clock.after_reply()
        return done

    setattr(loop, "_push_messages", push_messages)  # noqa: B010
    if wake_folder:
        _tell_of_pushes(clock)
        _tell_of_node_id(clock)
    return clock


def _tell_of_node_id(clock: PollClock) -> None:
    """Flower's loop stores the node ID the SuperLink gave it in its NodeState: the clock names its socket by it."""
    state_class, original = _flower_function("flwr.supernode.nodestate.in_memory_nodestate", "InMemoryNodeState.set_node_id",
                                             "keeps its node ID", "wake-ups", WAKEUPS_OFF)

    def set_node_id(self: Any, node_id: int | None) -> None:
        original(self, node_id)
        clock.named(node_id)

    setattr(state_class, "set_node_id", set_node_id)  # noqa: B010  (this SuperNode's process only)


def _tell_of_pushes(clock: PollClock) -> None:
    """The SuperNode's Runtime API handlers that store what its ClientApp pushes (the reply, its objects) tell the
    clock when they stored it. Flower's routes look the handlers up on this module at each call."""
    for name in ("push_messages", "push_object"):
        handlers, original = _flower_function("flwr.supernode.servicer.runtime.runtime_handlers", name,
                                              "handles its Runtime API", "wake-ups", WAKEUPS_OFF)

        def told(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            answer = _original(*args, **kwargs)
            clock.came()
            return answer

        setattr(handlers, name, told)


QUIET_TICK = 1.0  # seconds between the idle ticks of a quietened uvicorn (its own: 0.1 s)


def quiet_uvicorn(flower_module: types.ModuleType) -> None:
    """In a process mlfo forked (a SuperNode, a SuperLink): the uvicorn that serves Flower's HTTP API there ticks once a
    second when idle, not ten times (2 % of a core per process, measured on mlfo's own services; fifty SuperNodes
    and five SuperLinks idle at the seed's scale). `flower_module` is Flower's module that imported uvicorn; its
    `Server` class is changed in this process only. A stop (should_exit, or the signal uvicorn handles) is still seen
    at once when it comes by signal (uvicorn's handle_exit), and within a tick otherwise. Nothing changes where uvicorn looks different."""
    server = getattr(getattr(flower_module, "uvicorn", None), "Server", None)
    if server is None or not all(hasattr(server, name) for name in ("main_loop", "on_tick", "handle_exit")):
        return
    handle_exit = server.handle_exit

    async def main_loop(self: Any) -> None:
        self._mlfo_ticks = ticks = Ticks()
        counter = 0
        while not await self.on_tick(counter):  # on_tick refreshes the Date header when counter % 10 == 0
            counter = (counter + 10) % 864_000
            await ticks.sleep(QUIET_TICK)

    def quiet_exit(self: Any, sig: int, frame: Any) -> None:
        handle_exit(self, sig, frame)
        ticks = getattr(self, "_mlfo_ticks", None)
        if ticks is not None:
            ticks.wake()

    server.main_loop = main_loop
    server.handle_exit = quiet_exit


def quiet_telemetry() -> bool:
    """In the executor (and so in every process it forks): Flower's telemetry events cost nothing when they are off.

    Flower 1.42 starts a thread for every event, and that thread builds the event's payload even when
    FLWR_TELEMETRY_ENABLED=0 (mlfo's setting), only to drop it: `platform.architecture()` runs the `file` command on
    the Python binary. A ClientApp task sends two events (it began, it ended) and waits for the second: 18 ms of CPU
    in `file` per task, a quarter of the task's own, measured at 10 clients. With telemetry off and its logging off
    (FLWR_TELEMETRY_LOGGING), an event here is what Flower's would be, a done future that says "disabled", without
    the thread or the payload. Returns whether it changed anything (only on the tested Flower, telemetry off)."""
    if not tested_flower():
        return False
    from flwr.supercore import telemetry

    if telemetry.FLWR_TELEMETRY_ENABLED != "0" or telemetry.FLWR_TELEMETRY_LOGGING == "1":
        return False
    flower_event = telemetry.event

    def event(event_type: Any, event_details: dict[str, Any] | None = None) -> Future[str]:
        done: Future[str] = Future()
        done.set_result("disabled")
        return done

    telemetry.event = event
    telemetry.create_event = lambda event_type, event_details: "disabled"
    for name, module in list(sys.modules.items()):  # the modules that imported it by name (`from ... import event`)
        if name.startswith("flwr.") and getattr(module, "event", None) is flower_event:
            setattr(module, "event", event)  # noqa: B010
    return True


class _ControlApartStack:
    """An ASGI app that sends Control API requests (and the lifespan) through Flower's whole middleware stack, and the
    other HTTP requests through the stack without the middlewares that let them pass unchanged. `is_control` is the
    test Flower's Control middlewares make of a path."""

    def __init__(self, whole: Any, lean: Any, is_control: Any) -> None:
        self.whole, self.lean, self.is_control = whole, lean, is_control

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.is_control(str(scope.get("path", ""))):
            await self.lean(scope, receive, send)
        else:
            await self.whole(scope, receive, send)


# Set while a unary protobuf call runs in line (`_InlineHTTPMiddleware`): its synchronous work runs in line too.
_IN_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("mlfo_in_line", default=False)


def _sync_work_in_line(module_names: tuple[str, ...]) -> None:
    """Give these modules (already imported) a `run_in_threadpool` that, inside a unary protobuf call taken in line,
    calls the function at once in the event loop's thread instead of handing it to a worker thread.

    For every Fleet or Runtime call, FastAPI and Flower hand the synchronous parts to Starlette's thread pool: each
    dependency (the state, the settings, the version check), the SuperNode signature check and the handler: six
    hand-offs for an acquire-task, for work that takes microseconds (a state lookup, an ECDSA check). Each hand-off
    costs the event loop a capacity limiter, a cancel scope and a wake-up from the worker: under load, a fifth of a
    SuperLink's CPU, while the handlers themselves were a few percent (py-spy, GIL samples). The handlers on these routes answer at once (no waits,
    no long polls), so running them in line keeps the answers and their order. Every other request (a stream, a
    Control call, the model `responses` route) still uses the thread pool."""
    for name in module_names:
        module = sys.modules.get(name)
        original = getattr(module, "run_in_threadpool", None)
        if module is None or original is None or getattr(original, "mlfo_in_line", False):
            continue

        def gated(original: Any) -> Any:
            async def run_in_threadpool(func: Any, *args: Any, **kwargs: Any) -> Any:
                if _IN_LINE.get():
                    return func(*args, **kwargs)
                return await original(func, *args, **kwargs)

            run_in_threadpool.mlfo_in_line = True  # type: ignore[attr-defined]
            return run_in_threadpool

        setattr(module, "run_in_threadpool", gated(original))  # noqa: B010


# Where FastAPI and Flower hand a unary call's synchronous work to the thread pool (sync dependencies, the protobuf
# route's handler, the SuperNode signature check).
_THREADPOOL_USERS = ("fastapi.dependencies.utils", "fastapi.routing", "flwr.supercore.protobuf.routing",
                     "flwr.superlink.routers.fleet.node_auth")


class _InlineHTTPMiddleware:
    """One of Flower's `BaseHTTPMiddleware`s, its `dispatch` run in line for unary protobuf requests.

    Starlette runs a `BaseHTTPMiddleware`'s inner app in a task of its own and copies the response through a memory
    stream (a task group, two streams and a streaming response per request and layer): in a SuperLink under load,
    that machinery was more of its CPU than the handlers. A unary protobuf request (a Fleet or Runtime call: a
    body in, one protobuf out) needs none of it: here the same `dispatch` gets the same request, and its `call_next`
    runs the inner app at once and hands back the whole response (status, headers, body as sent). An exception of
    the inner app reaches `dispatch` as it does from Starlette's `call_next`. Any other request (a stream, a route
    not in Flower's protobuf table) goes through Flower's middleware itself."""

    def __init__(self, app: Any, base: Any, args: tuple[Any, ...], kwargs: dict[str, Any], inline: Any) -> None:
        from flwr.supercore.protobuf import translation

        self.app = app
        self.base = base(app, *args, **kwargs)  # Flower's own layer, for every request not taken in line
        self.dispatch = self.base.dispatch_func
        self.inline = inline
        # The request and response classes of Flower's protobuf layer (FastAPI's, which are Starlette's).
        self.request_class, self.response_class = vars(translation)["Request"], vars(translation)["Response"]

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.inline(scope):
            await self.base(scope, receive, send)
            return
        request = self.request_class(scope, receive)
        body = await request.body()  # kept by the request: `dispatch` reads it again at no cost

        async def call_next(_: Any) -> Any:
            start: dict[str, Any] = {}
            parts: list[bytes] = []
            replayed = False

            async def replay() -> dict[str, Any]:  # the body again for the layers inside, then what the client sends
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return cast(dict[str, Any], await receive())

            async def keep(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    start.update(message)
                elif message["type"] == "http.response.body":
                    parts.append(message.get("body", b""))

            await self.app(scope, replay, keep)
            if not start:
                raise RuntimeError("No response returned.")  # as Starlette's call_next says
            response = self.response_class(b"".join(parts), status_code=start["status"])
            response.raw_headers = list(start.get("headers", []))
            return response

        in_line = _IN_LINE.set(True)
        try:
            response = await self.dispatch(request, call_next)
        finally:
            _IN_LINE.reset(in_line)
        await response(scope, receive, send)


def _unary_protobuf(is_control: Any) -> Any:
    """The test of a request scope: a unary protobuf call of Flower's (its route in Flower's protobuf table, not
    a Control path: the only streams of the tested Flower are Control routes)."""
    from flwr.supercore.protobuf.translation import PROTOBUF_REQUEST_TYPES

    def unary(scope: MutableMapping[str, Any]) -> bool:
        path = str(scope.get("path", ""))
        return (str(scope.get("method", "")), path) in PROTOBUF_REQUEST_TYPES and not is_control(path)

    return unary


def _inlined(middleware: list[Any], inline: Any) -> list[Any]:
    """`middleware` (Starlette `Middleware` entries) with every `BaseHTTPMiddleware` run in line where `inline` says."""
    from flwr.supercore.protobuf import translation

    base_http_middleware = vars(translation)["BaseHTTPMiddleware"]  # Starlette's, as Flower's middlewares use it
    return [type(m)(_InlineHTTPMiddleware, base=m.cls, args=m.args, kwargs=m.kwargs, inline=inline)
            if isinstance(m.cls, type) and issubclass(m.cls, base_http_middleware) else m for m in middleware]


NODE_KEY_CURVES = ("P-256", "P-384")  # fl.node_key; P-384 is what Flower 1.42 generates


def node_key(curve: str) -> bool:
    """In a SuperNode mlfo forked: the key it makes for itself when it registers with its SuperLink (Flower's
    self-registration: a fresh key per SuperNode process, never stored) is on `curve`.

    The SuperNode signs a timestamp with that key on every Fleet API request and the SuperLink checks the signature
    (Flower's node authentication, unchanged). Flower 1.42 makes a P-384 key; on P-256 a signature and its check take
    0.13 ms instead of 0.90 ms here, and a client-round of the seed's experiment makes 18 signed requests. The SuperLink
    takes any NIST curve (its own check, `uses_nist_ec_curve`); P-256 keeps 128-bit security. "P-384" (or another
    Flower) leaves Flower's key as it is. Returns whether it changed anything."""
    if curve not in NODE_KEY_CURVES:
        raise ValueError(f"unknown node key curve {curve!r}: one of {', '.join(NODE_KEY_CURVES)}")
    if curve == "P-384" or not tested_flower():
        return False
    from cryptography.hazmat.primitives.asymmetric import ec

    connection, _ = _flower_function("flwr.supernode.fleet_http_connection", "generate_key_pairs", "makes its node key",
                                     "fl.node_key", PINNED + ", or set fl.node_key: P-384")

    def generate_key_pairs() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
        private = ec.generate_private_key(ec.SECP256R1())
        return private, private.public_key()

    setattr(connection, "generate_key_pairs", generate_key_pairs)  # noqa: B010  (this module only)
    return True


def lean_supernode_middleware() -> bool:
    """In a SuperNode mlfo forked: its Runtime API (the ClientApp tasks' pulls, objects and pushes) runs Flower's two
    middlewares (error translation, protobuf translation) in line for unary protobuf calls (`_InlineHTTPMiddleware`).
    Only on the tested Flower, in this process; returns whether it applies."""
    if not tested_flower():
        return False
    from flwr.supernode import main as supernode_main

    flower_create_app = supernode_main.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = flower_create_app(*args, **kwargs)
        if app.middleware_stack is None:
            app.user_middleware = _inlined(list(app.user_middleware), _unary_protobuf(lambda path: False))
            _sync_work_in_line(_THREADPOOL_USERS)
        return app

    setattr(supernode_main, "create_app", create_app)  # noqa: B010
    return True


def lean_superlink_middleware() -> bool:
    """In a SuperLink mlfo forked: the Fleet and Runtime requests skip the middlewares that do nothing for them.

    Flower 1.42 serves every API of the SuperLink from one FastAPI app with eight middlewares, each a Starlette
    `BaseHTTPMiddleware` (a task group and a stream copy per request). Five look only at Control API paths (no-cache
    headers on sensitive routes, account authentication, the licence check, the Control event log) or do nothing
    without an event-log plugin (the Fleet event log). Every SuperNode's pull, object and push and every ServerApp
    call crosses all eight: 1.2-1.4 ms of the SuperLink's CPU per request, 0.65 ms across the other three (measured
    in process on Flower's app). Here Control requests still take the whole stack; the others take the stack
    without those five (the Fleet event log stays when a plugin is set). Error translation, the protobuf
    translation and the SuperNode signature check stay on every request, run in line for unary protobuf calls
    (`_InlineHTTPMiddleware`). Only on the tested Flower, in this process; returns whether it applies."""
    if not tested_flower():
        return False
    from flwr.superlink import main as superlink_main
    from flwr.superlink.routers.control import middlewares as control
    from flwr.superlink.routers.fleet.middlewares import FleetEventLogMiddleware

    control_only = {control.ControlSensitiveResponseMiddleware, control.ControlAuthenticationMiddleware,
                    control.ControlLicenseMiddleware, control.ControlEventLogMiddleware}
    flower_create_app = superlink_main.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = flower_create_app(*args, **kwargs)
        passing = set(control_only)
        if getattr(app.state, "fleet_event_log_plugin", None) is None:
            passing.add(FleetEventLogMiddleware)
        whole = list(app.user_middleware)
        lean = [m for m in whole if cast(Any, m.cls) not in passing]
        if len(lean) == len(whole) or app.middleware_stack is not None:
            return app  # nothing to skip, or the app was started already: Flower's own stack
        app.user_middleware = _inlined(lean, _unary_protobuf(control._is_control_path))
        _sync_work_in_line(_THREADPOOL_USERS)
        lean_stack = app.build_middleware_stack()
        app.user_middleware = whole
        app.middleware_stack = cast(Any, _ControlApartStack(app.build_middleware_stack(), lean_stack, control._is_control_path))
        return app

    setattr(superlink_main, "create_app", create_app)  # noqa: B010
    return True


class TaskEnded(Exception):
    """A ClientApp task run by `run_clientapp` in a process kept for many (`keep_clientapp_process`) ended with `code`:
    what `flwr_exit` would have ended a process of its own with."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def keep_clientapp_process() -> bool:
    """In a process that runs one SuperNode's ClientApp tasks one after another: Flower's `run_clientapp` ends its task
    without ending the process.

    Flower 1.42's `run_clientapp` is one task's process: it registers its end (push the task's final status, stop its
    heartbeat, close its client) as exit handlers, installs signal handlers, and ends with `flwr_exit`, which runs
    those handlers, starts a thread that kills the process 5 s later, and exits. Here, in that module only,
    `flwr_exit` runs the same handlers (Flower's `trigger_exit_handlers`, both phases, so the SuperNode gets the
    task's status as before) and raises `TaskEnded(code)` instead; and the signal handlers are not installed (the
    process keeps its own: SIGTERM ends it, the task in flight with it). Everything else of the task is Flower's: the
    Runtime API pulls, the FAB, loading the app, the heartbeat, the reply's push. Only on the tested Flower; returns
    whether it applies."""
    if not tested_flower():
        return False
    from flwr.supercore.exit import exit_handler

    module = importlib.import_module("flwr.supernode.runtime.run_clientapp")  # the module (its package exports the function)
    if not callable(getattr(module, "flwr_exit", None)) or not callable(getattr(module, "register_signal_handlers", None)):
        raise MissingDependencyError("Flower's ClientApp runtime ends its tasks elsewhere: mlfo's fl.clientapp_processes "
                                     "does not fit it", hint="install the Flower version mlfo pins (flwr==1.42.*), or set "
                                     "fl.clientapp_processes: per-message")

    def end_task(code: int, *args: Any, **kwargs: Any) -> None:
        exit_handler.trigger_exit_handlers(run_before_force_exit=True)
        exit_handler.trigger_exit_handlers(run_before_force_exit=False)
        raise TaskEnded(code)

    def add_exit_handlers(*args: Any, exit_handlers: list[Any] | None = None, **kwargs: Any) -> None:
        for handler in exit_handlers or []:
            exit_handler.add_exit_handler(handler)

    setattr(module, "flwr_exit", end_task)  # noqa: B010  (that module only)
    setattr(module, "register_signal_handlers", add_exit_handlers)  # noqa: B010
    return True


# A pulled message whose objects are not all stored yet (the sender pushes the message first, then its objects) is
# asked again after this, doubling up to Flower's cap; Flower's first wait is 1 s.
OBJECT_PULL_FIRST_WAIT = 0.05
_OBJECT_PULLERS = ("flwr.supercore.inflatable.inflatable_utils",  # the ClientApp's pull of its message
                   "flwr.superlink.grid.http_grid",  # the ServerApp's pull of the replies
                   "flwr.supernode.start_client_internal")  # the SuperNode's pull of a message from the SuperLink


def quick_object_pulls() -> bool:
    """In the shared executor, before it forks anything: in every ServerApp, SuperNode and ClientApp process it forks,
    an object that is not there yet is asked for again after OBJECT_PULL_FIRST_WAIT, not Flower's 1 s.

    Flower stores a message before its objects arrive: a SuperNode pushes its reply, then the reply's objects, and a
    ServerApp that pulls replies in between (woken by another client's reply) finds the message and waits a whole
    second for an object pushed a few milliseconds later; so does a SuperNode that pulls a message while the ServerApp
    still pushes its objects. That second was the upload phase of every other round of one cohort on loopback. The
    retries, their cap, their limits and the requests are Flower's. Only on the tested Flower; returns whether it
    applies."""
    if not tested_flower():
        return False
    for name in _OBJECT_PULLERS:
        module, flower_pull = _flower_function(name, "pull_objects", "pulls objects", "quick object pulls")
        if getattr(flower_pull, "_mlfo_quick", False):
            continue

        def pull_objects(*args: Any, _flower_pull: Any = flower_pull, initial_backoff: float = OBJECT_PULL_FIRST_WAIT,
                         **kwargs: Any) -> Any:
            return _flower_pull(*args, initial_backoff=min(initial_backoff, OBJECT_PULL_FIRST_WAIT), **kwargs)

        pull_objects._mlfo_quick = True  # type: ignore[attr-defined]
        setattr(module, "pull_objects", pull_objects)  # noqa: B010  (that module only)
    return True


_STATE_MODULE = "flwr.supercore.corestate.in_memory_corestate"


def repeatable_object_pushes() -> bool:
    """In the shared executor, before it forks anything: in every SuperLink and SuperNode it forks (their in-memory
    state, Flower's `InMemoryCoreState`), an object push that finds the same object stored already counts as stored.

    Flower stores a pushed object only while it is pending in an open push session, and ends the session when its
    last object is stored. A push whose answer is lost (the request reached the state, the answer did not reach the
    pusher) is retried by Flower's client, and the retry found its object no longer pending, or its session ended:
    `stored=False`, and the pusher raises `ObjectPushError`, which ended a ServerApp's run (one cohort in some 110
    cohort runs of the seed bench; what lost those answers is mended in `fl/wire.py: checked_expiry`, and this stays
    for any other lost answer: a timeout, a reset). An object's ID is the hash of its content, and the content compared here is the
    whole object: a repeated push of what is stored is answered as the first one was. A push that Flower refuses for
    any other reason (an expired session, whose objects are gone; an object it never asked for and does not hold)
    is refused as before. Only on the tested Flower; returns whether it applies."""
    if not tested_flower():
        return False
    state_class, flower_store = _flower_function(_STATE_MODULE, "InMemoryCoreState.store_object", "stores pushed objects",
                                                 "repeatable object pushes")
    if getattr(flower_store, "_mlfo_repeatable", False):
        return True

    def store_object(self: Any, run_id: int, session_id: str, object_id: str, object_content: bytes) -> bool:
        if flower_store(self, run_id, session_id, object_id, object_content):
            return True
        held = self.object_store.get(object_id)  # b"" while it is pending, None when it is not there at all
        return bool(held) and held == object_content

    store_object._mlfo_repeatable = True  # type: ignore[attr-defined]
    setattr(state_class, "store_object", store_object)  # noqa: B010  (this process and the ones it forks)
    return True


_RETRY_MODULE = "flwr.supercore.retry.http_retry"
RETRY_FAILURE = "Connection attempt failed with exception"


def logged_retries() -> bool:
    """In the shared executor, before it forks anything: every ServerApp, SuperNode and ClientApp process it forks
    logs why a Flower HTTP request failed before Flower retries it, at WARNING beside Flower's own "Connection attempt
    failed, retrying" line, instead of at DEBUG (dropped at Flower's INFO level).

    A retry can find its work done: a ServerApp's object push whose first attempt stored the last object and lost its
    answer is retried into a closed push session (`ObjectPushError`, the run ends). That cost one cohort in some 110
    cohort runs of the seed bench, and no log said what the first attempt met. Only on the tested Flower; returns
    whether it applies."""
    if not tested_flower():
        return False
    module, flower_log = _flower_function(_RETRY_MODULE, "log", "logs", "retry log")
    if getattr(flower_log, "_mlfo_retries", False):
        return True

    def log(level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level == logging.DEBUG and str(msg).startswith(RETRY_FAILURE):
            level = logging.WARNING
        flower_log(level, msg, *args, **kwargs)

    log._mlfo_retries = True  # type: ignore[attr-defined]
    setattr(module, "log", log)  # noqa: B010  (that module only)
    return True
