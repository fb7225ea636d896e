"""A cohort's FL server forked by the shared executor: Flower's SuperLink, and its ServerApp without a SuperExec.

Flower's `flower-superlink` (subprocess isolation, its default) starts a `flower-superexec` beside
itself, which asks the SuperLink for a ServerApp task every second and starts a `flwr-serverapp`
process for it: two more Pythons that import Flower (1.2 s of CPU each), and a poll per cohort for
as long as the SuperLink lives. The executor (mlfo_toolkit.fl.executor) instead forks one process
per SuperLink into the FL server's host, which

* forks Flower's own `flower-superlink` with `--isolation process` (Flower then waits for someone
  else to take the ServerApp's task, as it does for a SuperExec of one's own);
* takes that task itself with Flower's `AcquireTask`, as `flower-superexec` does: every
  ASK_SECONDS until the first run came, then every IDLE_ASK_SECONDS while no ServerApp runs, never
  while one does;
* forks Flower's own `run_serverapp` for it, with the task's token, tied to the SuperLink's PID.

Both are children of this process, so the agent's view of the server (one process tree: its CPU,
and which of its connections are the clients') is what it was. It stops both when it gets SIGTERM
and ends with the SuperLink's exit code. Nothing here is imported anew: the executor imported it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from queue import Queue
from typing import Any

import setproctitle

from mlfo_toolkit.fl.polls import lean_superlink_middleware, quiet_uvicorn
from mlfo_toolkit.util.forks import exit_code, fork_child

log = logging.getLogger(__name__)

ASK_SECONDS = 0.2  # until the run's ServerApp task came (`flwr run` submits it about a second after /serv) ...
FAST_ASK_WINDOW = 60.0  # ... for at most this long after the start; then every IDLE_ASK_SECONDS
IDLE_ASK_SECONDS = 5.0  # after a run ended: another run on the same SuperLink is not mlfo's way, but Flower allows it
STOP_SECONDS = 2.0  # each of the two: the agent's stop kills this process after 5 s (its children die with it)
_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)


def _fork(title: str, body: Callable[[], int]) -> int:
    """A child tied to this process (SIGTERM if it is SIGKILLed), with the signals this process waits for unblocked."""

    def child() -> int:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the parent blocks these to wait for them
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        setproctitle.setproctitle(title)
        return body()

    return fork_child(child, tied=True)


def _superlink(arguments: list[str]) -> int:
    from flwr.superlink.cli.flower_superlink import flower_superlink

    quiet_uvicorn(importlib.import_module("flwr.superlink.cli.flower_superlink"))  # the module (its package exports the function)
    lean_superlink_middleware()

    sys.argv = ["flower-superlink", *arguments]
    return exit_code(flower_superlink)


def _serverapp(runtime: str, token: str, superlink: int) -> int:
    """Flower's `flwr-serverapp`, minus its start: the same runtime call with the same log mirroring."""
    from flwr.supercore.logger import mirror_output_to_queue, restore_output
    from flwr.superlink.runtime import run_serverapp

    queue: Queue[str | None] = Queue()
    mirror_output_to_queue(queue)
    try:
        return exit_code(lambda: run_serverapp(runtime_api_address=runtime, log_queue=queue, token=token, insecure=True,
                                               certificates=None, parent_pid=superlink, runtime_dependency_install=False))
    finally:
        restore_output()


def runtime_client(address: str) -> Any:
    """A client of a Runtime API (a SuperNode's, or a SuperLink's), as flower-superexec makes it."""
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])


def _ask(runtime: str) -> str | None:
    """The token of a ServerApp task waiting at the SuperLink, if there is one (None also when it does not answer yet)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    client = runtime_client(runtime)
    try:
        answer = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP.value]))
    except Exception as err:  # noqa: BLE001 - starting, or going: ask again later
        log.debug("AcquireTask at %s failed: %s", runtime, err)
        return None
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return str(answer.token) if answer.HasField("task") and answer.token else None


def run_link(name: str, runtime: str, arguments: list[str]) -> int:
    """Run the SuperLink (`flower-superlink ARGUMENTS`, which must include `--isolation process`) and its ServerApps."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    superlink = _fork(f"flower-superlink [mlfo executor] {name}", functools.partial(_superlink, arguments))
    serverapp: int | None = None
    code: int | None = None
    started = ask_at = time.monotonic()
    ask_every = ASK_SECONDS
    while code is None:
        if ask_every == ASK_SECONDS and time.monotonic() - started > FAST_ASK_WINDOW:
            ask_every = IDLE_ASK_SECONDS  # no run came (its `flwr run` failed?): no fast asks for ever
        if serverapp is None and time.monotonic() >= ask_at:
            token = _ask(runtime)
            if token is not None:
                serverapp = _fork(f"flwr-serverapp [mlfo executor] {name}", functools.partial(_serverapp, runtime, token, superlink))
                ask_every = IDLE_ASK_SECONDS
            ask_at = time.monotonic() + ask_every
        wait = max(0.0, ask_at - time.monotonic()) if serverapp is None else None
        received = signal.sigtimedwait(_SIGNALS, wait if wait is not None else 3600.0)
        if received is not None and received.si_signo in (signal.SIGTERM, signal.SIGINT):
            break
        while True:  # reap whatever ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == superlink:
                code = os.waitstatus_to_exitcode(status)
            elif pid == serverapp:
                serverapp = None
                ask_at = time.monotonic() + ask_every
    _stop([pid for pid in (serverapp, superlink if code is None else None) if pid is not None])
    return code if code is not None else -signal.SIGTERM


def _stop(pids: list[int]) -> None:
    """One after the other (the ServerApp first: it pushes its output to the SuperLink on the way out): SIGTERM,
    Flower's own shutdown, then SIGKILL after STOP_SECONDS."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        try:
            while os.waitpid(pid, os.WNOHANG)[0] == 0:
                if time.monotonic() >= deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
        except (ChildProcessError, ProcessLookupError):
            continue
