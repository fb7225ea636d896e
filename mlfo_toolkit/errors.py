"""The one exception hierarchy of mlfo and the exit codes the CLI maps it to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of `mlfo`; every member has a help line in EXIT_CODE_HELP."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    CONFIG = 3
    INVALID_INPUT = 4
    UNREACHABLE = 5
    REMOTE_ERROR = 6
    DEPLOYMENT_FAILED = 7
    NEEDS_ROOT = 8
    MISSING_DEPENDENCY = 9
    AUTH = 10
    CAPACITY = 11
    CONFLICT = 12
    STORAGE = 13
    INTERRUPTED = 130


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "unexpected failure (a bug: please report it with the traceback)",
    ExitCode.USAGE: "wrong command-line usage (see --help)",
    ExitCode.CONFIG: "the configuration (mlfo.yaml, MLFO_* environment, flags) is invalid",
    ExitCode.INVALID_INPUT: "an input file (intent, cohort file, topology) is invalid",
    ExitCode.UNREACHABLE: "a node, MLFO, agent or controller could not be reached",
    ExitCode.REMOTE_ERROR: "a remote service answered with an error",
    ExitCode.DEPLOYMENT_FAILED: "a deployment or FL run failed",
    ExitCode.NEEDS_ROOT: "the command needs root privileges",
    ExitCode.MISSING_DEPENDENCY: "a required program or package is missing",
    ExitCode.AUTH: "authentication failed (check the API token or controller credentials)",
    ExitCode.CAPACITY: "the machine cannot hold what was asked (memory): shrink the cohort or wait for others to end",
    ExitCode.CONFLICT: "the request conflicts with what is running (a server is busy, nothing to share): wait or stop it first",
    ExitCode.STORAGE: "a file or store could not be written (disk full, read-only, no permission): free space or fix the path",
    ExitCode.INTERRUPTED: "interrupted by the user (Ctrl-C); everything started was stopped",
}


class MlfoError(Exception):
    """Base of every error mlfo raises on purpose; `hint` tells the user what to do."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        """JSON form used by HTTP answers and `--json` error output."""
        body: dict[str, object] = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body


class ConfigError(MlfoError):
    """The effective configuration is invalid."""

    exit_code = ExitCode.CONFIG


class ValidationError(MlfoError):
    """Input data is invalid; `field` names where, `line` the line in the file if known."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if source:
            where.append(source + (f":{line}" if line else ""))
        elif line:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        full = f"{', '.join(where)}: {message}" if where else message
        super().__init__(full, hint=hint)
        self.reason = message  # without the place
        self.field = field
        self.line = line
        self.source = source

    def to_dict(self) -> dict[str, object]:
        body = super().to_dict()
        if self.field:
            body["field"] = self.field
        if self.line:
            body["line"] = self.line
        return body


class UnreachableError(MlfoError):
    """A node, MLFO, agent or controller did not answer."""

    exit_code = ExitCode.UNREACHABLE


class SlowAnswerError(UnreachableError):
    """A service took the connection but did not answer in time: busy, not gone."""


class RemoteError(MlfoError):
    """A remote service answered with an HTTP error; `status` carries its code."""

    exit_code = ExitCode.REMOTE_ERROR

    def __init__(self, message: str, *, status: int, body: object = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.body = body


class AuthError(RemoteError):
    """A remote service refused our credentials (401/403)."""

    exit_code = ExitCode.AUTH


class NotFoundError(MlfoError):
    """A named thing (deployment, node, run) does not exist."""

    exit_code = ExitCode.INVALID_INPUT


class DeploymentFailed(MlfoError):
    """A deployment or FL run ended in failure."""

    exit_code = ExitCode.DEPLOYMENT_FAILED


class ConflictError(MlfoError):
    """The request conflicts with the current state: a server is busy, there is nothing to share."""

    exit_code = ExitCode.CONFLICT

    def __init__(self, message: str, *, hint: str | None = None, body: object = None) -> None:
        super().__init__(message, hint=hint)
        self.body = body  # a remote service's answer, when the conflict was its


class PoolBusyError(ConflictError):
    """Every FL server of the cloud MLFO's pool is given to a deployment (a campus MLFO queues and asks again)."""


class CapacityError(MlfoError):
    """The machine has too little memory left for what was asked."""

    exit_code = ExitCode.CAPACITY


class StorageError(MlfoError):
    """A file or the MLFO's store could not be written or read (disk full, read-only, corrupt); names the path."""

    exit_code = ExitCode.STORAGE

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "free some space on that disk, or point paths.state_dir / paths.runs_dir elsewhere")
        self.path = path

    @classmethod
    def from_os_error(cls, err: OSError, doing: str = "write") -> StorageError:
        where = err.filename or "a file"
        return cls(f"cannot {doing} {where}: {err.strerror or err}", path=str(err.filename) if err.filename else None)


class NeedsRootError(MlfoError):
    """The operation needs root privileges."""

    exit_code = ExitCode.NEEDS_ROOT


def error_for_status(status: int, text: str, *, body: object = None, hint: str | None = None,
                     auth_hint: str | None = None) -> MlfoError:
    """The MlfoError for an HTTP error answer of a remote service (mlfo's own or ONOS)."""
    if status in (401, 403):
        return AuthError(text, status=status, body=body, hint=auth_hint)
    if status == 404:
        return NotFoundError(text)
    if status == 409:
        if isinstance(body, dict) and body.get("kind") == PoolBusyError.__name__:
            return PoolBusyError(text, hint=hint, body=body)
        return ConflictError(text, hint=hint, body=body)
    return RemoteError(text, status=status, body=body, hint=hint)


class MissingDependencyError(MlfoError):
    """A required program, package or data file is missing."""

    exit_code = ExitCode.MISSING_DEPENDENCY
