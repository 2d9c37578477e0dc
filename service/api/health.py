"""Liveness and readiness."""

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import get_ctx
from service.api.routing import JSONRoute
from service.context import AppContext

router = APIRouter(route_class=JSONRoute, tags=["health"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: AppContext = Depends(get_ctx)):
    checks = {}
    for name, probe in (("database", ctx.db.ping), ("storage", ctx.storage.ping)):
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as exc:  # readiness reports the failure instead of raising it
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)
