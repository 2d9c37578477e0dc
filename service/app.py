"""The FastAPI application: routers, error envelope, lifespan of background loops."""

from __future__ import annotations

import contextlib
import gc
import logging

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.api import admin, base_models, endpoints, files, fine_tuning, gateway, health, internal, models
from service.context import AppContext
from service.errors import install_error_handlers
from service.files import expire_files
from service.deployer import EndpointDeployer
from service.engines import open_engine_backend
from service.executors import open_executor
from service.gateway import Gateway
from service.jobs import advance_validating_jobs
from service.logs import AccessLogMiddleware
from service.loops import BackgroundLoop, Loops
from service.scheduler import Scheduler
from service.settings import Settings
from service.usage import UsageBook

log = logging.getLogger("hone.app")


def create_app(settings: Settings | None = None, *, context: AppContext | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx = context or AppContext.build(settings)
        app.state.ctx = ctx
        loops = app.state.loops = Loops()
        scheduler = Scheduler(ctx, open_executor(ctx.settings))
        await run_in_threadpool(scheduler.reconcile)

        def validate_then_wake_scheduler():
            if advance_validating_jobs(ctx):
                loops.wake("scheduler")

        loops.add(BackgroundLoop("validation", validate_then_wake_scheduler, settings.job_validation_poll_s))
        loops.add(BackgroundLoop("scheduler", scheduler.tick, settings.scheduler_poll_s))
        loops.add(BackgroundLoop("file-expiry", lambda: expire_files(ctx), settings.file_expiry_poll_s))
        engines = open_engine_backend(ctx.settings)
        deployer = app.state.deployer = EndpointDeployer(ctx, engines)
        usage = app.state.usage = UsageBook()
        app.state.gateway = Gateway(ctx, usage, lambda key: (h.api_key if key and (h := engines.get(key)) else None))
        loops.add(BackgroundLoop("endpoints", deployer.tick, settings.endpoint_poll_s))
        loops.add(BackgroundLoop("usage", lambda: usage.flush(ctx.db), settings.usage_flush_s))
        loops.start()
        # Start-up objects (routes, models, SQLAlchemy metadata) live as long as the process; keep
        # the collector from re-scanning them: full collections paused the server ~110 ms each.
        gc.collect()
        gc.freeze()
        log.info("hone control plane ready", extra={"database": ctx.db.engine.url.render_as_string(hide_password=True),
                                                    "storage": settings.resolved_storage_url})
        try:
            yield
        finally:
            await loops.stop()
            await app.state.gateway.close()
            await run_in_threadpool(deployer.close)  # engines are children of this process: stop them
            await run_in_threadpool(usage.flush, ctx.db)
            ctx.db.dispose()
            log.info("hone control plane stopped")

    app = FastAPI(title="Hone", version="0.1.0", lifespan=lifespan,
                  description="Self-hosted tuning service with OpenAI- and Vertex-compatible APIs.")
    install_error_handlers(app)
    for router in (health.router, admin.router, base_models.router, files.router, fine_tuning.router,
                   models.router, endpoints.router, internal.router):
        app.include_router(router)
    app.router.routes[:0] = gateway.routes  # first: the hot path should not try every other route before it
    app.add_middleware(AccessLogMiddleware)
    return app
