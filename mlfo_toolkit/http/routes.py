"""The routes of the three mlfo services, on the prototype's wire format.

Each route reads the request (multipart form, JSON or YAML), hands typed values to the core
(`CampusMlfo`, `CloudMlfo`, `NodeAgent`) and returns what it answers; the core's `MlfoError`s
become HTTP answers through `app.STATUS`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import yaml
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from mlfo_toolkit.agent.node import ClientStartParams, ControlParams, NodeAgent, ServerStartParams
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.http.app import error_response, service_app, token_guard
from mlfo_toolkit.monitoring.metrics import AgentCollector, ServiceMetrics, SocketCollector
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.cloud import CloudMlfo
from mlfo_toolkit.orchestrator.intake import ReceiveParams
from mlfo_toolkit.orchestrator.intents import Intent, parse_intent
from mlfo_toolkit.util.yamlfiles import check_depth, strict_json, validate

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/plain", "")
# A form's text fields hold numbers, names and addresses; only the intent file may be larger.
MAX_FIELD_BYTES = 64 * 1024


class _Unsupported(Exception):
    def __init__(self, content_type: str, hint: str) -> None:
        super().__init__(content_type)
        self.content_type = content_type
        self.hint = hint


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _form(request: Request, *, upload_field: str | None = None) -> tuple[dict[str, str], bytes | None]:
    """Text fields of a form, and the bytes of `upload_field` if the form has it (as file or text)."""
    try:
        form = await request.form(max_files=4, max_fields=64, max_part_size=request.app.state.max_body)
    except MultiPartException as err:
        raise ValidationError(f"malformed form body: {err.message}", field="body") from None
    except (MultipartParseError, UnicodeDecodeError, ValueError) as err:
        # python-multipart's own parse errors: a boundary that does not match, one too long, too many headers.
        raise ValidationError(f"malformed form body: {str(err)[:200] or type(err).__name__}", field="body") from None
    fields: dict[str, str] = {}
    upload: bytes | None = None
    for name, value in form.multi_items():
        data = await value.read() if isinstance(value, UploadFile) else value.encode("utf-8", "surrogateescape")
        if name == upload_field:
            if upload is not None:
                raise ValidationError("is given twice", field=name)
            upload = data
            continue
        if len(data) > MAX_FIELD_BYTES:
            raise ValidationError(f"is {len(data)} bytes; a form field may hold at most {MAX_FIELD_BYTES}", field=name)
        if name in fields:
            raise ValidationError("is given twice", field=name)
        fields[name] = data.decode("utf-8", "replace")
    await form.close()
    return fields, upload


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        data = strict_json(body or b"null")
    except (ValueError, RecursionError) as err:
        raise ValidationError(f"is not valid JSON: {err}" if isinstance(err, ValueError) else "nests too deeply", field="body") from None
    check_depth(data, "body")
    return data


async def _fields(request: Request) -> dict[str, Any]:
    """The fields of an agent request: a form (the prototype) or a JSON object."""
    if _content_type(request) == "application/json":
        body = await _json(request)
        if not isinstance(body, dict):
            raise ValidationError("a JSON body must be an object of fields", field="body")
        return body
    fields, _ = await _form(request)
    return fields


async def _intent_request(request: Request) -> tuple[Intent, dict[str, Any]]:
    """The intent and form fields of a /receive request: multipart (the prototype), YAML or JSON."""
    kind = _content_type(request)
    if kind in FORM_TYPES:
        fields, upload = await _form(request, upload_field="file")
        if upload is None:
            raise ValidationError("the form has no 'file' field holding the intent YAML", field="file")
        return parse_intent(upload, "file"), fields
    if kind == "application/json":
        body = await _json(request)
        if not isinstance(body, dict) or "intent" not in body:
            raise ValidationError('a JSON body must be {"intent": {...}, ...form fields}', field="intent")
        intent_data = body.pop("intent")
        try:
            text = intent_data if isinstance(intent_data, str) else yaml.safe_dump(intent_data)
        except RecursionError:
            raise ValidationError("nests too deeply", field="intent") from None
        return parse_intent(text, "intent"), body
    if kind in YAML_TYPES:
        return parse_intent(await request.body(), "body"), _query_fields(request)
    raise _Unsupported(kind, "send multipart/form-data (curl -F file=@intent.yaml), YAML or JSON")


def _query_fields(request: Request) -> dict[str, str]:
    """The query's fields, each at most once (a second value would silently win)."""
    fields: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in fields:
            raise ValidationError("is given twice in the query", field=name)
        fields[name] = value
    return fields


def _unsupported_handler(app: FastAPI) -> None:
    @app.exception_handler(_Unsupported)
    async def _unsupported(request: Request, err: _Unsupported) -> JSONResponse:
        return error_response(415, f"unsupported Content-Type '{err.content_type}'", hint=err.hint)


def _form_schema(model: type[Any], *, with_file: bool) -> dict[str, Any]:
    """OpenAPI request body of a prototype form, generated from the model that validates it."""
    schema = model.model_json_schema()
    properties = dict(schema.get("properties", {}))
    required = list(schema.get("required", []))
    if with_file:
        properties["file"] = {"type": "string", "format": "binary", "description": "the intent YAML"}
        required.append("file")
    form = {"type": "object", "properties": properties, "required": required}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/json": {"schema": {"type": "object", "properties": properties}},
            },
        }
    }


def _reason(field: str | None, err: Exception) -> str:
    """A low-cardinality rejection reason: the field without indices ('targets.operand'), or the kind."""
    if field:
        return re.sub(r"\[\d+\]", "", field)
    return "malformed"


def campus_app(core: CampusMlfo) -> FastAPI:
    """The campus MLFO's northbound API: intents in, deployments out."""
    config = core.config
    # The intent API needs api.token only if one is set (the prototype's curl sends none); the
    # southbound token, which Prometheus presents, is accepted too.
    app, private = service_app("campus MLFO", role="campus", tokens=(config.api.token, config.southbound_token),
                               max_body=config.api.max_upload_bytes, metrics=core.metrics, request_seconds=config.api.request_seconds)
    if not config.api.token:
        private = token_guard()
    app.state.max_body = config.api.max_upload_bytes
    _unsupported_handler(app)

    @app.post("/receive", status_code=202, dependencies=[private], openapi_extra=_form_schema(ReceiveParams, with_file=True),
              summary="Send an intent (the prototype's multipart form, YAML or JSON)")
    async def receive(request: Request) -> JSONResponse:
        try:
            intent, fields = await _intent_request(request)
            params = validate(ReceiveParams, fields, {}, "form")
            accepted = await run_in_threadpool(core.receive, intent, params)
        except ValidationError as err:
            core.metrics.rejected.labels("campus", _reason(err.field, err)).inc()
            raise
        except _Unsupported:
            core.metrics.rejected.labels("campus", "http_415").inc()
            raise
        return JSONResponse(accepted, status_code=202, headers={"Location": f"/deployments/{accepted['id']}"})

    @app.get("/deployments", dependencies=[private], summary="Deployments, newest last (paged; ?view=summary for a short form)")
    def deployments(limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
                    state: Annotated[str | None, Query(pattern="^(planned|queued|deploying|running|done|failed)$")] = None,
                    view: Annotated[str, Query(pattern="^(full|summary)$")] = "full") -> dict[str, Any]:
        return core.deployment_page(limit=limit, offset=offset, state=state, summary=view == "summary")

    @app.get("/deployments/{deployment_id}", dependencies=[private], summary="One deployment")
    def deployment(deployment_id: str) -> dict[str, Any]:
        return core.deployment(deployment_id).to_json()

    @app.post("/deployments/{deployment_id}/stop", dependencies=[private],
              summary="Stop a running deployment: its FL clients and server stop; it ends failed, 'stopped on request'")
    def stop_deployment(deployment_id: str) -> dict[str, Any]:
        return core.stop_deployment(deployment_id)

    @app.post("/deployments/{deployment_id}/control", dependencies=[private],
              summary="Change the running FL run (sampling, length, stop, hold a round) before its next round")
    async def control_deployment(deployment_id: str, request: Request) -> dict[str, Any]:
        fields = await _fields(request)
        params = validate(ControlParams, {**fields, "deployment": deployment_id}, {}, f"POST /deployments/{deployment_id}/control")
        changes = params.model_dump(exclude={"deployment"}, exclude_none=True)
        return await run_in_threadpool(core.control, deployment_id, changes)

    @app.post("/deployments/{deployment_id}/clients/{part}/restart", dependencies=[private],
              summary="Start a lost client's SuperNode again; it rejoins the running FL server")
    def restart_client(deployment_id: str, part: Annotated[int, PathParam(ge=0, le=10_000)]) -> dict[str, Any]:
        return core.restart_client(deployment_id, part)

    return app


def cloud_app(core: CloudMlfo) -> FastAPI:
    """The cloud MLFO's Mo-Mo API: FL servers from the pool."""
    config = core.config
    app, private = service_app("cloud MLFO", role="cloud", tokens=(config.southbound_token,), max_body=config.api.max_upload_bytes,
                               metrics=core.metrics, request_seconds=config.api.request_seconds)
    momo_body = {"requestBody": {"required": True, "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object"}},
    }}}

    @app.post("/momo/deploy", status_code=201, dependencies=[private], openapi_extra=momo_body,
              summary="Allocate and start an FL server for a Mo-Mo intent")
    async def deploy(request: Request) -> JSONResponse:
        body: Any = await _json(request) if _content_type(request) == "application/json" else await request.body()
        try:
            answer = await run_in_threadpool(core.deploy, body)
        except Exception:
            core.metrics.momo.labels("cloud", "error").inc()
            raise
        core.metrics.momo.labels("cloud", "ok").inc()
        return JSONResponse(answer, status_code=201)

    @app.post("/momo/release/{deployment}", dependencies=[private], summary="Free a deployment's FL server")
    def release(deployment: str) -> dict[str, Any]:
        return core.release(deployment)

    @app.get("/momo/allocations", dependencies=[private], summary="Every allocation")
    def allocations() -> dict[str, Any]:
        return {"allocations": [a.to_json() for a in core.allocations()]}

    return app


def agent_app(agent: NodeAgent) -> FastAPI:
    """A node agent's southbound API: FL servers (/serv) and clients (/cli) on this host."""
    config = agent.config
    metrics = ServiceMetrics("agent")
    metrics.add(AgentCollector(agent))
    app, private = service_app("agent", role="agent", tokens=(config.southbound_token,), max_body=config.api.max_upload_bytes,
                               metrics=metrics, request_seconds=config.api.request_seconds)
    app.state.max_body = config.api.max_upload_bytes

    @app.post("/serv", status_code=201, dependencies=[private], openapi_extra=_form_schema(ServerStartParams, with_file=False),
              summary="Start an FL server (SuperLink) and its run")
    async def serv(request: Request) -> JSONResponse:
        params = validate(ServerStartParams, await _fields(request), {}, "POST /serv")
        return JSONResponse(await run_in_threadpool(agent.start_server, params), status_code=201)

    @app.post("/cli", status_code=201, dependencies=[private], openapi_extra=_form_schema(ClientStartParams, with_file=False),
              summary="Start an FL client (SuperNode)")
    async def cli(request: Request) -> JSONResponse:
        params = validate(ClientStartParams, await _fields(request), {}, "POST /cli")
        return JSONResponse(await run_in_threadpool(agent.start_client, params), status_code=201)

    @app.post("/control", dependencies=[private], summary="Change the running FL run (read by the ServerApp between rounds)")
    async def control(request: Request) -> dict[str, Any]:
        params = validate(ControlParams, await _fields(request), {}, "POST /control")
        return await run_in_threadpool(agent.control, params)

    @app.get("/status", dependencies=[private], summary="The FL server and clients of this agent")
    def status() -> dict[str, Any]:
        return agent.status()

    @app.post("/stop", dependencies=[private], summary="Stop this agent's FL processes (of one deployment, one client part, if given)")
    def stop(deployment: Annotated[str | None, Query(max_length=64)] = None,
             part: Annotated[int | None, Query(ge=0, le=10_000)] = None) -> dict[str, Any]:
        return agent.stop(deployment, part)

    return app


def exporter_app(app_name: str, match_port: int) -> FastAPI:
    """A socket exporter: `/metrics` of the TCP connections of one app (public, like node_exporter)."""
    metrics = ServiceMetrics(f"{app_name} exporter")
    metrics.add(SocketCollector(app_name, match_port))
    app, _ = service_app(f"{app_name} exporter", tokens=(), max_body=1024, metrics=metrics, public_metrics=True)
    return app
