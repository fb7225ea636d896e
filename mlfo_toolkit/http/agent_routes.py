"""The routes of a node agent and of a socket exporter: the processes `topo up` starts on every host.

Kept apart from the MLFOs' routes so that an agent imports neither orchestrator (57 agents start at
`topo up 5`, each paying its own imports).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mlfo_toolkit.agent.node import STATUS_MAX_WAIT_SECONDS, ClientStartParams, ControlParams, NodeAgent, ProbeParams, ServerStartParams
from mlfo_toolkit.agent.probes import MAX_PROBE_BYTES, blob, free_cpus
from mlfo_toolkit.http.app import service_app
from mlfo_toolkit.http.forms import form_schema, read_fields
from mlfo_toolkit.monitoring.metrics import AgentCollector, ServiceMetrics, SocketCollector
from mlfo_toolkit.util.yamlfiles import validate


def agent_app(agent: NodeAgent) -> FastAPI:
    """A node agent's southbound API: FL servers (/serv) and clients (/cli) on this host."""
    config = agent.config
    metrics = ServiceMetrics("agent")
    metrics.add(AgentCollector(agent))
    app, private = service_app("agent", role="agent", tokens=(config.southbound_token,), max_body=config.api.max_upload_bytes,
                               metrics=metrics, request_seconds=config.api.request_seconds)
    app.state.max_body = config.api.max_upload_bytes

    @app.post("/serv", status_code=201, dependencies=[private], openapi_extra=form_schema(ServerStartParams, with_file=False),
              summary="Start an FL server (SuperLink) and its run")
    async def serv(request: Request) -> JSONResponse:
        params = validate(ServerStartParams, await read_fields(request), {}, "POST /serv")
        return JSONResponse(await run_in_threadpool(agent.start_server, params), status_code=201)

    @app.post("/cli", status_code=201, dependencies=[private], openapi_extra=form_schema(ClientStartParams, with_file=False),
              summary="Start an FL client (SuperNode)")
    async def cli(request: Request) -> JSONResponse:
        params = validate(ClientStartParams, await read_fields(request), {}, "POST /cli")
        return JSONResponse(await run_in_threadpool(agent.start_client, params), status_code=201)

    @app.post("/control", dependencies=[private], summary="Change the running FL run (read by the ServerApp between rounds)")
    async def control(request: Request) -> dict[str, Any]:
        params = validate(ControlParams, await read_fields(request), {}, "POST /control")
        return await run_in_threadpool(agent.control, params)

    @app.get("/status", dependencies=[private], summary="The FL server and clients of this agent")
    async def status(
        rounds_after: Annotated[int | None, Query(ge=0, le=1_000_000, description=(
            "answer once the FL server has more rounds than this, its run ended or it is gone (or `wait` passed)"))] = None,
        wait: Annotated[float, Query(ge=0, le=STATUS_MAX_WAIT_SECONDS, description="seconds to wait for that at most")] = 0.0,
    ) -> dict[str, Any]:
        if rounds_after is None or wait <= 0:
            return await run_in_threadpool(agent.status)
        return await agent.status_after(rounds_after, wait)

    @app.get("/capacity", dependencies=[private], summary="This host's free CPU (cores), sampled over half a second")
    def capacity() -> dict[str, Any]:
        return free_cpus(0.5)

    @app.post("/probe", dependencies=[private], openapi_extra=form_schema(ProbeParams, with_file=False),
              summary="Measure the path from here to an FL server's agent: round-trip time and rate")
    async def probe(request: Request) -> dict[str, Any]:
        params = validate(ProbeParams, await read_fields(request), {}, "POST /probe")
        return await run_in_threadpool(agent.probe, params)

    @app.get("/probe/blob", dependencies=[private], summary="Zero bytes for another agent's rate probe")
    def probe_blob(size: Annotated[int, Query(alias="bytes", ge=1, le=MAX_PROBE_BYTES)]) -> StreamingResponse:
        return StreamingResponse(blob(size), media_type="application/octet-stream")

    @app.post("/stop", dependencies=[private], summary="Stop this agent's FL processes (of one deployment, one client part, if given)")
    def stop(deployment: Annotated[str | None, Query(max_length=64)] = None,
             part: Annotated[int | None, Query(ge=0, le=10_000)] = None,
             edge_run: Annotated[bool, Query(description="only the deployment's edge aggregator (edge run and relay)")] = False,
             ) -> dict[str, Any]:
        return agent.stop(deployment, part, edge_run)

    return app


def exporter_app(app_name: str, match_port: int) -> FastAPI:
    """A socket exporter: `/metrics` of the TCP connections of one app (public, like node_exporter)."""
    metrics = ServiceMetrics(f"{app_name} exporter")
    metrics.add(SocketCollector(app_name, match_port))
    app, _ = service_app(f"{app_name} exporter", tokens=(), max_body=1024, metrics=metrics, public_metrics=True)
    return app
