"""A stand-in for ONOS 2.6.0's REST API, behaving as its contract says (ONOS cannot run here).

Contract (tests/contracts/onos, from ONOS 2.6.0's web/api): 201 + Location with decimal ids on POST,
hex ids in GET answers, 204 on DELETE, 400 for an unknown device, 401 for bad credentials, JSON errors.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

from tests.helpers.fakehttp import FakeApi, Request, Response


class FakeOnos:
    def __init__(self, devices: list[str], *, user: str = "onos", password: str = "rocks", first_meter_id: int = 1) -> None:
        self.devices = set(devices)
        self.credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.meters: dict[str, dict[int, dict[str, Any]]] = {d: {} for d in devices}
        self.flows: dict[str, dict[int, dict[str, Any]]] = {d: {} for d in devices}
        self.free_ids: dict[str, list[int]] = {d: [] for d in devices}
        self.counters = {d: itertools.count(first_meter_id) for d in devices}
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.calls: list[tuple[str, str]] = []
        self.activated: list[str] = []
        api = FakeApi()
        base = "/onos/v1"

        def error(status: int, message: str) -> Response:
            return Response(status, {"code": status, "message": message})

        def guard(request: Request) -> Response | None:
            self.calls.append((request.method, request.path))
            if request.headers.get("authorization") != f"Basic {self.credentials}":
                return error(401, "Unauthorized")
            return None

        @api.route("POST", base + "/meters/{device}")
        def post_meter(request: Request) -> Response:
            if (denied := guard(request)) is not None:
                return denied
            device, body = request.params["device"], request.json()
            self.bodies.append(("meter", body))
            if device not in self.devices or body.get("deviceId", device) != device:
                return error(400, "Invalid deviceId in meter creation request")
            if body.get("unit") not in ("KB_PER_SEC", "PKTS_PER_SEC") or not body.get("bands"):
                return error(400, "Invalid meter: unit and bands are required")
            meter_id = self.free_ids[device].pop(0) if self.free_ids[device] else next(self.counters[device])
            self.meters[device][meter_id] = body
            return Response(201, "", {"Location": f"http://127.0.0.1/onos/v1/meters/{device}/{meter_id}"})

        @api.route("GET", base + "/meters/{device}")
        def get_meters(request: Request) -> Response:
            if (denied := guard(request)) is not None:
                return denied
            device = request.params["device"]
            listed = [
                {"id": format(i, "x"), "deviceId": device, "appId": "org.onosproject.rest", "unit": m["unit"], "burst": m.get("burst", False),
                 "state": "ADDED", "life": 1, "refCount": 0, "packets": 0, "bytes": 0,
                 "bands": [{**b, "packets": 0, "bytes": 0} for b in m["bands"]]}
                for i, m in sorted(self.meters.get(device, {}).items())
            ]
            return Response(200, {"meters": listed})

        @api.route("DELETE", base + "/meters/{device}/{meter_id}")
        def delete_meter(request: Request) -> Response:
            if (denied := guard(request)) is not None:
                return denied
            device, meter_id = request.params["device"], int(request.params["meter_id"])  # decimal
            if self.meters.get(device, {}).pop(meter_id, None) is not None:
                self.free_ids[device].append(meter_id)
            return Response(204, "")

        @api.route("POST", base + "/flows/{device}")
        def post_flow(request: Request) -> Response:
            if (denied := guard(request)) is not None:
                return denied
            device, body = request.params["device"], request.json()
            self.bodies.append(("flow", body))
            if device not in self.devices or body.get("deviceId", device) != device:
                return error(400, "Invalid deviceId in flow creation request")
            app = request.query.get("appId", "org.onosproject.rest")
            flow_id = (0x00AB << 48) | (hash((device, repr(body["selector"]), body["priority"])) & 0xFFFFFFFF)
            self.flows[device][flow_id] = {**body, "appId": app}
            return Response(201, "", {"Location": f"http://127.0.0.1/onos/v1/flows/{device}/{flow_id}"})

        @api.route("DELETE", base + "/flows/{device}/{flow_id}")
        def delete_flow(request: Request) -> Response:
            if (denied := guard(request)) is not None:
                return denied
            device = request.params["device"]
            if not self.flows.get(device):
                return error(404, "Device has no flow entries")
            self.flows[device].pop(int(request.params["flow_id"]), None)
            return Response(204, "")

        @api.route("DELETE", base + "/flows/application/{app}")
        def delete_app_flows(request: Request) -> Response:
            if (denied := guard(request)) is not None:
                return denied
            for flows in self.flows.values():
                flows.clear()  # what ONOS does: every flow of that app, everywhere
            return Response(204, "")

        @api.route("POST", base + "/applications/{app}/active")
        def activate(request: Request) -> Response:
            if (denied := guard(request)) is not None:
                return denied
            self.activated.append(request.params["app"])
            return Response(200, {"name": request.params["app"], "state": "ACTIVE"})

        self.server = api.serve()
        self.url = f"http://{self.server.address}/onos/v1"

    def close(self) -> None:
        self.server.close()
