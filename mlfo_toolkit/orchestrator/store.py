"""Deployments and server allocations kept in SQLite, so a restarted MLFO still knows them.

A store that SQLite cannot read (a garbage header, a truncated file) is moved aside as
`NAME.corrupt-STAMP` and a new one is started; a single row that is not JSON is skipped. Both are
logged and listed in `recovery` for the MLFO to report. A write that fails (disk full, read-only)
raises `StorageError` naming the file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import StorageError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    created REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
"""


class Store:
    """A small JSON document store: records of a kind, by id, in creation order."""

    def __init__(self, path: Path | str) -> None:
        self.path: Path | str = Path(path) if str(path) != ":memory:" else str(path)
        self.moved_aside: str | None = None
        self.skipped: list[dict[str, str]] = []  # rows that could not be read, with the reason
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.OperationalError as err:  # cannot open or write: not the file's fault
            raise StorageError(f"cannot open the store {self.path}: {err}", path=str(self.path)) from None
        except sqlite3.DatabaseError as err:  # not a database, or a damaged one
            self._move_aside(err)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            # A file cut short or scribbled on opens fine and fails on first read: read it all now.
            problem = db.execute("PRAGMA quick_check").fetchone()
            if problem and problem[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {problem[0]}")
            db.execute("SELECT kind, id, created, data FROM records").fetchall()
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, err: sqlite3.DatabaseError) -> None:
        if not isinstance(self.path, Path):
            raise StorageError(f"the in-memory store failed: {err}") from None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                companion = self.path.with_name(self.path.name + suffix)
                if companion.exists():
                    companion.rename(aside.with_name(aside.name + suffix))
        except OSError as move_error:
            raise StorageError(f"the store {self.path} is corrupt ({err}) and cannot be moved aside: {move_error.strerror}",
                               path=str(self.path)) from None
        self.moved_aside = str(aside)
        log.error("the store %s could not be read (%s): moved aside as %s, starting with an empty store", self.path, err, aside)

    def put(self, kind: str, record_id: str, data: dict[str, Any], created: float) -> None:
        text = json.dumps(data, default=str)
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO records (kind, id, created, data) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data",
                    (kind, record_id, created, text),
                )
        except sqlite3.Error as err:
            raise StorageError(f"cannot write the store {self.path}: {err}", path=str(self.path)) from None

    def get(self, kind: str, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM records WHERE kind = ? AND id = ?", (kind, record_id)).fetchone()
        return self._decode(kind, record_id, row[0]) if row else None

    def all(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT id, data FROM records WHERE kind = ? ORDER BY created, id", (kind,)).fetchall()
        decoded = (self._decode(kind, record_id, text) for record_id, text in rows)
        return [record for record in decoded if record is not None]

    def _decode(self, kind: str, record_id: str, text: str) -> dict[str, Any] | None:
        try:
            data = json.loads(text)
        except ValueError as err:
            data, reason = None, f"not JSON: {err}"
        else:
            reason = "" if isinstance(data, dict) else "not a JSON object"
        if reason:
            self.skip(kind, record_id, reason)
            return None
        return data  # type: ignore[no-any-return]

    def skip(self, kind: str, record_id: str, reason: str) -> None:
        """Report a record that cannot be used (once): it is left in the file, and read past."""
        if not any(s["kind"] == kind and s["id"] == record_id for s in self.skipped):
            self.skipped.append({"kind": kind, "id": record_id, "reason": reason})
            log.error("skipped %s record %s of the store %s: %s", kind, record_id, self.path, reason)

    def recovery(self) -> dict[str, Any]:
        """What opening the store found: a file moved aside, rows skipped."""
        return {"store": str(self.path), "moved_aside": self.moved_aside, "skipped": list(self.skipped)}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(config: Any, role: str) -> Store:
    """The SQLite file of an MLFO role under paths.state_dir."""
    return Store(Path(config.paths.state_dir) / f"mlfo-{role}.sqlite3")
