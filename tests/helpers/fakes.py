"""A stand-in node agent speaking the agent's HTTP contract, for MLFO tests that need no Flower."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.helpers.fakehttp import FakeApi, Request, Response


class FakeAgent:
    """Records /serv and /cli calls; its FL server reports two rounds and 'done' once started."""

    def __init__(self, token: str | None = None, final_state: str = "done") -> None:
        self.serv_calls: list[dict[str, Any]] = []
        self.cli_calls: list[dict[str, Any]] = []
        self.stop_calls: list[str | None] = []
        self.final_state = final_state
        self.server_stopped = False
        self.cli_delay = 0.0  # seconds each /cli takes (a SuperNode that starts slowly)
        self.status_delay = 0.0  # seconds a /status answer takes to arrive, after it was made (a slow agent)
        self.cli_started = False
        # The rounds its FL server reports (a test may add some), and the run changes it was sent.
        self.rounds: list[dict[str, Any]] = [{"round": 1, "loss": 0.9, "accuracy": 0.7, "time": 0},
                                             {"round": 2, "loss": 0.4, "accuracy": 0.9, "time": 0}]
        self.control_calls: list[dict[str, Any]] = []
        self.report_clients = False  # list the clients it started as running in /status (else none: they show lost)
        self.waits = False  # hold a /status?rounds_after=N&wait=S answer as the real agent does (else answer at once)
        self.lock = threading.Lock()
        api = FakeApi(token)

        @api.route("POST", "/serv")
        def serv(request: Request) -> Response:
            fields, _ = request.form()
            with self.lock:
                self.serv_calls.append(fields)
                self.server_stopped = False
            return Response(201, {"server": f"127.0.0.1:{6000 + len(self.serv_calls)}"})

        @api.route("POST", "/cli")
        def cli(request: Request) -> Response:
            self.cli_started = True
            time.sleep(self.cli_delay)
            fields, _ = request.form()
            with self.lock:
                self.cli_calls.append(fields)
            return Response(201, {"client": f"fake-client-{len(self.cli_calls)}", "pid": None})

        @api.route("GET", "/status")
        def status(request: Request) -> dict[str, Any]:
            # Like the real agent, it holds its answer until a later round, the run's end or `wait` (if asked to).
            if self.waits and "rounds_after" in request.query:
                after, deadline = int(request.query["rounds_after"]), time.monotonic() + float(request.query["wait"])
                while (len(self.rounds) <= after and self.final_state == "running" and not self.server_stopped
                       and not self.control_calls and time.monotonic() < deadline):
                    time.sleep(0.02)
            if not self.serv_calls or self.server_stopped:
                time.sleep(self.status_delay)
                return {"server": None, "clients": []}
            rounds = list(self.rounds)
            stop = next((c["stop"] for c in self.control_calls if c.get("stop")), None)
            clients = [{"name": f"fake-client-{i + 1}", "state": "running"} for i in range(len(self.cli_calls))] if self.report_clients else []
            if stop:  # mlfo's ServerApp ends the run when the MLFO says stop
                return {"server": {"address": f"127.0.0.1:{6000 + len(self.serv_calls)}", "deployment": self.serv_calls[-1].get("deployment", ""),
                                   "state": "done", "reason": stop, "rounds": rounds}, "clients": clients}
            return {
                "server": {
                    "address": f"127.0.0.1:{6000 + len(self.serv_calls)}",
                    "deployment": self.serv_calls[-1].get("deployment", ""),
                    "state": self.final_state,
                    "reason": None if self.final_state == "done" else "boom",
                    "rounds": rounds,
                },
                "clients": clients,
            }

        @api.route("POST", "/control")
        def control(request: Request) -> dict[str, Any]:
            changes = request.json()
            with self.lock:
                self.control_calls.append(changes)
            return {"deployment": changes.get("deployment"), "control": {k: v for k, v in changes.items() if k != "deployment"}}

        @api.route("POST", "/stop")
        def stop(request: Request) -> dict[str, Any]:
            deployment = request.query.get("deployment")
            self.stop_calls.append(deployment)
            if self.serv_calls and deployment in (None, self.serv_calls[-1].get("deployment")):
                self.server_stopped = True
            return {"stopped": []}

        self.server = api.serve()
        self.address = self.server.address

    def close(self) -> None:
        self.server.close()
