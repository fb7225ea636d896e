"""uvicorn under every mlfo service: in the foreground, or on a thread that `close()` ends at once."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from anyio import to_thread
from uvicorn.server import HANDLED_SIGNALS

from mlfo_toolkit.errors import ConfigError, ConflictError
from mlfo_toolkit.util.ticks import Ticks

log = logging.getLogger(__name__)

# Idle keep-alive connections are closed after this many seconds (longer than the MLFO's client checks, every
# 5 s: with uvicorn's 5 s each check made a new connection, and its old one waited out TIME_WAIT); a request's head has
# `request_seconds` (api.request_seconds) to arrive once its connection is open (`_SlowRequestGuard`),
# and its body as long again from then (the BodyLimit middleware).
KEEP_ALIVE_SECONDS = 15
REQUEST_HEAD_SECONDS = 10.0


def _raise_fd_limit() -> None:
    """Many idle or half-open connections cost a file descriptor each; use all the process may have."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
        except (ValueError, OSError):
            pass


class _QuietServer(uvicorn.Server):
    """uvicorn, waking once a second instead of ten times when idle (and at once to stop); each wake-up also closes
    the connections whose request head is overdue (`_SlowRequestGuard`).

    An idle uvicorn ticks every 0.1 s; measured here that is 2 % of a core per process, and the seed's
    network runs 58 of them (one per agent and MLFO): more than half of this 2-core machine. The guard had a
    wake-up of its own each second, and each tick made a task (`Ticks`): 60 idle servers in one process used
    0.023 cores so, 0.016 now.
    """

    def __init__(self, config: uvicorn.Config, request_seconds: float) -> None:
        super().__init__(config)
        self._ticks = Ticks()
        self._guard = _SlowRequestGuard(self, request_seconds)

    async def main_loop(self) -> None:
        ticks = 0
        while not await self.on_tick(ticks * 10):  # on_tick refreshes the Date header every 10th tick
            ticks = (ticks + 1) % 86_400
            self._guard.look()
            await self._ticks.sleep(1.0)

    def wake(self) -> None:
        """Let main_loop see should_exit now (callable from any thread)."""
        self._ticks.wake()

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._ticks.wake()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Nothing here: in the main thread `HttpServer.serve_forever` hands the stop signals to `handle_exit` from
        before the event loop starts, and raises the signal again once the loop has closed (uvicorn's own version
        raised it inside the loop, where mlfo's handler, SIGTERM as KeyboardInterrupt, would end it mid-task)."""
        yield


class HttpServer:
    """One ASGI app on one listening socket; the port is known before serving starts (port 0 works)."""

    def __init__(self, app: Any, host: str, port: int, *, threads: int = 8, request_seconds: float = REQUEST_HEAD_SECONDS) -> None:
        _raise_fd_limit()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except socket.gaierror as err:
            self._socket.close()
            raise ConfigError(f"cannot listen on {host}:{port}: the host name does not resolve ({err.strerror})",
                              hint="give an IP address of this machine, e.g. 127.0.0.1") from None
        except OSError as err:
            self._socket.close()
            if err.errno == errno.EADDRINUSE:
                raise ConflictError(f"cannot listen on {host}:{port}: the port is in use",
                                    hint="stop what listens there, or give another --port") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}", hint="give an address of this machine") from None
        self._socket.listen(1024)
        self._socket.set_inheritable(False)
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        self.threads = threads
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=2,
            lifespan="off",
            server_header=False,
            proxy_headers=False,
            ws="none",
            http="h11",  # _SlowRequestGuard reads its connection state
            h11_max_incomplete_event_size=64 * 1024,
        )
        self._server = _QuietServer(config, request_seconds)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve in this thread until `close()` (or, in the main thread, SIGINT/SIGTERM, which is then raised again
        once the server has shut down, as uvicorn does, but outside its event loop).

        In the main thread a stop signal asks the server to stop (uvicorn's handler) from before the event loop starts:
        mlfo's own handler (SIGTERM as KeyboardInterrupt) could otherwise fire while the loop was starting, before
        uvicorn installed its handler, and the KeyboardInterrupt was logged and lost there. A fresh-clone test run had
        `mlfo agent` still serving 30 s after its SIGTERM (found still serving later; a second SIGTERM stopped it)."""
        if threading.current_thread() is not threading.main_thread():
            asyncio.run(self._serve())
            return
        previous = {sig: signal.signal(sig, self._server.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            asyncio.run(self._serve())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for captured in reversed(self._server._captured_signals):
            signal.raise_signal(captured)

    async def _serve(self) -> None:
        # Sync routes run in anyio's worker threads; size them like the service asks.
        to_thread.current_default_thread_limiter().total_tokens = max(self.threads, 4)
        await self._server.serve(sockets=[self._socket])

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self.serve_forever, name=f"http-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def request_stop(self) -> None:
        """Ask the server to stop (it closes its connections within about 0.1 s); `close()` waits for it."""
        self._server.should_exit = True
        self._server.wake()

    def close(self) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._socket.close()


def close_all(servers: list[HttpServer]) -> None:
    """Stop several servers at once: each takes uvicorn's 0.1 s to close its connections, in parallel."""
    for server in servers:
        server.request_stop()
    for server in servers:
        server.close()


class _SlowRequestGuard:
    """Closes connections whose request head has not fully arrived `seconds` after it began; `look()` once a second.

    uvicorn times out idle keep-alive connections but waits for ever on a request sent a byte at a
    time (slowloris). Every half-sent request holds a connection; this frees them.
    """

    def __init__(self, server: uvicorn.Server, seconds: float) -> None:
        self.server = server
        self.seconds = seconds
        self.first_seen: dict[int, float] = {}

    def look(self) -> None:
        now = time.monotonic()
        alive = set()
        for protocol in list(self.server.server_state.connections):
            key = id(protocol)
            alive.add(key)
            if not _waiting_for_request(protocol):
                self.first_seen.pop(key, None)
                continue
            started = self.first_seen.setdefault(key, now)
            if now - started > self.seconds:
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.close()
        for key in set(self.first_seen) - alive:
            self.first_seen.pop(key, None)


def _waiting_for_request(protocol: Any) -> bool:
    """Whether a uvicorn h11 connection is between requests without its keep-alive timer running:
    a new connection that has sent nothing or part of a head, or a half-sent second request."""
    cycle = getattr(protocol, "cycle", None)
    between = cycle is None or bool(getattr(cycle, "response_complete", False))
    return between and getattr(protocol, "timeout_keep_alive_task", None) is None
