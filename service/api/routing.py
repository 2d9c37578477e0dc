"""The route class every router uses: the domain's dicts go out as JSON directly, and JSON bodies are read
under the size limit and parsed under Hone's rules (service/api/json_body.py) before FastAPI sees them.

FastAPI would otherwise walk each response through `jsonable_encoder`, which costs more
than the database query behind a list (measured: ~1 ms of ~7 ms for a page of 20 jobs).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio.to_thread
import orjson
from anyio import CapacityLimiter
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request

from hone_kernel.finite import finite
from service.api import json_body
from service.api.deps import get_ctx
from service.errors import ErrorCode, InvalidRequest, excerpt


class FiniteJSONResponse(JSONResponse):
    """Rendered by orjson: a page of 20 jobs took 0.13 ms through the standard library and 0.01 ms through it.
    A read never fails on a stored NaN or Infinity (a row written before the API refused them, or by a trainer):
    JSON has no such numbers, so they go out as null (orjson's own rule, and `finite` on the fallback path)."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:  # what orjson cannot render (an integer over 64 bits): the standard library's way
            try:
                return super().render(content)
            except ValueError:  # "Out of range float values are not JSON compliant"
                return super().render(finite(content))


class ThreadLane:
    """A few worker threads of their own (or, at size 0, the event loop itself) for the endpoints marked
    `database_read`. FastAPI runs every sync endpoint in anyio's default pool of 40 threads: under load 32 short
    database reads then hold 32 threads that take turns at the GIL, and the hand-overs cost more than the reads
    (list jobs at 32 clients: 4.9 ms of CPU a request in 40 threads, 1.9 ms in one). Slow work (storage,
    engines) and writes (which wait on SQLite's write lock, never to be held on the loop) stay in the default
    pool. One limiter per event loop (a limiter belongs to the loop that made it)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = (
            weakref.WeakKeyDictionary()
        )

    async def run(self, fn: Callable[[], Any]) -> Any:
        if self.size == 0:
            return fn()  # settings.resolved_database_threads says when this is right
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None or limiter.total_tokens != self.size:
            limiter = self._limiters[loop] = CapacityLimiter(self.size)
        return await anyio.to_thread.run_sync(fn, limiter=limiter)


# Sized from the settings by create_app (settings.resolved_database_threads); routers are built at import,
# before any settings.
DATABASE_LANE = ThreadLane()

_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def database_read(endpoint: _Endpoint) -> _Endpoint:
    """Marks a sync endpoint whose work is short database reads alone (no write, no storage, no engine, no
    network call): JSONRoute runs it in DATABASE_LANE instead of the default thread pool."""
    endpoint._hone_database_read = True  # type: ignore[attr-defined]
    return endpoint


def query_pattern(pattern: str, shown: str) -> Callable[[_Endpoint], _Endpoint]:
    """Marks an endpoint that reads some query parameters itself, by name pattern (`metadata[key]=value`, as the
    openai SDK sends a metadata filter): JSONRoute lets names matching `pattern` through besides the declared ones.
    `shown` is how a refusal lists them."""

    def mark(endpoint: _Endpoint) -> _Endpoint:
        endpoint._hone_query_pattern = (re.compile(pattern), shown)  # type: ignore[attr-defined]
        return endpoint

    return mark


def _as_response(result: Any) -> Any:
    return FiniteJSONResponse(result) if isinstance(result, (dict, list)) else result


class JSONRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any):
        # Each wrapper first raises the refusal of an unknown query parameter, if `checked` found one: here, after
        # FastAPI has resolved the dependencies, so that authentication still answers first (a caller without a
        # key learns nothing of a route's parameters, and `?key=...` stays a 401 like any missing key).
        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def wrapped(*args, **kw):
                _raise_unknown_query()
                return _as_response(await endpoint(*args, **kw))
        elif getattr(endpoint, "_hone_database_read", False):

            @functools.wraps(endpoint)
            async def wrapped(*args, **kw):  # async to FastAPI, which then leaves the thread to the lane
                _raise_unknown_query()
                return _as_response(await DATABASE_LANE.run(functools.partial(endpoint, *args, **kw)))
        else:

            @functools.wraps(endpoint)
            def wrapped(*args, **kw):  # in a worker thread, which anyio gives the request's context
                _raise_unknown_query()
                return _as_response(endpoint(*args, **kw))

        # before super().__init__, which builds the handler that reads it
        self.query_pattern: tuple[re.Pattern[str], str] | None = getattr(endpoint, "_hone_query_pattern", None)
        super().__init__(path, wrapped, **kwargs)

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        has_json_body = self.body_field is not None  # an upload reads its own stream, never held whole
        declared = frozenset(_query_names(self.dependant))
        pattern = self.query_pattern

        async def checked(request: Request):
            _refuse_nul(request)
            refusal = _unknown_query(request, declared, pattern) if request.scope.get("query_string") else None
            token = _UNKNOWN_QUERY.set(refusal) if refusal is not None else None
            try:
                if has_json_body and json_body.is_json(request.headers.get("content-type")):
                    limit = (await get_ctx(request)).settings.server.max_json_body_bytes
                    body = await json_body.read(request, limit)
                    if body:
                        # Starlette's cache: FastAPI's `await request.json()` takes this value instead of parsing
                        request._json = json_body.parse(body)
                return await handler(request)
            finally:
                if token is not None:
                    _UNKNOWN_QUERY.reset(token)

        return checked


def _refuse_nul(request: Request) -> None:
    """A NUL in an id or a query value would reach the database (PostgreSQL refuses it with an error, SQLite
    stores it): refused here for every route, before any lookup."""
    scope = request.scope
    for where, raw in (("path", scope.get("raw_path") or b""), ("query", scope.get("query_string") or b"")):
        if b"%00" in raw or b"\x00" in raw:
            raise InvalidRequest(
                f"The request {where} contains a NUL character (%00), which no id or value may hold.",
                code=ErrorCode.INVALID_VALUE,
            )


def _query_names(dependant: Dependant) -> Iterator[str]:
    """The query parameters an endpoint and its dependencies declare."""
    yield from (field.alias for field in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _query_names(sub)


# The refusal `checked` found for the request on its way (see JSONRoute.__init__ for why it is raised later).
_UNKNOWN_QUERY: ContextVar[InvalidRequest | None] = ContextVar("hone_unknown_query", default=None)


def _raise_unknown_query() -> None:
    if (refusal := _UNKNOWN_QUERY.get()) is not None:
        raise refusal


def _unknown_query(
    request: Request, declared: frozenset[str], pattern: tuple[re.Pattern[str], str] | None
) -> InvalidRequest | None:
    """A query parameter the route does not read (`?status=running` on a list that has no such filter) would be
    ignored, and the caller would take the unfiltered answer for the one it asked: refused, naming it."""
    for name in request.query_params:
        if name not in declared and (pattern is None or not pattern[0].fullmatch(name)):
            takes = ", ".join(sorted(declared) + ([pattern[1]] if pattern is not None else [])) or "none"
            return InvalidRequest(
                f"Unrecognized query parameter: {excerpt(name, 64)!r} ({request.method} {request.url.path} takes: "
                f"{takes}).",
                param=excerpt(name, 64),
                code=ErrorCode.UNKNOWN_PARAMETER,
            )
    return None
