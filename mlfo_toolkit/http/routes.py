"""The routes of the three mlfo services, on the prototype's wire format.

Each route reads the request (multipart form, JSON or YAML), hands typed values to the core
(`CampusMlfo`, `CloudMlfo`, `NodeAgent`) and returns what it answers; the core's `MlfoError`s
become HTTP answers through `app.STATUS`.
"""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mlfo_toolkit.agent.node import ControlParams
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.http.app import service_app, token_guard
from mlfo_toolkit.http.forms import (
    FORM_TYPES,
    YAML_TYPES,
    Unsupported,
    content_type,
    form_schema,
    query_fields,
    read_fields,
    read_form,
    read_json,
    reject_reason,
    unsupported_handler,
)
from mlfo_toolkit.orchestrator.campus import CampusMlfo
from mlfo_toolkit.orchestrator.cloud import CloudMlfo
from mlfo_toolkit.orchestrator.intake import ReceiveParams
from mlfo_toolkit.orchestrator.intents import Intent, parse_intent
from mlfo_toolkit.util.yamlfiles import validate


async def _intent_request(request: Request) -> tuple[Intent, dict[str, Any]]:
    """The intent and form fields of a /receive request: multipart (the prototype), YAML or JSON."""
    kind = content_type(request)
    if kind in FORM_TYPES:
        fields, upload = await read_form(request, upload_field="file")
        if upload is None:
            raise ValidationError("the form has no 'file' field holding the intent YAML", field="file")
        return parse_intent(upload, "file"), fields
    if kind == "application/json":
        body = await read_json(request)
        if not isinstance(body, dict) or "intent" not in body:
            raise ValidationError('a JSON body must be {"intent": {...}, ...form fields}', field="intent")
        intent_data = body.pop("intent")
        try:
            text = intent_data if isinstance(intent_data, str) else yaml.safe_dump(intent_data)
        except RecursionError:
            raise ValidationError("nests too deeply", field="intent") from None
        return parse_intent(text, "intent"), body
    if kind in YAML_TYPES:
        return parse_intent(await request.body(), "body"), query_fields(request)
    raise Unsupported(kind, "send multipart/form-data (curl -F file=@intent.yaml), YAML or JSON")


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
    unsupported_handler(app)

    @app.post("/receive", status_code=202, dependencies=[private], openapi_extra=form_schema(ReceiveParams, with_file=True),
              summary="Send an intent (the prototype's multipart form, YAML or JSON)")
    async def receive(request: Request) -> JSONResponse:
        try:
            intent, fields = await _intent_request(request)
            params = validate(ReceiveParams, fields, {}, "form")
            accepted = await run_in_threadpool(core.receive, intent, params)
        except ValidationError as err:
            core.metrics.rejected.labels("campus", reject_reason(err.field, err)).inc()
            raise
        except Unsupported:
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
        fields = await read_fields(request)
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
        body: Any = await read_json(request) if content_type(request) == "application/json" else await request.body()
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
