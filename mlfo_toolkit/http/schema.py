"""The OpenAPI 3 schema of each service, built without starting anything (`mlfo api-schema`)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI

from mlfo_toolkit.config import Config
from mlfo_toolkit.http.agent_routes import agent_app
from mlfo_toolkit.http.routes import campus_app, cloud_app
from mlfo_toolkit.monitoring.metrics import MlfoMetrics

SERVICES = ("campus", "cloud", "agent")


def openapi_schema(service: str, config: Config | None = None) -> dict[str, Any]:
    """The schema a running `service` serves at /openapi.json (routes only read the core when called)."""
    cfg = config or Config()
    stand_in: Any = SimpleNamespace(config=cfg, metrics=MlfoMetrics(service))
    builders: dict[str, Callable[[Any], FastAPI]] = {"campus": campus_app, "cloud": cloud_app, "agent": agent_app}
    schema: dict[str, Any] = builders[service](stand_in).openapi()
    return schema
