"""YAML loading that remembers line numbers, so validation errors can name the line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

import pydantic
import yaml

from mlfo_toolkit.errors import ValidationError

Model = TypeVar("Model", bound=pydantic.BaseModel)


def not_a_bool(value: Any) -> Any:
    """A before-validator for numbers: JSON's true is not 1 client or 1 round (pydantic would read it so)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


# Numbers in request and file models that refuse booleans.
Int = Annotated[int, pydantic.BeforeValidator(not_a_bool)]
Float = Annotated[float, pydantic.BeforeValidator(not_a_bool)]


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _lines(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out)


# Deeper than any intent, cohort file, topology or config needs; deep enough to refuse a bomb early.
MAX_DEPTH = 32


def _check_structure(text: str, source: str) -> None:
    """Refuse anchors and aliases (a 700-byte alias bomb expands to gigabytes, `&a [*a]` loops) and
    nesting deeper than MAX_DEPTH, from the event stream, before anything is built."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ValidationError(
                "YAML anchors and aliases (&name, *name) are not allowed here",
                line=line, source=source, hint="write the values out in full",
            )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ValidationError(f"nests deeper than {MAX_DEPTH} levels", line=line, source=source)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def strict_json(text: str | bytes) -> Any:
    """json.loads that refuses a key given twice in one object and NaN / Infinity (ValueError)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"the key '{key[:64]}' is given twice")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)


def check_depth(data: Any, source: str, limit: int = MAX_DEPTH) -> None:
    """ValidationError if parsed data (JSON) nests deeper than `limit` or holds a string that is not
    valid Unicode (a lone surrogate, which JSON's \\ud800 escapes allow); iterative, so it cannot recurse."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError("holds text that is not valid Unicode (a lone surrogate)", source=source) from None
        elif isinstance(item, dict):
            stack.extend((key, depth) for key in item)
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise ValidationError(f"nests deeper than {limit} levels", source=source)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


class DuplicateKey(yaml.YAMLError):
    """A mapping names the same key twice (YAML itself would keep the last one, silently)."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"the key '{str(key)[:64]}' is given twice")
        self.key, self.line = key, line


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: construct_mapping names it below
            if duplicate:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def strict_load(text: str) -> Any:
    """Parse YAML safely, refusing duplicate keys (DuplicateKey) and values no number can be (ValueError)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


def load_yaml(text: str | bytes, source: str = "<input>") -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parsed data and a map from key path to line number; ValidationError on bad YAML."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("is not UTF-8 text", source=source) from None
    try:
        _check_structure(text, source)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = strict_load(text)
    except DuplicateKey as err:
        raise ValidationError(str(err), line=err.line, source=source, hint="give each key once") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise ValidationError(
            f"malformed YAML: {problem}",
            line=mark.line + 1 if mark else None,
            source=source,
        ) from None
    except (ValueError, OverflowError, RecursionError) as err:
        # A scalar no value can be made of: an integer of more than 4,300 digits, `!!float x`, ...
        raise ValidationError(f"malformed YAML: {str(err)[:200]}", source=source) from None
    check_depth(data, source)  # a "\\ud800" escape in YAML also makes a lone surrogate
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    return data, lines


def field_name(loc: Sequence[Any]) -> str:
    """('targets', 0, 'operand') -> 'targets[0].operand'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(loc: Sequence[Any], lines: dict[tuple[Any, ...], int]) -> int | None:
    """The line of the deepest known prefix of a key path."""
    for end in range(len(loc), -1, -1):
        if tuple(loc[:end]) in lines:
            return lines[tuple(loc[:end])]
    return None


def validate(model: type[Model], data: Any, lines: dict[tuple[Any, ...], int], source: str, prefix: Sequence[Any] = ()) -> Model:
    """model.model_validate(data), turning the first error into a ValidationError with field and line."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        loc = (*prefix, *first["loc"])
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        if first["type"] == "missing":
            message = "is required but missing"
        more = len(err.errors()) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ValidationError(
            message, field=field_name(loc) or None, line=line_of(loc, lines), source=source
        ) from None
