"""The interface every backend offers."""

from __future__ import annotations

from types import TracebackType
from typing import Literal, Protocol, TypeVar

from mlfo_toolkit.config import Config

BackendKind = Literal["loopback", "network", "attached"]
Started = TypeVar("Started", bound="StartedBackend")


class Backend(Protocol):
    """Cohorts are sent to `campus` with `config` (whose IP plan names this backend's client agents)."""

    kind: BackendKind
    config: Config
    campus: str

    def __enter__(self) -> Backend: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None: ...


class StartedBackend:
    """A backend whose block starts what it needs (`start()`) and stops exactly that (`close()`), also when
    starting fails half-way."""

    def __enter__(self: Started) -> Started:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start what the backend needs."""

    def close(self) -> None:
        """Stop what `start()` started (and nothing else)."""


class AttachedBackend(StartedBackend):
    """MLFOs that already run (`mlfo serve`, a network up since earlier): nothing to start or stop."""

    kind: BackendKind = "attached"

    def __init__(self, config: Config, campus: str) -> None:
        self.config = config
        self.campus = campus
