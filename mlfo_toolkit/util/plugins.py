"""A researcher's own object, named `package.module:Name` or `path/to/file.py:Name` (the MLFO's policies)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import ValidationError

SPEC = re.compile(r"^(?P<where>[A-Za-z0-9_./-]+?(?:\.py)?):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


def load_object(name: str, settings: Any, method: str, *, field: str, base: Path | None = None, what: str = "policy") -> Any:
    """The object `name` points at, built with `settings` if it is a class whose constructor takes an argument
    (else with none); ValidationError naming `field` if it cannot be loaded or has no `method`."""
    match = SPEC.match(name)
    if not match:
        raise ValidationError(f"'{name}' is not package.module:Name or file.py:Name", field=field)
    where, attribute = match.group("where"), match.group("name")
    try:
        if where.endswith(".py"):
            path = (base / where) if base is not None and not Path(where).is_absolute() else Path(where)
            spec = importlib.util.spec_from_file_location(f"mlfo_{what}_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        found = getattr(module, attribute)
    except (ImportError, AttributeError, OSError, SyntaxError) as err:
        raise ValidationError(f"cannot load {what} '{name}': {err}", field=field,
                              hint="is the module importable (PYTHONPATH), or the file's path right?") from None
    built: Any = found
    if inspect.isclass(found):
        factory: Callable[..., Any] = found
        built = factory(settings) if _takes_an_argument(found) else factory()
    if not callable(getattr(built, method, None)):
        raise ValidationError(f"{what} '{name}' has no {method}(observation) method", field=field)
    return built


def _takes_an_argument(cls: type) -> bool:
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return False
    return bool(parameters) and parameters[0].default is inspect.Parameter.empty
