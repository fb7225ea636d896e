"""Start mlfo's own services inside emulated hosts by forking one pre-imported Python process.

`topo up 5` starts 57 services (an agent on every FL host, the MLFOs). Started one by one, each is a
new Python that imports mlfo, click, pydantic, requests and the HTTP stack again: about a CPU
second each, most of `topo up`'s time on two cores. This launcher imports all of that once, then
forks one child per service. The child does what `python -m mlfo_toolkit.net.inhost` does for a
program (its own session, its log, the host's cgroups and network namespace), then runs mlfo's
CLI with the service's arguments: the same code as `mlfo agent` or `mlfo serve`, without the
imports. The children also share the launcher's memory pages until they write to them.

Protocol (no shell, no pickles): one JSON object per line on stdin, each
`{"args": [...mlfo CLI args...], "log": PATH, "env": {...}, "cgroups": [...], "pid": HOST_PID,
"title": "..."}`; for each, one line on stdout: `{"pid": N, "create_time": T}` or `{"error": "..."}`.
The launcher exits at the end of its input; its children, in sessions of their own, keep running
(they are recorded by PID, and stopped by PID, as any service).

    python -m mlfo_toolkit.cli.launcher < requests.jsonl
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
from typing import Any

import psutil
import setproctitle

from mlfo_toolkit.util.forks import exit_code, fork_child
from mlfo_toolkit.util.linux import enter_network_namespace, join_cgroup
from mlfo_toolkit.util.processes import start_time


def preload() -> None:
    """Import what `mlfo agent` and `mlfo serve` import at start, so that no child imports it again."""
    import mlfo_toolkit.cli.main  # noqa: F401 - the CLI and its commands
    import mlfo_toolkit.http.agent_service  # noqa: F401 - `mlfo agent`
    from mlfo_toolkit import api  # noqa: F401 - `mlfo serve` (both MLFOs, their stores, the HTTP layer)

    # What the services import only once they run: FastAPI's check of each route's types (pydantic.v1), and the
    # server's protocol, event-loop backend and lifespan. Each of the 57 children imported them itself: 0.14 CPU s
    # of an agent's 0.43 to listening.
    for module in ("pydantic.v1", "pydantic._internal._dataclasses", "anyio._backends._asyncio", "h11", "uvicorn.lifespan.off", "uvicorn.lifespan.on",
                   "uvicorn.protocols.http.h11_impl"):
        importlib.import_module(module)
    # The agents' form schemas (their API documentation), generated once here for every child.
    from mlfo_toolkit.agent.node import ClientStartParams, ProbeParams, ServerStartParams
    from mlfo_toolkit.http.forms import form_schema

    for model in (ServerStartParams, ClientStartParams, ProbeParams):
        form_schema(model, with_file=False)


def _child(request: dict[str, Any]) -> int:
    """In the forked child: become the service inside its host, then run mlfo's CLI; its exit code."""
    os.setsid()  # its own session: stopping it never signals the launcher or `topo up`
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.environ.update({str(k): str(v) for k, v in request.get("env", {}).items()})
    for cgroup in request.get("cgroups", []):
        join_cgroup(cgroup)
    enter_network_namespace(int(request["pid"]))
    setproctitle.setproctitle(str(request.get("title") or "mlfo " + " ".join(request["args"])))
    from mlfo_toolkit.cli.main import cli
    from mlfo_toolkit.util.signals import terminate_as_interrupt

    sys.argv = ["mlfo", *request["args"]]
    with terminate_as_interrupt():
        return exit_code(lambda: cli.main(args=list(request["args"]), prog_name="mlfo"))


def launch(request: dict[str, Any]) -> dict[str, Any]:
    """Fork the service of one request; the child never returns here."""
    if not isinstance(request.get("args"), list) or not request.get("log") or not isinstance(request.get("pid"), int):
        return {"error": "a request needs args (a list), log and pid"}
    sys.stdout.flush()
    pid = fork_child(lambda: _child(request))
    return {"pid": pid, "create_time": start_time(pid)}


def main() -> None:
    preload()
    gc.collect()
    gc.freeze()  # what is loaded now stays shared with every child (the GC does not touch its pages)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = launch(json.loads(line))
        except (ValueError, OSError, psutil.Error) as err:
            answer = {"error": str(err)}
        print(json.dumps(answer), flush=True)
    # Children that already ended are zombies of this process until it exits; init reaps them then.


if __name__ == "__main__":
    main()
