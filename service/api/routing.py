"""The route class every router uses: the domain's dicts go out as JSON directly.

FastAPI would otherwise walk each response through `jsonable_encoder`, which costs more
than the database query behind a list (measured: ~1 ms of ~7 ms for a page of 20 jobs).

It also refuses JSON bodies holding numbers that are not finite (`NaN`, `Infinity`, or `1e999`, which parses as
infinity): Python's json module reads them, and the openai SDK writes `Infinity` for float("inf").
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from typing import Any, Callable

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request

from hone.finite import finite
from service.errors import InvalidRequest, param_from_loc

# Only a body that could hold a non-finite number is parsed a second time: a constant, or an exponent of 3+ digits.
_MAYBE_NOT_FINITE = re.compile(rb"NaN|Infinity|[0-9][eE][+-]?[0-9]{3}")


class _NotFinite:
    def __init__(self, text: str):
        self.text = text


def _float(text: str) -> float | _NotFinite:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def _find(value: Any, loc: tuple) -> tuple | None:
    if isinstance(value, _NotFinite):
        return loc + (value.text,)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if (found := _find(item, loc + (key,))) is not None:
            return found
    return None


def checkfinite(body: bytes) -> None:
    """Raises InvalidRequest naming the first field whose number is NaN or infinite; other bodies pass (a body that
    is not JSON is left for the route's own parsing to refuse)."""
    if not _MAYBE_NOT_FINITE.search(body):
        return
    try:
        parsed = json.loads(body, parse_constant=_NotFinite, parse_float=_float)
    except (ValueError, RecursionError):
        return
    found = _find(parsed, ())
    if found is not None:
        *loc, text = found
        param = param_from_loc(tuple(loc))
        where = f"'{param}'" if param else "the request body"
        raise InvalidRequest(f"Invalid value for {where}: {text} is not a finite number; numbers must be finite.",
                             param=param, code="invalid_value")


class FiniteJSONResponse(JSONResponse):
    """A read never fails on a stored NaN or Infinity (a row written before the API refused them, or by a
    trainer): JSON has no such numbers, so they go out as null. Only a body that fails to render is walked."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:  # "Out of range float values are not JSON compliant"
            return super().render(finite(content))


def _as_response(result: Any) -> Any:
    return FiniteJSONResponse(result) if isinstance(result, (dict, list)) else result


class JSONRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any):
        if inspect.iscoroutinefunction(endpoint):
            @functools.wraps(endpoint)
            async def wrapped(*args, **kw):
                return _as_response(await endpoint(*args, **kw))
        else:
            @functools.wraps(endpoint)
            def wrapped(*args, **kw):
                return _as_response(endpoint(*args, **kw))
        super().__init__(path, wrapped, **kwargs)

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        if self.body_field is None:  # no JSON body to parse (an upload reads its own stream, never held whole)
            return handler

        async def checked(request: Request):
            if "json" in request.headers.get("content-type", "application/json"):
                checkfinite(await request.body())  # the body is cached: FastAPI parses it from memory next
            return await handler(request)

        return checked
