"""A stand-in node agent speaking the agent's HTTP contract, for MLFO tests that need no Flower."""

from __future__ import annotations

import threading
from typing import Any

from tests.helpers.fakehttp import FakeApi, Request, Response


class FakeAgent:
    """Records /serv and /cli calls; its FL server reports two rounds and 'done' once started."""

    def __init__(self, token: str | None = None, final_state: str = "done") -> None:
        self.serv_calls: list[dict[str, Any]] = []
        self.cli_calls: list[dict[str, Any]] = []
        self.stop_calls: list[str | None] = []
        self.final_state = final_state
        self.lock = threading.Lock()
        api = FakeApi(token)

        @api.route("POST", "/serv")
        def serv(request: Request) -> Response:
            fields, _ = request.form()
            with self.lock:
                self.serv_calls.append(fields)
            return Response(201, {"server": f"127.0.0.1:{6000 + len(self.serv_calls)}"})

        @api.route("POST", "/cli")
        def cli(request: Request) -> Response:
            fields, _ = request.form()
            with self.lock:
                self.cli_calls.append(fields)
            return Response(201, {"client": f"fake-client-{len(self.cli_calls)}", "pid": None})

        @api.route("GET", "/status")
        def status(request: Request) -> dict[str, Any]:
            if not self.serv_calls:
                return {"server": None, "clients": []}
            rounds = [{"round": 1, "loss": 0.9, "accuracy": 0.7, "time": 0}, {"round": 2, "loss": 0.4, "accuracy": 0.9, "time": 0}]
            return {
                "server": {
                    "address": f"127.0.0.1:{6000 + len(self.serv_calls)}",
                    "state": self.final_state,
                    "reason": None if self.final_state == "done" else "boom",
                    "rounds": rounds,
                },
                "clients": [],
            }

        @api.route("POST", "/stop")
        def stop(request: Request) -> dict[str, Any]:
            self.stop_calls.append(request.query.get("deployment"))
            return {"stopped": []}

        self.server = api.serve()
        self.address = self.server.address

    def close(self) -> None:
        self.server.close()
