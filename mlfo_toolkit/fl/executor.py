"""One long-lived executor for every FL client of a machine (`python -m mlfo_toolkit.fl.executor`).

Flower's default deployment gives every SuperNode a process of its own, a `flower-superexec` next to
it, and a fresh `flwr-clientapp` process for every message: a Python start and the Flower, NumPy and
scikit-learn imports each time (SCALE.md: about 2.5 s and 220 MB per message, ~94 MB and ~2.5 CPU-s
per SuperNode). Flower lets someone else run the ClientApps (`flower-supernode --isolation process`);
this executor does, and starts the SuperNodes too, with everything imported once:

* a node agent writes a registration file (the SuperNode's arguments, its own PID) into the
  executor's folder;
* the executor forks Flower's own `flower-supernode` from itself into the agent's host: its network
  namespace and CPU cgroup (the agent's), in a session of its own;
* it asks each SuperNode for tasks with Flower's `AcquireTask` (as `flower-superexec` does), at once
  when the SuperNode's log grew (it logs every message it pulls), else every few seconds;
* each task runs Flower's own `run_clientapp`, which pulls the message from the SuperNode and pushes
  the reply back, in a child forked from the executor that joins the same host: one child kept for
  the SuperNode, which runs its tasks one after another (`clientapp_processes: per-node`, the
  default), or a child per task (`per-message`);
* an FL server agent's registration of kind "superlink" is forked the same way into the server's host,
  where it runs Flower's own `flower-superlink` and takes its ServerApp task (mlfo_toolkit.fl.link): a
  SuperLink is up in a fraction of a second instead of the 1.5 s a new Python takes to import it,
  and its ServerApp starts without a SuperExec. The executor polls nothing for it.

So the FL traffic still leaves from each client's own host (the SuperNode runs there and talks to the
SuperLink), the training CPU is charged to the client host's cgroup, and the Runtime API stays on the
host's loopback: nothing of it crosses the emulated links. A registration without SuperNode
arguments is served the same way for a SuperNode someone else started.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import setproctitle

from mlfo_toolkit.errors import UnreachableError
from mlfo_toolkit.fl.anatomy import TRAIN_END, TRAIN_PART, TRAIN_START
from mlfo_toolkit.fl.data import load_dataset_apart
from mlfo_toolkit.fl.link import run_link, runtime_client
from mlfo_toolkit.fl.polls import (
    TaskEnded,
    keep_clientapp_process,
    lean_supernode_middleware,
    logged_retries,
    node_key,
    quick_object_pulls,
    quicken_supernode,
    quiet_telemetry,
    quiet_uvicorn,
    repeatable_object_pushes,
    tested_flower,
)
from mlfo_toolkit.fl.wake import EXECUTOR_SOCKET, Waker, WakeSocket, node_socket, remove_names_of
from mlfo_toolkit.fl.wire import checked_expiry, whole_answers, whole_requests
from mlfo_toolkit.util.files import write_json_atomically
from mlfo_toolkit.util.forks import exit_code, fork_child
from mlfo_toolkit.util.linux import CLONE_NEWNET, cpu_cgroup, join_cgroup, memory_cgroup, namespace_inode, setns
from mlfo_toolkit.util.processes import ManagedProcess, same_process, start_time, tool_env

# Flower is imported inside functions on purpose: agents import this module (for Registration and
# Spawned) and must not pay Flower's import; the executor process imports it once, in preload().

log = logging.getLogger(__name__)

REGISTRATION_SUFFIX = ".json"
# Each loop looks at every SuperNode's log size (cheap); one whose log grew is asked for a task at
# once, the others every DEFAULT_IDLE_POLL_SECONDS. Asking all 50 every 0.25 s cost half a core.
DEFAULT_POLL_SECONDS = 0.1
DEFAULT_IDLE_POLL_SECONDS = 5.0
DEFAULT_MAX_CHILDREN = 64
# With a wake-up socket (mlfo_toolkit.fl.wake) SuperNodes and agents say when there is work, so the loop
# only looks at the logs and the folder this often; a SuperNode with wake-ups is asked unprompted every
# WAKE_IDLE_POLL_SECONDS.
WAKE_LOOP_SECONDS = 0.5
NO_TASK = 3  # a child that asked its SuperNode for a task and got none
EXIT_NOTE_SECONDS = 1.0  # how long a handle waits for the executor to note how a process it started ended
WAKE_IDLE_POLL_SECONDS = 30.0


@dataclass(frozen=True)
class Registration:
    """A SuperNode the executor serves."""

    name: str
    runtime: str  # HOST:PORT of its Runtime API, as seen from inside its own network namespace
    pid: int  # the SuperNode's PID: its network namespace and CPU cgroup are its host's
    flwr_home: str  # where the child installs the run's FAB
    log: str  # the child's output goes here
    watch: str = ""  # the SuperNode's own log: when it grows, a message may have arrived (poll it now)
    # When set, the executor starts the SuperNode itself (`flower-supernode` with these arguments),
    # forked like a task: `pid` is then the owner (the agent) whose host the SuperNode joins, and
    # the SuperNode stops when its owner is gone or the registration is removed.
    spawn: list[str] = field(default_factory=list)
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)
    # The spawned SuperNode's polls while busy (mlfo_toolkit.fl.polls); 0: Flower's own 3 s.
    poll_seconds: float = 0.0
    poll_hot_seconds: float = 30.0
    # The cohort's wake-up folder (mlfo_toolkit.fl.wake): the spawned SuperNode waits there instead of
    # sleeping Flower's 3 s, and tells the executor and the ServerApp when it has work done. "": none.
    wake_dir: str = ""
    # [source, data_dir] of mlfo's own app: loaded once here, so every task inherits it instead of loading it again.
    dataset: list[str] = field(default_factory=list)
    # The curve of the spawned SuperNode's own node key (mlfo_toolkit.fl.polls.node_key); "": Flower's.
    node_key: str = ""
    # Its ClientApp tasks: "per-message", a child forked for each (a fresh process per message, as Flower's
    # SuperExec starts them); "per-node", one child forked for the SuperNode and kept, which runs them one after
    # another (as the long-running `flwr-clientapp` of Flower's process isolation did before its SuperExec).
    clientapp_processes: str = "per-message"
    # "supernode"; "superlink": `spawn` holds `flower-superlink`'s arguments, `runtime` its Runtime API
    # (mlfo_toolkit.fl.link); "flwr-run": `spawn` holds the arguments of a `flwr` command. Only SuperNodes are polled.
    kind: str = "supernode"


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a killed agent nobody has reaped yet is a zombie, and gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def register(directory: Path, registration: Registration) -> Path:
    """Announce a SuperNode to the executor serving `directory` (atomic: never half-read)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{registration.name}{REGISTRATION_SUFFIX}"
    write_json_atomically(path, asdict(registration))
    _wake_executor(directory)
    return path


def unregister(directory: Path, name: str) -> None:
    for suffix in (REGISTRATION_SUFFIX, ".exited"):
        (directory / f"{name}{suffix}").unlink(missing_ok=True)
    _wake_executor(directory)


def _wake_executor(directory: Path) -> None:
    """Tell the executor the folder changed (it looks at least every WAKE_LOOP_SECONDS anyway)."""
    waker = Waker(directory)
    try:
        waker.wake_socket(EXECUTOR_SOCKET, b"?")
    finally:
        waker.close()


class Spawned:
    """The agent's handle on a SuperNode or SuperLink the executor started: watched and stopped by PID.

    It offers what the agent uses of a ManagedProcess: running(), returncode(), stop(), tail().
    """

    def __init__(self, name: str, directory: Path, pid: int, create_time: float, log_path: Path,
                 tool: str = "flower-supernode") -> None:
        self.name = f"{tool} {name}"
        self.directory = directory
        self.registration = name
        self.pid = pid
        self.create_time = create_time
        self.log_path = log_path
        self._code: int | None = None

    @classmethod
    def wait_started(cls, directory: Path, name: str, log_path: Path, timeout: float,
                     tool: str = "flower-supernode") -> Spawned:
        """Wait until the executor reports the process of registration `name` started."""
        started = directory / f"{name}.started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = json.loads(started.read_text())
                return cls(name, directory, int(data["pid"]), float(data["create_time"]), log_path, tool)
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        raise UnreachableError(
            f"the shared ClientApp executor did not start {tool} {name} within {timeout:.0f} s",
            hint=f"is the executor serving {directory} running? its log is executor.log beside that folder",
        )

    def running(self) -> bool:
        return same_process(self.pid, self.create_time)

    def returncode(self) -> int | None:
        if self._code is not None:
            return self._code
        if self.running():
            return None
        deadline = time.monotonic() + EXIT_NOTE_SECONDS
        while True:  # the executor notes the exit when it reaps the process: a moment after it ended
            try:
                self._code = int(json.loads((self.directory / f"{self.registration}.exited").read_text())["code"])
            except (OSError, ValueError, KeyError):
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                self._code = -1  # gone, and the executor has not said how
            return self._code

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (a SuperNode leaves its SuperLink cleanly; a SuperLink stops its SuperExec), then SIGKILL after `timeout`."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running():
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + timeout
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_executor(directory: Path, log_path: Path, *, parent_pid: int | None = None) -> Any:
    """Start `mlfo executor` serving `directory` as a managed child (a ManagedProcess)."""
    argv = [sys.executable, "-m", "mlfo_toolkit.fl.executor", "--dir", str(directory.resolve())]
    if parent_pid is not None:
        argv += ["--parent-pid", str(parent_pid)]
    return ManagedProcess("clientapp executor", argv, log_path=log_path, env=tool_env(), cwd=log_path.parent)


@dataclass
class _Served:
    """One registration and what the executor keeps for it."""

    registration: Registration
    mtime: int
    namespace_fd: int | None  # None: the executor's own namespace
    cgroup: str | None  # None: the executor's own cgroup
    memory_cgroup: str | None = None  # the host's memory cgroup, where it has one (device profiles)
    client: Any = None
    retry_at: float = 0.0
    next_poll: float = 0.0
    watched_size: int = -1
    spawned: int | None = None  # the SuperNode (or SuperLink) this executor started for the registration
    woken: bool = False  # the SuperNode said it stored a message (wake-up): a child picks the task up
    pickup: int | None = None  # PID of the child that asks this SuperNode for its task itself
    worker: int | None = None  # PID of the child kept to run this SuperNode's tasks (clientapp_processes: per-node)
    inbox: int | None = None  # the write end of its pipe: "?" (ask the SuperNode for a task) or a task's token, a line each

    def due(self, now: float, woken: bool = False) -> bool:
        """Poll now if the SuperNode's log grew (it logs every message it pulls) or it was idle too long. A SuperNode
        that says when it stored a message (`woken`: wake-ups) is only asked when it was idle too long: it grows its
        log on every pull and every reply, and asking it then (in the executor's own loop) finds its task before the
        forked child the wake-up starts would, or finds nothing."""
        if self.retry_at > now:
            return False
        if woken:
            return now >= self.next_poll
        if self.registration.watch:
            try:
                size = os.stat(self.registration.watch).st_size
            except OSError:
                size = -1
            if size != self.watched_size:
                self.watched_size = size
                return True
            return now >= self.next_poll
        return True


class Executor:
    """Polls every registered SuperNode and runs each task in a forked child."""

    def __init__(self, directory: Path, *, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 idle_poll_seconds: float = DEFAULT_IDLE_POLL_SECONDS,
                 max_children: int = DEFAULT_MAX_CHILDREN, parent_pid: int | None = None) -> None:
        self.directory = directory
        self.poll_seconds = poll_seconds
        self.idle_poll_seconds = idle_poll_seconds
        self.max_children = max_children
        self.parent_pid = parent_pid
        self.served: dict[str, _Served] = {}
        self.children: dict[int, str] = {}
        self.spawned: dict[int, str] = {}  # PID -> registration name of the SuperNodes and SuperLinks started here
        self.workers: dict[int, str] = {}  # PID -> registration name of the children kept to run a SuperNode's tasks
        self.keeps_tasks = tested_flower()  # per-node ClientApp processes reach into Flower: only on the tested one
        # Registrations whose SuperNode ended (name -> mtime): never started twice, so a SuperNode that
        # died stays dead (its agent shows it lost) instead of coming back as a second node.
        self.ended: dict[str, int] = {}
        self._stop = False
        self._home_namespace = os.open("/proc/self/ns/net", os.O_RDONLY)
        self._home_inode = namespace_inode("self")
        self._home_cgroup = cpu_cgroup("self")
        self._home_memory_cgroup = memory_cgroup("self")
        self.node_sockets: dict[int, Path] = {}  # PID -> wake-up socket of the SuperNodes started here
        self.wake: WakeSocket | None = None  # SuperNodes that stored a message say so here (their registration's name)

    # --- start-up: everything a child needs, imported once --------------------------------------
    @staticmethod
    def preload() -> None:
        """Import Flower's ClientApp runtime, NumPy and the app, and load the built-in dataset."""
        import flwr.cli.install  # noqa: F401
        import flwr.supernode.cli.flower_supernode  # noqa: F401
        import flwr.supernode.main  # noqa: F401  (the SuperNode's Runtime API app)
        import flwr.supernode.runtime.run_clientapp  # noqa: F401

        # NumPy 2 imports numpy.random on first use (its module __getattr__). Nothing above uses it any more (scikit-learn,
        # which did, now loads the data in a child), so every ClientApp task imported it anew to split its partition:
        # a fifth of a task's samples under py-spy.
        import numpy.random  # noqa: F401

        import mlfo_toolkit.fl.apps  # noqa: F401  (mlfo's Flower app: it imports Flower)

        _preload_superlink()

        load_dataset_apart("handmnist")  # without keeping scikit-learn: every fork from here is cheaper

    # --- registrations ------------------------------------------------------------------------
    def refresh(self) -> None:
        """Follow the folder: new registrations in, removed ones (or dead SuperNodes) out."""
        seen: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name.endswith(REGISTRATION_SUFFIX):
                    with contextlib.suppress(OSError):
                        seen[entry.name] = entry.stat().st_mtime_ns
        for name in list(self.served):
            served = self.served[name]
            if seen.get(name) != served.mtime or not _alive(served.registration.pid):
                self._forget(name)
        for name in list(self.ended):
            if seen.get(name) != self.ended[name]:
                del self.ended[name]  # removed or rewritten: a new registration may start a new SuperNode
        for name, mtime in seen.items():
            if name not in self.served and name not in self.ended:
                self._add(name, mtime)

    def _drop(self, name: str) -> None:
        """Remove the registration of an agent that is gone: nobody else will, and it must not be read again."""
        stem = name.removesuffix(REGISTRATION_SUFFIX)
        for suffix in (REGISTRATION_SUFFIX, ".started", ".exited"):
            (self.directory / f"{stem}{suffix}").unlink(missing_ok=True)

    def _add(self, name: str, mtime: int) -> None:
        try:
            registration = Registration(**json.loads((self.directory / name).read_text()))
            if not _alive(registration.pid):
                log.info("removing %s: its agent (PID %d) is gone", name, registration.pid)
                self._drop(name)
                return
            namespace_fd = None
            if namespace_inode(registration.pid) != self._home_inode:
                namespace_fd = os.open(f"/proc/{registration.pid}/ns/net", os.O_RDONLY)
        except (OSError, ValueError, TypeError) as err:
            log.warning("ignoring registration %s: %s", name, err)
            return
        cgroup = cpu_cgroup(registration.pid)
        memory = memory_cgroup(registration.pid)
        served = _Served(registration, mtime, namespace_fd, None if cgroup == self._home_cgroup else cgroup,
                         None if memory == self._home_memory_cgroup else memory)
        self.served[name] = served
        if len(registration.dataset) == 2:
            try:
                load_dataset_apart(*registration.dataset)
            except Exception as err:  # noqa: BLE001 - the task will say what is wrong with it, to its run
                log.warning("could not load dataset %s for %s: %s", registration.dataset[0], registration.name, err)
        if registration.spawn:
            self._spawn(name, served)
        if registration.kind != "supernode":
            log.info("started %s %s (PID %s)", registration.kind, registration.name, served.spawned)
        else:
            log.info("serving SuperNode %s (Runtime API %s, PID %d)", registration.name, registration.runtime,
                     served.spawned or registration.pid)

    def _spawn(self, name: str, served: _Served) -> None:
        """Fork Flower's SuperNode, SuperLink or `flwr` for a registration that asks for it (Flower is imported here)."""
        run = {"superlink": _run_superlink, "flwr-run": _run_flwr}.get(served.registration.kind)
        # Tied: an executor that is killed takes what it started along (its tasks end with it anyway).
        pid = fork_child(lambda: run(served) if run else _run_supernode(served, self.directory), tied=True)
        served.spawned = pid
        self.spawned[pid] = name
        if served.registration.wake_dir and served.registration.kind == "supernode":
            self.node_sockets[pid] = node_socket(Path(served.registration.wake_dir), pid)
        stem = name.removesuffix(REGISTRATION_SUFFIX)
        write_json_atomically(self.directory / f"{stem}.started", {"pid": pid, "create_time": start_time(pid)})

    def _forget(self, name: str) -> None:
        served = self.served.pop(name)
        self._end_worker(served)
        if served.spawned is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(served.spawned, signal.SIGTERM)  # reaped (and its exit recorded) in reap()
        if served.client is not None:
            with contextlib.suppress(Exception):
                served.client.close()
        if served.namespace_fd is not None:
            os.close(served.namespace_fd)
        log.info("no longer serving %s", served.registration.name)

    # --- the loop -----------------------------------------------------------------------------
    def _client(self, served: _Served) -> Any:
        if served.client is None:
            served.client = runtime_client(served.registration.runtime)
        return served.client

    def poll_once(self) -> int:
        """Ask every served SuperNode for a task; fork a child per task. Returns how many started."""
        started = 0
        now = time.monotonic()
        switched = False
        try:
            for served in list(self.served.values()):
                if len(self.children) >= self.max_children:
                    break
                if served.pickup is not None or served.registration.kind != "supernode":
                    continue  # its child is asking for the task right now; a SuperLink has no tasks
                if served.woken:
                    # A SuperNode that said it has a message: fork first, the child asks for the task from inside
                    # the host. The loop never waits on a SuperNode's answer, so 25 tasks start side by side.
                    served.woken = False
                    served.next_poll = now + WAKE_IDLE_POLL_SECONDS
                    self._hand(served, None)
                    started += 1
                    continue
                wakes = self.wake is not None and bool(served.registration.wake_dir)  # it says when it has a message
                if not served.due(now, woken=wakes):
                    continue
                served.next_poll = now + (WAKE_IDLE_POLL_SECONDS if wakes else self.idle_poll_seconds)
                if served.namespace_fd is not None:
                    # Connections opened now belong to the SuperNode's namespace (its loopback).
                    setns(served.namespace_fd, CLONE_NEWNET)
                    switched = True
                elif switched:
                    setns(self._home_namespace, CLONE_NEWNET)
                    switched = False
                try:
                    token = _acquire(self._client(served))
                except Exception as err:  # a SuperNode starting or gone: try it again a little later
                    log.debug("AcquireTask on %s failed: %s", served.registration.name, err)
                    served.retry_at = now + 1.0
                    if served.client is not None:
                        with contextlib.suppress(Exception):
                            served.client.close()
                        served.client = None
                    continue
                if token is not None:
                    self._hand(served, token)
                    served.watched_size = -1  # look again at the next tick: more tasks may be queued
                    started += 1
        finally:
            if switched:
                setns(self._home_namespace, CLONE_NEWNET)
        return started

    def _hand(self, served: _Served, token: str | None) -> None:
        """Run the task with `token`, or (None) have the SuperNode asked for its task: in a child forked for it, or in
        the child kept for the SuperNode (clientapp_processes: per-node)."""
        if served.registration.clientapp_processes != "per-node" or not self.keeps_tasks:
            pid = self._fork(served, token)
            if token is None:
                served.pickup = pid
            return
        line = (token or "?").encode() + b"\n"
        for _ in range(2):
            if served.worker is None:
                self._keep_worker(served)
            assert served.inbox is not None
            try:
                os.write(served.inbox, line)
                return
            except BlockingIOError:  # 64 KiB of asks it has not read: it is stuck in a task, and will ask when it is not
                log.warning("the ClientApp process of %s is not reading its tasks", served.registration.name)
                return
            except BrokenPipeError:  # it ended and is not reaped yet: a new one takes the task
                log.warning("the ClientApp process of %s is gone: starting another", served.registration.name)
                self._end_worker(served)

    def _fork(self, served: _Served, token: str | None) -> int:
        """A child that runs the task with `token`, or (None) asks the SuperNode for its task first."""
        pid = fork_child(lambda: _run_task(served, token))  # the child never returns into the loop
        self.children[pid] = served.registration.name
        return pid

    def _keep_worker(self, served: _Served) -> None:
        """Fork the child that runs this SuperNode's tasks from now on; it reads them from a pipe."""
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)  # the loop never waits on a busy child
        others = [s.inbox for s in self.served.values() if s.inbox is not None]

        def body() -> int:
            os.close(write_end)
            for fd in others:  # another SuperNode's: only the executor writes to it
                os.close(fd)
            return _serve_tasks(served, read_end)

        # Tied: it ends with the executor (the pipe's write end lives on in the other children forked from it).
        pid = fork_child(body, tied=True)
        os.close(read_end)
        served.worker, served.inbox = pid, write_end
        self.workers[pid] = served.registration.name

    def _end_worker(self, served: _Served) -> None:
        """Stop the child kept for this SuperNode (reaped in reap())."""
        if served.inbox is not None:
            os.close(served.inbox)
            served.inbox = None
        if served.worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(served.worker, signal.SIGTERM)
            served.worker = None

    def reap(self) -> None:
        while self.children or self.spawned or self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                self.spawned.clear()
                self.workers.clear()
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid in self.workers:
                name = self.workers.pop(pid)
                served = self.served.get(name + REGISTRATION_SUFFIX)
                if served is not None and served.worker == pid:  # it ended on its own: the next task forks a new one
                    self._end_worker(served)
                    log.warning("the ClientApp process of %s ended with %d", name, code)
                continue
            if pid in self.spawned:
                name = self.spawned.pop(pid)
                stem = name.removesuffix(REGISTRATION_SUFFIX)
                if (self.directory / name).exists():  # its agent still follows it: say how it ended
                    write_json_atomically(self.directory / f"{stem}.exited", {"pid": pid, "code": code})
                else:
                    (self.directory / f"{stem}.started").unlink(missing_ok=True)
                log.info("%s %s (PID %d) ended with %d", self.served[name].registration.kind if name in self.served
                         else "process", stem, pid, code)
                socket_path = self.node_sockets.pop(pid, None)
                if socket_path is not None:  # a SuperNode killed by a signal never removed its own
                    remove_names_of(socket_path.parent, socket_path)
                    socket_path.unlink(missing_ok=True)
                if name in self.served and self.served[name].spawned == pid:
                    self.ended[name] = self.served[name].mtime
                    self.served[name].spawned = None
                    self._forget(name)
                continue
            name = self.children.pop(pid, "")
            served = self.served.get(name + REGISTRATION_SUFFIX)
            if served is not None and served.pickup == pid:
                served.pickup = None
                if code != NO_TASK:
                    served.watched_size = -1  # it ran a task: ask again at the next tick, more may be queued
            if code not in (0, NO_TASK):
                log.warning("ClientApp task of %s ended with %d", name, code)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or the parent process is gone)."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        self.preload()
        quiet_telemetry()  # after the imports: the modules that took Flower's `event` by name are loaded
        quick_object_pulls()  # once here: every SuperNode, ClientApp and ServerApp process forked from here has it
        logged_retries()  # and logs what a request met before Flower retries it
        repeatable_object_pushes()  # and its SuperLinks and SuperNodes answer a repeated object push as the first
        whole_requests()  # and every Flower HTTP client and server forked from here writes a message once (fl/wire.py)
        whole_answers()
        checked_expiry()  # and no connection is closed under a request that just started on it (fl/wire.py)
        gc.collect()
        gc.freeze()  # what is loaded now stays shared with every forked child (no copy-on-write of its pages by the GC)
        try:
            self.wake = WakeSocket(self.directory / EXECUTOR_SOCKET)
        except OSError as err:  # a folder too deep for a socket path: the log sizes alone tell when to ask
            log.warning("no wake-up socket in %s (%s): asking SuperNodes on their log sizes only", self.directory, err)
        log.info("executor ready, serving registrations in %s", self.directory)
        last_refresh = 0.0
        while not self._stop:
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.info("parent %d is gone: stopping", self.parent_pid)
                break
            if time.monotonic() - last_refresh >= 0.5:
                self.refresh()
                last_refresh = time.monotonic()
            self.reap()
            self.poll_once()
            if self.wake is None:
                time.sleep(self.poll_seconds)
                continue
            for woken in self.wake.wait(WAKE_LOOP_SECONDS):
                served = self.served.get(woken.decode(errors="replace") + REGISTRATION_SUFFIX)
                if served is not None:
                    served.woken = True  # it stored a message: a child picks the task up now
                else:
                    last_refresh = 0.0  # an agent registered or removed a SuperNode: look at the folder now
        self.close()

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop = True

    def close(self, timeout: float = 5.0) -> None:
        """End every running child (tasks and SuperNodes started here), then release the namespaces."""
        for served in self.served.values():
            self._end_worker(served)
        for pid in [*self.children, *self.spawned, *self.workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (self.children or self.spawned or self.workers) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in [*self.children, *self.spawned, *self.workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.reap()
        for name in list(self.served):
            self._forget(name)
        if self.wake is not None:
            self.wake.close()
            self.wake = None
        if self._home_namespace >= 0:
            os.close(self._home_namespace)
            self._home_namespace = -1


def _enter_host(served: _Served, output: str) -> None:
    """In a forked child: default signals, output to `output`, the registration's cgroup and namespace."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    if served.cgroup is not None:
        join_cgroup(served.cgroup)
    if served.memory_cgroup is not None:
        join_cgroup(served.memory_cgroup)
    if served.namespace_fd is not None:
        setns(served.namespace_fd, CLONE_NEWNET)


def _become(served: _Served, title: str, output: str) -> None:
    """In a forked child that runs a Flower process: its title, its own session, the owner's host, folder and environment."""
    # The title first: setproctitle makes room for it in the original environment block, and cannot once
    # os.environ has replaced the strings there.
    setproctitle.setproctitle(title)
    os.setsid()  # its own session: stopping it never signals the executor
    registration = served.registration
    _enter_host(served, output)
    if registration.cwd:
        os.chdir(registration.cwd)
    os.environ.update(registration.env)
    os.environ["PATH"] = tool_env()["PATH"]  # what it starts (Flower's SuperExec, say) is found beside this interpreter


def _run_supernode(served: _Served, executor_dir: Path) -> int:
    """In the forked child: become a SuperNode on the owner's host and run Flower's own `flower-supernode`."""
    registration = served.registration
    _become(served, f"flower-supernode [mlfo executor] {registration.name}", registration.watch or registration.log)
    sys.argv = ["flower-supernode", *registration.spawn]
    # No DEBUG lines of Flower's in the SuperNode's log (they reach the executor's handler, whose logger is at
    # INFO, by propagation): one is written per AcquireTask, and a log that grows on every ask is asked again
    # at once (its growth is how the executor learns of a message): 5 asks a second per idle SuperNode.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.INFO)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    quiet_uvicorn(importlib.import_module("flwr.supernode.cli.flower_supernode"))  # the module (its package exports the function)
    lean_supernode_middleware()
    if registration.node_key:
        node_key(registration.node_key)
    quicken_supernode(registration.poll_seconds, registration.poll_hot_seconds, wake_folder=registration.wake_dir,
                      executor_folder=str(executor_dir), name=registration.name)
    return exit_code(flower_supernode)


def _preload_superlink() -> None:
    """Import what `flower-superlink` runs (its FastAPI app and uvicorn's server), so a fork starts serving at once."""
    import flwr.cli.app  # noqa: F401  (`flwr run`, which submits the run)
    import flwr.supercore.logger  # noqa: F401
    import flwr.superlink.cli.flower_superlink  # noqa: F401
    import flwr.superlink.main  # noqa: F401
    import flwr.superlink.runtime  # noqa: F401  (the ServerApp's runtime)

    # uvicorn picks these when it starts; importing them here keeps the fork from paying for them.
    for module in ("uvicorn.lifespan.on", "uvicorn.loops.auto", "uvicorn.protocols.http.auto",
                   "uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl",
                   "uvicorn.protocols.websockets.auto"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def _run_superlink(served: _Served) -> int:
    """In the forked child: on the owner's host (its namespace and cgroup), run Flower's SuperLink and its ServerApps
    (mlfo_toolkit.fl.link)."""
    registration = served.registration
    _become(served, f"mlfo FL server [mlfo executor] {registration.name}", registration.log)
    logging.getLogger().handlers.clear()  # Flower's and uvicorn's own handlers write its log; the executor's would repeat it
    return run_link(registration.name, registration.runtime, registration.spawn)


def _run_flwr(served: _Served) -> int:
    """In the forked child: Flower's own `flwr` command line (e.g. `flwr run`, which submits an FL run) on the owner's host."""
    registration = served.registration
    _become(served, f"flwr {' '.join(registration.spawn[:1])} [mlfo executor] {registration.name}", registration.log)
    logging.getLogger().handlers.clear()
    from flwr.cli.app import app

    sys.argv = ["flwr", *registration.spawn]
    return exit_code(app)


def _time_training() -> None:
    """In the forked child: note when a train message's ClientApp call began and ended in the reply's
    metrics (`train-start`, `train-end`), as mlfo's own app does, so the round anatomy of an app mlfo did
    not write has its receive, train and upload phases. Only when the reply carries exactly one
    MetricRecord without them; its other keys are untouched."""
    from flwr.clientapp import ClientApp

    call = ClientApp.__call__

    def timed(app: Any, message: Any, context: Any) -> Any:
        started = time.time()
        reply = call(app, message, context)
        ended = time.time()
        if str(message.metadata.message_type).split(".")[0] == "train" and not reply.has_error():
            records = list(reply.content.metric_records.values())
            if len(records) == 1 and TRAIN_START not in records[0]:
                records[0][TRAIN_START], records[0][TRAIN_END] = started, ended
                part = context.node_config.get("partition-id")
                if isinstance(part, int) and TRAIN_PART not in records[0]:
                    records[0][TRAIN_PART] = part
        return reply

    ClientApp.__call__ = timed  # type: ignore[method-assign,assignment]


def _install_each_fab_once() -> None:
    """In the forked child: skip Flower's FAB installation when this FAB is installed already.

    Flower's ClientApp runtime calls `install_from_fab` for every message: it unzips the whole FAB into a temporary
    folder, checks every file's hash and parses its pyproject.toml, and only then sees that the app's folder (named
    by the FAB's hash) exists and returns it. That was a sixth of each task's CPU at the seed's scale. An app folder
    named by the same hash is what Flower itself would return, so it is returned at once."""
    from flwr.common.constant import APP_DIR, FAB_HASH_TRUNCATION
    from flwr.supercore.utils import get_flwr_home

    module = importlib.import_module("flwr.supernode.runtime.run_clientapp")  # the module (its package exports the function)
    install = getattr(module, "install_from_fab", None)
    if install is None:
        return

    def install_once(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(fab_file, bytes):
            digest = hashlib.sha256(fab_file).hexdigest()[:FAB_HASH_TRUNCATION]
            installed = sorted((get_flwr_home() / APP_DIR).glob(f"*.{digest}"))
            if installed:
                return installed[0]
        return install(fab_file, *args, **kwargs)

    setattr(module, "install_from_fab", install_once)  # noqa: B010  (that module only)


def _acquire(client: Any) -> str | None:
    """Ask a SuperNode (its Runtime API `client`) for a ClientApp task, as flower-superexec does: its token, or None."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    answer = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
    return str(answer.token) if answer.HasField("task") and answer.token else None


def _say_where(registration: Registration) -> None:
    """Where a task runs, for anyone checking that the work stayed on the client's host (its log)."""
    print(f"mlfo executor: task for {registration.name} (PID {os.getpid()}) in network namespace {namespace_inode('self')}, "
          f"cpu cgroup {cpu_cgroup('self') or '(the executor s own)'}", flush=True)


def _become_clientapp(served: _Served) -> Registration:
    """In a forked child that runs a SuperNode's ClientApp tasks: its title, the SuperNode's host, its FLWR_HOME."""
    registration = served.registration
    setproctitle.setproctitle(f"flwr-clientapp [mlfo executor] {registration.name}")
    _enter_host(served, registration.log)
    os.environ["FLWR_HOME"] = registration.flwr_home
    served.client = None  # the parent's connection is not the child's to use
    return registration


def _run_task(served: _Served, token: str | None) -> int:
    """In the forked child: become part of the SuperNode's host, then run Flower's ClientApp runtime (with no
    token: ask the SuperNode for its task first, as flower-superexec does; NO_TASK when it has none)."""
    registration = _become_clientapp(served)
    if token is None:
        client = runtime_client(registration.runtime)
        token = _acquire(client)
        client.close()
        if token is None:
            return NO_TASK
    _say_where(registration)
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    _time_training()
    _install_each_fab_once()
    return exit_code(lambda: run_clientapp(runtime_api_address=registration.runtime, token=token, insecure=True))


def _forget_app_modules(apps: str) -> None:
    """Drop the modules of the installed Flower apps (their files under `apps`) that a task imported, so that the next
    task imports its app afresh, as a process of its own would: module-level state does not leak from one message to
    the next, and a run with another version of the app gets its own code (Flower 1.42 loads an app's module once per
    process). What the app imports from elsewhere (NumPy, PyTorch, mlfo) stays imported."""
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(apps):
            del sys.modules[name]


def _serve_tasks(served: _Served, inbox: int) -> int:
    """In the child kept for one SuperNode (clientapp_processes: per-node): in the SuperNode's host, run its ClientApp
    tasks one after another with Flower's own `run_clientapp`, each as a task process of its own would (its pulls, FAB,
    app, heartbeat, reply and final status), until the executor stops it (SIGTERM) or ends (it is tied to it).

    Each line from `inbox` is a task's token, or "?": ask the SuperNode for its task (it said it stored a message).
    A child per message pays for the fork, for copying the pages it writes (every object it touches) and for
    unmapping them at its end, and starts Flower's and the app's code cold every time."""
    registration = _become_clientapp(served)
    from flwr.common.constant import APP_DIR
    from flwr.supercore.utils import get_flwr_home
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    keep_clientapp_process()
    _time_training()
    _install_each_fab_once()
    apps = f"{get_flwr_home() / APP_DIR}{os.sep}"
    client: Any = None
    pending = b""
    while True:
        try:
            data = os.read(inbox, 4096)
        except InterruptedError:
            continue
        if not data:
            return 0  # nobody can write to it any more
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            token: str | None = line.decode(errors="replace")
            if token == "?":
                try:
                    client = client or runtime_client(registration.runtime)
                    token = _acquire(client)
                except Exception as err:  # noqa: BLE001 - a SuperNode going: its wake-ups and the executor's polls ask again
                    log.debug("AcquireTask on %s failed: %s", registration.name, err)
                    with contextlib.suppress(Exception):
                        client.close()
                    client, token = None, None
            if not token:
                continue
            _say_where(registration)
            try:
                run_clientapp(runtime_api_address=registration.runtime, token=token, insecure=True)
                code = 0
            except TaskEnded as ended:
                code = ended.code
            except Exception:  # noqa: BLE001 - Flower's runtime failed outside the app: this task only
                traceback.print_exc()
                code = 1
            if code != 0:
                print(f"mlfo executor: task for {registration.name} ended with {code}", flush=True)
            _forget_app_modules(apps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlfo_toolkit.fl.executor", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="folder the agents write registrations into")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, help="loop interval")
    parser.add_argument("--idle-poll-seconds", type=float, default=DEFAULT_IDLE_POLL_SECONDS,
                        help="how often a SuperNode whose log did not grow is asked for a task")
    parser.add_argument("--max-children", type=int, default=DEFAULT_MAX_CHILDREN)
    parser.add_argument("--parent-pid", type=int, help="stop when this process is no longer the parent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s executor %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    args.dir.mkdir(parents=True, exist_ok=True)
    Executor(args.dir, poll_seconds=args.poll_seconds, idle_poll_seconds=args.idle_poll_seconds,
             max_children=args.max_children, parent_pid=args.parent_pid).run()
    sys.exit(0)


if __name__ == "__main__":
    main()
