"""Liveness and readiness."""

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service import api_models as m
from service.api.deps import get_ctx, get_loops
from service.api.routing import JSONRoute
from service.context import AppContext
from service.hints import Loop
from service.loops import Loops

router = APIRouter(route_class=JSONRoute, tags=["health"])


@router.get("/healthz", response_model=m.Health)
async def healthz():  # on the event loop: a liveness probe needs no worker thread
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=m.Readiness,
    responses={503: {"model": m.Readiness, "description": "Not ready: a check failed."}},
)
async def readyz(ctx: AppContext = Depends(get_ctx), loops: Loops = Depends(get_loops)):
    """Ready when the database and storage answer and this process's background loops run on time.
    A process that does not lead reports the loops as 'standby' (another worker runs them)."""
    checks = {}
    for name, probe in (("database", ctx.db.ping), ("storage", ctx.storage.ping)):
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as exc:  # readiness reports the failure instead of raising it
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    health = loops.health()
    checks[Loop.SCHEDULER] = health.get(Loop.SCHEDULER, "standby" if Loop.LEADERSHIP in health else "not started")
    ready = all(v in ("ok", "standby") for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks, "loops": health},
        status_code=200 if ready else 503,
    )
