"""Dependencies shared by the routers: the app context and the authenticated caller."""

from __future__ import annotations

from fastapi import Request, Security
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

# Declared for the OpenAPI document; the header itself is checked in service.auth.
_bearer = HTTPBearer(auto_error=False, description="A project API key, or the admin key for /v1/organization")


# These are async so that FastAPI calls them on the event loop instead of a worker
# thread each; only a key not seen recently costs a thread and a query.


async def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def get_gateway(request: Request):
    return request.app.state.gateway


async def get_pending_usage(request: Request):
    """What the gateway counted and has not flushed yet (UsageBook.pending), for usage figures."""
    return request.app.state.usage.pending


async def get_loops(request: Request):
    return request.app.state.loops


async def get_metrics_exporter(request: Request):
    return request.app.state.metrics


async def project_principal(request: Request, _=Security(_bearer)) -> ProjectPrincipal:
    ctx, header = request.app.state.ctx, request.headers.get("authorization")
    principal = cached_principal(ctx, header)
    if principal is None:  # (not `or`: mypy would type it Optional)
        principal = await run_in_threadpool(authenticate_project, ctx, header)
    request.state.project_id = principal.project_id  # for the access log
    return principal


async def admin_principal(request: Request, _=Security(_bearer)) -> None:
    authenticate_admin(request.app.state.ctx, request.headers.get("authorization"))


async def metrics_scraper(request: Request) -> None:
    authenticate_metrics_scraper(request.app.state.ctx, request.headers.get("authorization"))
