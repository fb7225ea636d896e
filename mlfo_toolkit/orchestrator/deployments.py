"""The campus MLFO's deployments: typed records in memory, every change written through to the store."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from mlfo_toolkit.errors import NotFoundError
from mlfo_toolkit.orchestrator.records import Deployment
from mlfo_toolkit.orchestrator.store import Store

DEPLOYMENT = "deployment"


class DeploymentTable:
    """Deployments by id, in creation order. Readers get copies; changes go through `edit()` (under one lock)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.RLock()
        self._records: dict[str, Deployment] = {}
        for raw in store.all(DEPLOYMENT):
            record = Deployment.model_validate(raw)
            self._records[record.id] = record

    def get(self, deployment_id: str) -> Deployment:
        """A copy of one deployment; NotFoundError naming it if there is none."""
        with self.lock:
            return self._live(deployment_id).model_copy(deep=True)

    def all(self) -> list[Deployment]:
        with self.lock:
            return [r.model_copy(deep=True) for r in self._records.values()]

    def states(self) -> list[str]:
        with self.lock:
            return [r.state for r in self._records.values()]

    def add(self, record: Deployment) -> None:
        with self.lock:
            self._records[record.id] = record
            self._write(record)

    @contextlib.contextmanager
    def edit(self, deployment_id: str) -> Iterator[Deployment]:
        """Change one deployment in place; it is written to the store when the block ends."""
        with self.lock:
            record = self._live(deployment_id)
            yield record
            self._write(record)

    def update(self, deployment_id: str, **changes: Any) -> Deployment:
        """Set fields of one deployment; returns a copy of it as it is now."""
        with self.edit(deployment_id) as record:
            for key, value in changes.items():
                setattr(record, key, value)
            return record.model_copy(deep=True)

    def page(self, *, limit: int = 100, offset: int = 0, state: str | None = None, summary: bool = False) -> dict[str, Any]:
        """The newest `limit` deployments (after skipping `offset` newer ones), oldest first, of one state if given."""
        with self.lock:
            records = [r for r in self._records.values() if state is None or r.state == state]
            end = len(records) - offset
            page = records[max(0, end - limit): max(0, end)]
            shown = [r.summary() if summary else r.to_json() for r in page]
        return {"deployments": shown, "total": len(records), "limit": limit, "offset": offset}

    def _live(self, deployment_id: str) -> Deployment:
        record = self._records.get(deployment_id)
        if record is None:
            raise NotFoundError(f"no deployment '{deployment_id}'")
        return record

    def _write(self, record: Deployment) -> None:
        record.updated = time.time()
        self.store.put(DEPLOYMENT, record.id, record.to_json(), record.created)
