"""ONOS 2.6 REST: a low-level client (one method per endpoint) and the meter driver on top of it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests
from requests.auth import HTTPBasicAuth

from mlfo_toolkit.config import OnosSettings
from mlfo_toolkit.errors import RemoteError, UnreachableError, error_for_status
from mlfo_toolkit.meters.plan import FlowSpec, MeterSpec


class OnosClient:
    """Maps 1:1 onto the ONOS endpoints mlfo uses; errors carry the HTTP status and ONOS's message."""

    def __init__(self, settings: OnosSettings, timeout: float = 10.0) -> None:
        self.base = settings.url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = HTTPBasicAuth(settings.user, settings.password)
        self.session.headers.update({"Content-Type": "application/json", "Accept": "application/json"})
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise UnreachableError(f"cannot reach ONOS at {self.base}", hint="is ONOS running? check onos.url in the config") from None
        except requests.Timeout:
            raise UnreachableError(f"ONOS at {self.base} did not answer within {self.timeout:.0f} s") from None
        if response.status_code < 400:
            return response
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text[:300]
        text = f"ONOS answered {response.status_code} to {method} {path}: {message}"
        raise error_for_status(response.status_code, text, auth_hint="check onos.user / onos.password (MLFO_ONOS__PASSWORD)")

    @staticmethod
    def _device(device_id: str) -> str:
        return quote(device_id, safe="")

    @staticmethod
    def _id_from_location(response: requests.Response) -> int:
        location = response.headers.get("Location", "")
        tail = location.rstrip("/").rsplit("/", 1)[-1]
        if not tail.isdigit():
            raise RemoteError(f"ONOS answered {response.status_code} without an id in Location ('{location}')", status=response.status_code)
        return int(tail)  # Location carries the id in decimal

    # meters
    def post_meter(self, device_id: str, body: dict[str, Any]) -> int:
        return self._id_from_location(self._call("POST", f"/meters/{self._device(device_id)}", json=body))

    def get_meters(self, device_id: str) -> list[dict[str, Any]]:
        meters = self._call("GET", f"/meters/{self._device(device_id)}").json().get("meters", [])
        for meter in meters:
            meter["id"] = int(str(meter["id"]), 16)  # GET answers carry the id in hex
        return list(meters)

    def delete_meter(self, device_id: str, meter_id: int) -> None:
        self._call("DELETE", f"/meters/{self._device(device_id)}/{meter_id}")

    # flows
    def post_flow(self, device_id: str, app_id: str, body: dict[str, Any]) -> int:
        return self._id_from_location(
            self._call("POST", f"/flows/{self._device(device_id)}", params={"appId": app_id}, json=body)
        )

    def delete_flow(self, device_id: str, flow_id: int) -> None:
        self._call("DELETE", f"/flows/{self._device(device_id)}/{flow_id}")

    # applications
    def activate(self, app: str) -> None:
        self._call("POST", f"/applications/{quote(app, safe='')}/active")


def meter_body(spec: MeterSpec) -> dict[str, Any]:
    """POST /meters body: KB_PER_SEC is OpenFlow's KBPS (kilobits per second)."""
    return {
        "deviceId": spec.device_id,
        "unit": "KB_PER_SEC",
        "burst": True,
        "bands": [{"type": "DROP", "rate": spec.rate_kbps, "burstSize": spec.burst_kbits, "prec": 0}],
    }


def flow_body(spec: MeterSpec, flow: FlowSpec, meter_id: int) -> dict[str, Any]:
    """POST /flows body: match (IN_PORT | IPV4_DST) on IPv4, then METER and OUTPUT."""
    criteria: list[dict[str, Any]] = [{"type": "ETH_TYPE", "ethType": "0x800"}]
    if flow.in_port is not None:
        criteria.insert(0, {"type": "IN_PORT", "port": flow.in_port})
    if flow.ipv4_dst is not None:
        criteria.append({"type": "IPV4_DST", "ip": f"{flow.ipv4_dst}/32"})
    return {
        "priority": flow.priority,
        "timeout": 0,
        "isPermanent": True,
        "deviceId": spec.device_id,
        "treatment": {
            "instructions": [{"type": "METER", "meterId": meter_id}, {"type": "OUTPUT", "port": str(flow.output_port)}],
            "deferred": [],
        },
        "selector": {"criteria": criteria},
    }


class OnosMeterDriver:
    """Meters through ONOS: ids come from ONOS (Location headers) and are recorded for removal."""

    name = "onos"

    def __init__(self, settings: OnosSettings, client: OnosClient | None = None) -> None:
        self.settings = settings
        self.client = client or OnosClient(settings)

    def apply(self, spec: MeterSpec) -> dict[str, Any]:
        meter_id = self.client.post_meter(spec.device_id, meter_body(spec))
        flow_ids = []
        try:
            for flow in spec.flows:
                flow_ids.append(self.client.post_flow(spec.device_id, self.settings.app_id, flow_body(spec, flow, meter_id)))
        except Exception:
            self.remove({"device_id": spec.device_id, "meter_id": meter_id, "flow_ids": flow_ids})
            raise
        return {"switch": spec.switch, "device_id": spec.device_id, "meter_id": meter_id, "flow_ids": flow_ids, "flows": len(flow_ids)}

    def remove(self, record: dict[str, Any]) -> None:
        # Only the flows and the meter mlfo recorded: never DELETE /flows/application/{appId}.
        for flow_id in record.get("flow_ids", []):
            self.client.delete_flow(record["device_id"], flow_id)
        self.client.delete_meter(record["device_id"], record["meter_id"])

    def observe(self, device_id: str) -> dict[str, Any]:
        return {"meters": self.client.get_meters(device_id)}
