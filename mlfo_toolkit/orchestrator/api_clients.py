"""HTTP clients of mlfo's own APIs (node agent, cloud MLFO's Mo-Mo, campus MLFO): one method per endpoint,
errors carrying the HTTP status. Build them with `southbound()` (agents and the cloud, with the southbound
token) or `campus_client()` (the intent API, with api.token); both are context managers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import SlowAnswerError, UnreachableError, ValidationError, error_for_status

Client = TypeVar("Client", bound="ApiClient")


class ApiClient:
    """Base: a requests session with bearer token, timeouts and retried connects."""

    service = "service"

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 10.0, retries: int = 2):
        self.address = address
        self.base_url = address if address.startswith(("http://", "https://")) else f"http://{address}"
        self.timeout = timeout
        self.session = requests.Session()
        # Retry only the connect: a POST that reached the server must not be sent twice.
        retry = Retry(total=retries, connect=retries, read=0, status=0, backoff_factor=0.3, allowed_methods=None)
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self: Client) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self.base_url.rstrip("/") + path
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.ConnectionError as err:
            reason = getattr(err.args[0], "reason", None) if err.args else None
            if isinstance(reason, ReadTimeoutError):  # connected, then no answer: requests calls that a ConnectionError
                raise self._slow(method, path, kwargs["timeout"]) from None
            raise UnreachableError(
                f"cannot reach the {self.service} at {self.address}",
                hint=f"is it running? (check the address and port; {method} {path})",
            ) from None
        except requests.Timeout:
            raise self._slow(method, path, kwargs["timeout"]) from None
        except requests.exceptions.ChunkedEncodingError:  # it answered, then died mid-body
            raise UnreachableError(
                f"the {self.service} at {self.address} broke off its answer to {method} {path}",
                hint="it stopped while answering: is it still running?",
            ) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                ValueError) as err:
            raise ValidationError(f"'{self.address}' is not a usable address of the {self.service}: {err}",
                                  field="address", hint="write HOST:PORT, e.g. 127.0.0.1:8000 or [::1]:8000") from None
        return self._handle(response, method, path)

    def _slow(self, method: str, path: str, timeout: float) -> SlowAnswerError:
        return SlowAnswerError(f"the {self.service} at {self.address} did not answer {method} {path} within {timeout:.0f} s")

    def _handle(self, response: requests.Response, method: str, path: str) -> Any:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        if response.ok:
            return body
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        text = f"{self.service} at {self.address} answered {response.status_code} to {method} {path}: {message}"
        hint = body.get("hint") if isinstance(body, dict) else None
        raise error_for_status(response.status_code, text, body=body, hint=hint, auth_hint="check api.token (MLFO_API__TOKEN)")


class AgentClient(ApiClient):
    """The node agent: POST /serv, POST /cli, POST /control, GET /status, POST /stop."""

    service = "node agent"

    def start_server(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/serv", data=_form(fields)))

    def start_client(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/cli", data=_form(fields)))

    def status(self, rounds_after: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        """The agent's FL server and clients. With `rounds_after`, the agent holds its answer (at most `wait`
        seconds) until its FL server has a later round, its run ended or it is gone."""
        if rounds_after is None:
            return dict(self.request("GET", "/status"))
        return dict(self.request("GET", "/status", params={"rounds_after": rounds_after, "wait": f"{wait:.3f}"},
                                 timeout=wait + self.timeout))

    def control(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change a running FL run (JSON: node ids are 64-bit numbers)."""
        return dict(self.request("POST", "/control", json=dict(changes)))

    def capacity(self) -> dict[str, Any]:
        return dict(self.request("GET", "/capacity"))

    def probe(self, target: str, size: int) -> dict[str, Any]:
        return dict(self.request("POST", "/probe", data=_form({"target": target, "bytes": size})))

    def stop(self, deployment: str | None = None, part: int | None = None, edge_run: bool = False) -> dict[str, Any]:
        """Stop the agent's FL processes (only one deployment's if given, only its client `part` if given, only its
        edge aggregator with `edge_run`)."""
        params: dict[str, Any] = {k: v for k, v in (("deployment", deployment), ("part", part)) if v is not None}
        if edge_run:
            params["edge_run"] = "true"
        return dict(self.request("POST", "/stop", params=params or None))


class MomoClient(ApiClient):
    """The cloud MLFO's Mo-Mo API."""

    service = "cloud MLFO"

    def deploy(self, intent: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/momo/deploy", json=intent))

    def release(self, deployment_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/momo/release/{deployment_id}"))


class MlfoClient(ApiClient):
    """The campus MLFO's intent API."""

    service = "MLFO"

    def send_intent(self, intent_yaml: bytes, fields: Mapping[str, Any], filename: str = "intent.yaml") -> dict[str, Any]:
        files = {"file": (filename, intent_yaml, "application/yaml")}
        return dict(self.request("POST", "/receive", data=_form(fields), files=files))

    def deployments(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/deployments")["deployments"])

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/deployments/{deployment_id}"))

    def stop_deployment(self, deployment_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/deployments/{deployment_id}/stop", timeout=max(self.timeout, 60.0)))

    def control(self, deployment_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change the running FL run (POST /deployments/ID/control; see mlfo_toolkit.fl.control)."""
        return dict(self.request("POST", f"/deployments/{deployment_id}/control", json=dict(changes)))

    def restart_client(self, deployment_id: str, part: int, timeout: float = 150.0) -> dict[str, Any]:
        """Start a lost client's SuperNode again (it waits until the SuperNode is up)."""
        return dict(self.request("POST", f"/deployments/{deployment_id}/clients/{part}/restart", timeout=timeout))


def _form(fields: Mapping[str, Any]) -> dict[str, str]:
    """Form fields as the prototype sent them: plain strings, booleans as true/false."""
    out = {}
    for key, value in fields.items():
        if value is None:
            continue
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def southbound(kind: type[Client], address: str, config: Config, *, timeout: float | None = None, retries: int = 2) -> Client:
    """A client of an agent or the cloud MLFO, presenting the southbound token; `timeout` defaults to
    api.timeout_seconds. Use it as a context manager: `with southbound(AgentClient, address, config) as agent:`."""
    client = kind(address, token=config.southbound_token, timeout=timeout or config.api.timeout_seconds, retries=retries)
    # Agents and the cloud MLFO are inside the emulated network, addressed directly: no proxy from the environment,
    # and no ~/.netrc read on every request (a tenth of an idle MLFO's CPU).
    client.session.trust_env = False
    return client


class AgentPool:
    """Clients of the agents an MLFO polls, one per address, kept between polls: each poll reuses the agent's
    keep-alive connection (mlfo's services keep it 15 s) instead of a new session and TCP connect. Safe to share
    between threads (requests' connection pool is)."""

    def __init__(self, config: Config, *, timeout: float) -> None:
        self.config = config
        self.timeout = timeout
        self._clients: dict[str, AgentClient] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> AgentClient:
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = southbound(AgentClient, address, self.config, timeout=self.timeout, retries=0)
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def campus_client(config: Config, address: str | None = None, *, timeout: float | None = None, retries: int = 2) -> MlfoClient:
    """A client of a campus MLFO's intent API (default: mlfo.host:mlfo.port), presenting api.token."""
    return MlfoClient(address or f"{config.mlfo.host}:{config.mlfo.port}", token=config.api.token,
                      timeout=timeout or config.api.timeout_seconds, retries=retries)
