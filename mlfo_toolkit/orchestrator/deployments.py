"""The campus MLFO's deployments: typed records in memory, every change written through to the store.

Memory is the truth while the MLFO runs; the store is what a restarted MLFO starts from. When a write
fails (disk full), the change stays in memory, the record is remembered as unsaved and written again
by `flush()`, and the caller gets `StorageError` to act on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pydantic

from mlfo_toolkit.errors import NotFoundError, StorageError
from mlfo_toolkit.monitoring.metrics import AssuredDeployment
from mlfo_toolkit.orchestrator.records import Deployment
from mlfo_toolkit.orchestrator.store import Store

log = logging.getLogger(__name__)

DEPLOYMENT = "deployment"


class DeploymentTable:
    """Deployments by id, in creation order. Readers get copies; changes go through `edit()` (under one lock)."""

    def __init__(self, store: Store, on_store_error: Callable[[StorageError], None] | None = None) -> None:
        self.store = store
        self.lock = threading.RLock()
        self.on_store_error = on_store_error
        self.unsaved: set[str] = set()
        self._records: dict[str, Deployment] = {}
        # Each record as it was last written, without its `updated` time: an edit that changed nothing (a poll
        # of an idle run) is neither written nor dated.
        self._written: dict[str, dict[str, Any]] = {}
        for raw in store.all(DEPLOYMENT):
            try:
                record = Deployment.model_validate(raw)
            except pydantic.ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                store.skip(DEPLOYMENT, str(raw.get("id", "?")), f"not a deployment record ({where}: {first['msg']})")
                continue
            self._records[record.id] = record

    def get(self, deployment_id: str) -> Deployment:
        """A copy of one deployment; NotFoundError naming it if there is none."""
        with self.lock:
            return self._live(deployment_id).model_copy(deep=True)

    def all(self) -> list[Deployment]:
        with self.lock:
            return [r.model_copy(deep=True) for r in self._records.values()]

    def sent_before(self, deployment_id: str) -> Deployment | None:
        """A copy of the latest deployment added before `deployment_id` that has not ended (None if there is none)."""
        with self.lock:
            earlier: Deployment | None = None
            for record in self._records.values():
                if record.id == deployment_id:
                    break
                if not record.ended:
                    earlier = record
            return earlier.model_copy(deep=True) if earlier is not None else None

    def assured(self, recent_seconds: float = 600.0) -> list[AssuredDeployment]:
        """Deployments with a target, running or ended within `recent_seconds` (for the assurance metrics)."""
        now = time.time()
        with self.lock:
            return [AssuredDeployment(r.name, r.id, str(r.target.get("metric")), r.target.get("value"), (r.assurance or {}).get("state"))
                    for r in self._records.values() if r.target and (not r.ended or now - r.updated < recent_seconds)]

    def states(self) -> list[str]:
        with self.lock:
            return [r.state for r in self._records.values()]

    def add(self, record: Deployment) -> None:
        """A new deployment: written first, so that one the store cannot hold is never accepted."""
        with self.lock:
            record.updated = time.time()
            self._put(record)
            self._records[record.id] = record

    @contextlib.contextmanager
    def edit(self, deployment_id: str) -> Iterator[Deployment]:
        """Change one deployment in place; it is written to the store when the block ends (StorageError if
        that fails: the change stays in memory and is written again by `flush()`)."""
        with self.lock:
            record = self._live(deployment_id)
            yield record
            data = record.to_json()
            data.pop("updated", None)
            if deployment_id not in self.unsaved and self._written.get(deployment_id) == data:
                return
            record.updated = time.time()
            try:
                self._put(record, data)
            except StorageError:
                self.unsaved.add(record.id)
                raise
            self.unsaved.discard(record.id)

    def update(self, deployment_id: str, **changes: Any) -> Deployment:
        """Set fields of one deployment; returns a copy of it as it is now."""
        with self.edit(deployment_id) as record:
            for key, value in changes.items():
                setattr(record, key, value)
            copy = record.model_copy(deep=True)
        return copy

    def update_client(self, deployment_id: str, part: int, **changes: Any) -> None:
        """Set fields of one client of a deployment."""
        with self.edit(deployment_id) as record:
            client = record.client(part)
            if client is None:
                raise NotFoundError(f"deployment {deployment_id} has no client part {part}")
            for key, value in changes.items():
                setattr(client, key, value)

    def flush(self) -> int:
        """Write the records whose last write failed; how many are still unsaved."""
        with self.lock:
            for deployment_id in sorted(self.unsaved):
                try:
                    self._put(self._records[deployment_id])
                except StorageError:
                    break
                self.unsaved.discard(deployment_id)
                log.info("deployment %s written to the store again", deployment_id)
            return len(self.unsaved)

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

    def _put(self, record: Deployment, unchanged: dict[str, Any] | None = None) -> None:
        """Write a record; `unchanged` is its JSON without `updated`, when the caller has it already."""
        if unchanged is None:
            unchanged = record.to_json()
            unchanged.pop("updated", None)
        try:
            self.store.put(DEPLOYMENT, record.id, {**unchanged, "updated": record.updated}, record.created)
            self._written[record.id] = unchanged
        except StorageError as err:
            log.error("%s (deployment %s)", err.message, record.id)
            if self.on_store_error is not None:
                self.on_store_error(err)
            raise
