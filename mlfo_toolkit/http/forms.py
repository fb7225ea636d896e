"""Reading the requests of mlfo's services: multipart forms (the prototype's), JSON and YAML, with
their limits, and the answers to what cannot be read. Shared by the MLFO and agent routes."""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.http.app import error_response
from mlfo_toolkit.util.yamlfiles import check_depth, strict_json

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/plain", "")
# A form's text fields hold numbers, names and addresses; only the intent file may be larger.
MAX_FIELD_BYTES = 64 * 1024


class Unsupported(Exception):
    def __init__(self, content_type: str, hint: str) -> None:
        super().__init__(content_type)
        self.content_type = content_type
        self.hint = hint


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request, *, upload_field: str | None = None) -> tuple[dict[str, str], bytes | None]:
    """Text fields of a form, and the bytes of `upload_field` if the form has it (as file or text)."""
    try:
        form = await request.form(max_files=4, max_fields=64, max_part_size=request.app.state.max_body)
    except MultiPartException as err:
        raise ValidationError(f"malformed form body: {err.message}", field="body") from None
    except (MultipartParseError, UnicodeDecodeError, ValueError) as err:
        # python-multipart's own parse errors: a boundary that does not match, one too long, too many headers.
        raise ValidationError(f"malformed form body: {str(err)[:200] or type(err).__name__}", field="body") from None
    fields: dict[str, str] = {}
    upload: bytes | None = None
    for name, value in form.multi_items():
        data = await value.read() if isinstance(value, UploadFile) else value.encode("utf-8", "surrogateescape")
        if name == upload_field:
            if upload is not None:
                raise ValidationError("is given twice", field=name)
            upload = data
            continue
        if len(data) > MAX_FIELD_BYTES:
            raise ValidationError(f"is {len(data)} bytes; a form field may hold at most {MAX_FIELD_BYTES}", field=name)
        if name in fields:
            raise ValidationError("is given twice", field=name)
        fields[name] = data.decode("utf-8", "replace")
    await form.close()
    return fields, upload


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        data = strict_json(body or b"null")
    except (ValueError, RecursionError) as err:
        raise ValidationError(f"is not valid JSON: {err}" if isinstance(err, ValueError) else "nests too deeply", field="body") from None
    check_depth(data, "body")
    return data


async def read_fields(request: Request) -> dict[str, Any]:
    """The fields of an agent request: a form (the prototype) or a JSON object."""
    if content_type(request) == "application/json":
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ValidationError("a JSON body must be an object of fields", field="body")
        return body
    fields, _ = await read_form(request)
    return fields


def query_fields(request: Request) -> dict[str, str]:
    """The query's fields, each at most once (a second value would silently win)."""
    fields: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in fields:
            raise ValidationError("is given twice in the query", field=name)
        fields[name] = value
    return fields


def unsupported_handler(app: FastAPI) -> None:
    @app.exception_handler(Unsupported)
    async def _unsupported(request: Request, err: Unsupported) -> JSONResponse:
        return error_response(415, f"unsupported Content-Type '{err.content_type}'", hint=err.hint)


def form_schema(model: type[Any], *, with_file: bool) -> dict[str, Any]:
    """OpenAPI request body of a prototype form, generated from the model that validates it (a copy of it: the
    generation is done once per model, in the service launcher before it forks its 57 services)."""
    key = (model, with_file)
    if key not in _FORM_SCHEMAS:
        _FORM_SCHEMAS[key] = _form_schema(model, with_file)
    return copy.deepcopy(_FORM_SCHEMAS[key])


_FORM_SCHEMAS: dict[tuple[type[Any], bool], dict[str, Any]] = {}


def _form_schema(model: type[Any], with_file: bool) -> dict[str, Any]:
    schema = model.model_json_schema()
    properties = dict(schema.get("properties", {}))
    required = list(schema.get("required", []))
    if with_file:
        properties["file"] = {"type": "string", "format": "binary", "description": "the intent YAML"}
        required.append("file")
    form = {"type": "object", "properties": properties, "required": required}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/json": {"schema": {"type": "object", "properties": properties}},
            },
        }
    }


def reject_reason(field: str | None, err: Exception) -> str:
    """A low-cardinality rejection reason: the field without indices ('targets.operand'), or the kind."""
    if field:
        return re.sub(r"\[\d+\]", "", field)
    return "malformed"
