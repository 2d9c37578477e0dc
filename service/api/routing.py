"""The route class every router uses: the domain's dicts go out as JSON directly, and JSON bodies are read
under the size limit and parsed under Hone's rules (service/api/json_body.py) before FastAPI sees them.

FastAPI would otherwise walk each response through `jsonable_encoder`, which costs more
than the database query behind a list (measured: ~1 ms of ~7 ms for a page of 20 jobs).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request

from hone_kernel.finite import finite
from service.api import json_body
from service.api.deps import get_ctx
from service.errors import ErrorCode, InvalidRequest


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
        has_json_body = self.body_field is not None  # an upload reads its own stream, never held whole

        async def checked(request: Request):
            _refuse_nul(request)
            if has_json_body and json_body.is_json(request.headers.get("content-type")):
                limit = (await get_ctx(request)).settings.server.max_json_body_bytes
                body = await json_body.read(request, limit)
                if body:
                    # Starlette's cache: FastAPI's `await request.json()` takes this value instead of parsing again
                    request._json = json_body.parse(body)
            return await handler(request)

        return checked


def _refuse_nul(request: Request) -> None:
    """A NUL in an id or a query value would reach the database (PostgreSQL refuses it with an error, SQLite
    stores it): refused here for every route, before any lookup."""
    scope = request.scope
    for where, raw in (("path", scope.get("raw_path") or b""), ("query", scope.get("query_string") or b"")):
        if b"%00" in raw or b"\x00" in raw:
            raise InvalidRequest(f"The request {where} contains a NUL character (%00), which no id or value may "
                                 "hold.", code=ErrorCode.INVALID_VALUE)
