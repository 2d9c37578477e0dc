"""JSON request bodies, read once under a size limit and parsed under Hone's rules.

Python's json module is lenient where an API must not be: it reads `NaN`, `Infinity` and `1e999` (the openai
SDK writes `Infinity` for float("inf")), lets a repeated key silently win, and returns strings holding lone
UTF-16 surrogates (`"\\ud800"`) or NUL characters that no database column can store. Each is refused here with
a 400 naming the field, and a body over the limit is a 413 before it is read whole.

The common body pays for one `json.loads` with a pair hook; the walk that names a field runs only when a cheap
scan of the raw bytes says a non-finite number, a surrogate or a NUL escape could be inside.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

from service.errors import ErrorCode, InvalidRequest, PayloadTooLarge, excerpt, param_from_loc

_MAYBE_NOT_FINITE = re.compile(rb"NaN|Infinity|[0-9][eE][+-]?[0-9]{3}")
_MAYBE_BAD_STRING = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")  # a surrogate or NUL escape


class _NotFinite:
    def __init__(self, text: str):
        self.text = text


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _float(text: str) -> float | _NotFinite:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "strings may not contain NUL (\\u0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "the string holds a lone UTF-16 surrogate; strings must be valid Unicode"
    return None


def _problem(value: Any) -> str | None:
    if isinstance(value, _NotFinite):
        return f"{excerpt(value.text)} is not a finite number; numbers must be finite"
    if isinstance(value, str):
        return _string_problem(value)
    return None


def _find(value: Any, loc: tuple) -> tuple[tuple, str] | None:
    """The location and description of the first value breaking a rule, depth first."""
    if (problem := _problem(value)) is not None:
        return loc, problem
    if isinstance(value, dict):
        for key, item in value.items():
            if (problem := _string_problem(key)) is not None:
                return loc + (key,), f"the key {problem.replace('strings', 'keys')}"
            if (found := _find(item, loc + (key,))) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _find(item, loc + (index,))) is not None:
                return found
    return None


def parse(body: bytes) -> Any:
    """The body's JSON value, or InvalidRequest naming what is wrong and where."""
    try:
        value = json.loads(body, object_pairs_hook=_pairs, parse_constant=_NotFinite, parse_float=_float)
    except _DuplicateKey as dup:
        param: str | None = excerpt(dup.key)
        raise InvalidRequest(
            f"Duplicate key {param!r} in the JSON body; each key may appear once per object.",
            param=param,
            code=ErrorCode.DUPLICATE_KEY,
        ) from None
    except (ValueError, RecursionError):  # JSONDecodeError, invalid UTF-8, nesting too deep
        raise InvalidRequest("We could not parse the JSON body of your request.", code=ErrorCode.INVALID_JSON) from None
    if _MAYBE_NOT_FINITE.search(body) or _MAYBE_BAD_STRING.search(body):
        found = _find(value, ())
        if found is not None:
            loc, problem = found
            param = param_from_loc(loc)
            where = f"'{param}'" if param else "the request body"
            code = ErrorCode.INVALID_VALUE if "finite" in problem else "invalid_string"
            raise InvalidRequest(f"Invalid value for {where}: {problem}.", param=param, code=code)
    return value


async def read(request: Request, limit: int) -> bytes:
    """The whole body, refused with a 413 as soon as it is known to pass `limit` bytes (from Content-Length, or
    while it streams in when the client sends none)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: FastAPI's own `await request.body()` returns it
    return body


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is too large: JSON bodies are limited to {limit} bytes.", code=ErrorCode.REQUEST_TOO_LARGE
    )


def is_json(content_type: str | None) -> bool:
    """FastAPI parses a body as JSON when it has no content type or an application/json (or +json) one."""
    if not content_type:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))
