"""Flower's HTTP requests and answers, each in one write: fewer packets through the emulated switches.

Flower 1.42 speaks protobuf over HTTP/1.1 (httpx on the client side, uvicorn on the server side), and
both write a message in two parts: httpcore sends a request's headers (some 750 bytes with a
SuperNode's signature) and then its body; uvicorn writes an answer's status line and headers, then
its body. On a TCP connection that has been quiet for longer than its retransmission timeout the
receiver acknowledges every segment at once, and the client's socket (no TCP_NODELAY) holds the body
until the headers are acknowledged: counted at a SuperLink's port in the seed's experiment (`topo up
5`), some 8 packets per Fleet request, 4 of them bare acknowledgements, each crossing five Open vSwitch
bridges. OVS's userspace datapath pays per packet and per wake-up, and the body's wait is a round trip
through all five.

In the processes mlfo's executor forks (SuperLinks, SuperNodes, ServerApps, ClientApps, `flwr run`):

* `whole_requests`: the clients Flower's `ProtobufClient` makes collect a request's writes and send
  them as one when the connection next reads (the answer), with TCP_NODELAY;
* `whole_answers`: uvicorn's HTTP protocols write an answer's head together with its body, as one
  write, when they write the body;
* `checked_expiry`: httpcore's pool never closes a connection a request just started on (Flower's
  object pulls and pushes share a client two at a time).

The bytes on the wire, the requests and their order are Flower's; only how many writes carry them
changes. A write larger than WHOLE_LIMIT goes as it is (no copy of a large model).

They also keep an idle connection longer, the server longer than its clients. Both of Flower's sides
keep one 5 s (uvicorn's and httpx's defaults), and a SuperNode's requests come a round apart, about as
long: a client that took up a connection just as the server closed it saw "server disconnected" and
Flower retried after up to 2 s (4-20 times a run of the seed bench, in the SuperNodes and ClientApps).
A client here drops an idle connection after CLIENT_KEEP_ALIVE, before the server's SERVER_KEEP_ALIVE,
so a request never meets a connection its server is closing, and a round reuses the last round's.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
from collections.abc import Iterable
from typing import Any

from mlfo_toolkit.errors import MissingDependencyError
from mlfo_toolkit.fl.polls import tested_flower

WHOLE_LIMIT = 256 * 1024  # bytes: a write at least this large is sent at once (after what was collected before it)
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
CLIENT_KEEP_ALIVE = 60.0  # seconds a client keeps an idle connection (httpx: 5)
SERVER_KEEP_ALIVE = 75  # seconds a server keeps an idle connection (uvicorn: 5); longer than its clients'


class _WholeWrites:
    """An httpcore network stream whose writes wait for the next read (or a large write), then go as one."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._pending: list[bytes] = []

    def _flush(self, timeout: float | None) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending = []
            self._stream.write(data, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if len(buffer) >= WHOLE_LIMIT:
            self._flush(timeout)
            self._stream.write(buffer, timeout)
        elif buffer:
            self._pending.append(buffer)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._flush(timeout)
        return bytes(self._stream.read(max_bytes, timeout))

    def close(self) -> None:
        self._pending = []  # a request whose answer is never read is abandoned with its connection
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> _WholeWrites:
        self._flush(kwargs.get("timeout"))
        return _WholeWrites(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _WholeWritesBackend:
    """httpcore's network backend, its TCP connections with TCP_NODELAY and _WholeWrites streams."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> _WholeWrites:
        options = [*(socket_options or ()), NO_DELAY]
        return _WholeWrites(self._backend.connect_tcp(host, port, timeout, local_address, options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> _WholeWrites:
        return _WholeWrites(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def whole_request_writes(client: Any) -> bool:
    """Give an httpx.Client's own connection pool (not a proxy's) whole-request writes and CLIENT_KEEP_ALIVE; whether
    it could."""
    pool: Any = getattr(getattr(client, "_transport", None), "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if pool is None or backend is None or not hasattr(backend, "connect_tcp"):
        return False
    if not isinstance(backend, _WholeWritesBackend):
        pool._network_backend = _WholeWritesBackend(backend)
    pool._keepalive_expiry = CLIENT_KEEP_ALIVE
    return True


def whole_requests() -> bool:
    """Every `ProtobufClient` Flower makes in this process (and the processes forked from it) writes a request once.
    Only on the tested Flower; refused loudly where its client is made elsewhere or httpx keeps no pool mlfo knows."""
    if not tested_flower():
        return False
    module = importlib.import_module("flwr.supercore.protobuf.client")
    client_class = getattr(module, "ProtobufClient", None)
    flower_init = getattr(client_class, "__init__", None)
    if client_class is None or flower_init is None:
        raise MissingDependencyError("Flower's protobuf client is made elsewhere: mlfo's whole-request writes do not fit it",
                                     hint="install the Flower version mlfo pins (flwr==1.42.*)")
    if getattr(flower_init, "_mlfo_whole", False):
        return True
    # Made as Flower makes it for the insecure links mlfo runs (no connection yet; verify=True would load the CA bundle,
    # 45-70 ms of the executor's start): its pool is where mlfo looks.
    probe = client_class("http://127.0.0.1:9", verify=False)
    try:
        fits = whole_request_writes(getattr(probe, "_client", None))
    finally:
        probe.close()
    if not fits:
        raise MissingDependencyError("this httpx keeps its connections where mlfo's whole-request writes do not reach",
                                     hint="install the httpx and httpcore Flower 1.42 installs (httpx<1, httpcore<2)")

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        flower_init(self, *args, **kwargs)
        whole_request_writes(getattr(self, "_client", None))

    init._mlfo_whole = True  # type: ignore[attr-defined]
    client_class.__init__ = init
    return True


def checked_expiry() -> bool:
    """In this process (and the processes forked from it): httpcore's connection pool decides that a connection is
    "expired" (its keep-alive ran out, or its server closed it) while nobody can start a request on it.

    httpcore 1.0's pool looks at its connections in every pass (each request's start and end, in any thread): one that
    is idle and whose socket is readable is taken for closed by its server, and closed. The pass reads the state and
    polls the socket apart, without the connection's own lock; a thread that was just given that connection can set it
    active, send its request and get the answer in between, and the pass closes the socket under the answer:
    `[Errno 9] Bad file descriptor` for the reader, retried by Flower. Flower's object pulls and pushes run two at a
    time on one client, so the seed bench met it about once a run; when the request was an object push that the
    server had stored, the retry met `ObjectPushError` and the run ended. Here the check holds the connection's lock,
    the one a request takes to set it active: the pass sees a connection either idle (nothing sent on it yet) or
    active (left alone). Returns whether it applies (httpcore 1.x, where that lock is)."""
    import httpcore  # in the executor only: the CLI's commands do not load it
    from httpcore._sync.http11 import HTTP11Connection

    httpcore_check = getattr(HTTP11Connection, "has_expired", None)
    if not httpcore.__version__.startswith("1.") or not callable(httpcore_check):
        return False
    if getattr(httpcore_check, "_mlfo_checked", False):
        return True

    def has_expired(self: Any) -> bool:
        lock = getattr(self, "_state_lock", None)
        if lock is None:
            return bool(httpcore_check(self))
        with lock:
            return bool(httpcore_check(self))

    has_expired._mlfo_checked = True  # type: ignore[attr-defined]
    setattr(HTTP11Connection, "has_expired", has_expired)  # noqa: B010  (this process and the ones it forks)
    return True


class _WholeAnswers:
    """uvicorn's transport, where an answer's head (its status line and headers, one write) waits for the answer's
    first body write and goes with it as one write, in the same step: an answer is written when uvicorn writes it,
    never later. A head with no body write in the same step (a HEAD answer, a stream's first chunk still to come)
    goes on its own at the event loop's next turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if len(data) < WHOLE_LIMIT:
                self._transport.write(head + bytes(data))
                return
            self._transport.write(head)
        elif bytes(data[:9]) == b"HTTP/1.1 " and bytes(data[9:10]) != b"1":  # a final answer's head (not 100 Continue)
            self._head = bytes(data)
            self._loop.call_soon(self._release)
            return
        self._transport.write(data)

    def _release(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def write_eof(self) -> None:
        self._release()
        self._transport.write_eof()

    def close(self) -> None:
        self._release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_UVICORN_PROTOCOLS = (("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
                      ("uvicorn.protocols.http.h11_impl", "H11Protocol"))


def whole_answers() -> bool:
    """uvicorn's HTTP protocols (httptools, h11) in this process write an answer's head and body as one write, and keep
    an idle connection SERVER_KEEP_ALIVE. Only on the tested Flower, with `whole_requests` (both halves were measured
    together); whether it applied to any protocol (one whose module is missing is skipped)."""
    if not tested_flower():
        return False
    applied = False
    for module_name, class_name in _UVICORN_PROTOCOLS:
        try:
            protocol = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        made = protocol.connection_made
        if getattr(made, "_mlfo_whole", False):
            applied = True
            continue

        def connection_made(self: Any, transport: asyncio.Transport, _made: Any = made) -> None:
            self.timeout_keep_alive = max(self.timeout_keep_alive, SERVER_KEEP_ALIVE)
            _made(self, _WholeAnswers(transport, asyncio.get_running_loop()))

        connection_made._mlfo_whole = True  # type: ignore[attr-defined]
        protocol.connection_made = connection_made
        applied = True
    return applied
