"""Dependencies shared by the routers: the app context and the authenticated caller."""

from __future__ import annotations

import asyncio
import weakref

from fastapi import Request
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth import (
    ProjectPrincipal,
    authenticate_admin,
    authenticate_metrics_scraper,
    authenticate_project,
    cached_principal,
)
from service.context import AppContext

# These are async so that FastAPI calls them on the event loop instead of a worker
# thread each; only a key not seen recently costs a thread and a query.


async def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def get_gateway(request: Request):
    return request.app.state.gateway


async def get_graders(request: Request):
    """Grading for this server process (service/grading.py): the sandbox's slots, the gateway for model graders."""
    return request.app.state.graders


async def get_pending_usage(request: Request):
    """What the gateway counted and has not flushed yet (UsageBook.pending), for usage figures."""
    return request.app.state.usage.pending


async def get_loops(request: Request):
    return request.app.state.loops


async def get_metrics_exporter(request: Request):
    return request.app.state.metrics


class _KeyLookups:
    """One database lookup at a time per key: when a cached key expires (every `key_cache_ttl_s`), all the requests
    in flight with it miss together, and each looked it up in a thread of its own: 32 clients stalled ~60 ms
    (the p99 of a list at 32 clients, once per 5 s). The others now wait for the first one's answer, error
    included. One table per event loop (a future belongs to the loop that made it)."""

    def __init__(self) -> None:
        self._pending: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future]] = (
            weakref.WeakKeyDictionary()
        )

    async def authenticate(self, ctx: AppContext, header: str | None) -> ProjectPrincipal:
        pending = self._pending.setdefault(asyncio.get_running_loop(), {})
        key = header or ""
        lookup = pending.get(key)
        if lookup is None:
            lookup = pending[key] = asyncio.ensure_future(run_in_threadpool(authenticate_project, ctx, header))
            lookup.add_done_callback(lambda _: pending.pop(key, None))
        return await asyncio.shield(lookup)  # a waiter that goes away must not cancel the others' lookup


_KEY_LOOKUPS = _KeyLookups()


class _BearerKey(HTTPBearer):
    """A dependency that is itself the OpenAPI document's `HTTPBearer` scheme, and checks the key (service.auth).
    FastAPI solved a scheme declared as a sub-dependency of the principal's as a dependency level of its own, on
    every request: ~5% of a job's retrieve (py-spy)."""

    def __init__(self, check):
        super().__init__(
            auto_error=False,
            scheme_name="HTTPBearer",
            description="A project API key, or the admin key for /v1/organization",
        )
        self._check = check

    async def __call__(self, request: Request):  # type: ignore[override]
        return await self._check(request)


async def _project_principal(request: Request) -> ProjectPrincipal:
    ctx, header = request.app.state.ctx, request.headers.get("authorization")
    principal = cached_principal(ctx, header)
    if principal is None:  # (not `or`: mypy would type it Optional)
        principal = await _KEY_LOOKUPS.authenticate(ctx, header)
    request.state.project_id = principal.project_id  # for the access log
    return principal


async def _admin_principal(request: Request) -> None:
    authenticate_admin(request.app.state.ctx, request.headers.get("authorization"))


project_principal = _BearerKey(_project_principal)
admin_principal = _BearerKey(_admin_principal)


async def metrics_scraper(request: Request) -> None:
    authenticate_metrics_scraper(request.app.state.ctx, request.headers.get("authorization"))
