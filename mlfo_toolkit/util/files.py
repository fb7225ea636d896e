"""Files other processes read while they are written: state, registrations, Prometheus targets."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import StorageError, ValidationError


def write_secret(path: Path, text: str) -> Path:
    """Write a token readable by its owner only: the file is created with mode 0600, never wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def write_json_atomically(path: Path, data: Any) -> Path:
    """Write JSON through a temporary file and a rename (see write_text_atomically)."""
    return write_text_atomically(path, json.dumps(data, indent=2, default=str))


def write_text_atomically(path: Path, text: str) -> Path:
    """Write through a temporary file and a rename, so a SIGKILL mid-write never leaves a torn file.

    The temporary name keeps the whole file name (`.NAME.tmp`), so `x.json` and `x.started` written
    side by side never share one. A full or read-only disk is a StorageError naming `path`.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise StorageError.from_os_error(err if err.filename else OSError(err.errno, err.strerror, str(path))) from None
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a text file; a full or read-only disk is a StorageError naming `path`."""
    try:
        path.write_text(text)
    except OSError as err:
        raise StorageError.from_os_error(err if err.filename else OSError(err.errno, err.strerror, str(path))) from None
    return path


# An input file larger than any intent, cohort file, experiment or topology has reason to be.
MAX_INPUT_BYTES = 16 * 1024 * 1024


def read_input(path: Path, what: str) -> bytes:
    """The bytes of an input file the user named (`what`: "intent file", ...): a regular file only (a FIFO
    would block, a device never end), ValidationError naming the path otherwise."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ValidationError(f"cannot read {what}: it is {kind}", source=str(path))
        if info.st_size > MAX_INPUT_BYTES:
            raise ValidationError(f"{what} is {info.st_size} bytes; at most {MAX_INPUT_BYTES} are read", source=str(path))
        return path.read_bytes()
    except OSError as err:
        raise ValidationError(f"cannot read {what}: {err.strerror}", source=str(path)) from None
    except ValueError as err:  # a path with a NUL byte in it
        raise ValidationError(f"cannot read {what}: {err}", source=repr(str(path))[1:-1]) from None
