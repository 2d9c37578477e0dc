"""The FastAPI application: routers, error envelope, lifespan of background loops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import __version__, console, metrics
from service.api import (
    admin,
    base_models,
    checkpoint_permissions,
    dataset_grants,
    endpoints,
    evals,
    external_models,
    files,
    fine_tuning,
    gateway,
    graders,
    health,
    internal,
    models,
    observability,
    stored_completions,
    vertex,
    webhooks,
)
from service.api.contract import build_openapi
from service.api.error_envelope import install_error_handlers
from service.api.routing import DATABASE_LANE
from service.context import AppContext
from service.deploy.deployer import EndpointDeployer
from service.engines import engine_api_keys, open_engine_backend
from service.eval_runner import EvalRunner
from service.executors import open_executor
from service.files import expire_files
from service.gateway import Gateway
from service.grading import Graders
from service.hints import AppHinter, Loop
from service.http_metrics import HttpMetrics
from service.job_validation import advance_validating_jobs
from service.leader import LeaderLock
from service.logs import AccessLogMiddleware
from service.loops import BackgroundLoop, Loops
from service.metrics_export import MetricsExporter
from service.scheduler import Scheduler
from service.settings import Settings
from service.usage import UsageBook
from service.webhooks import Deliverer

log = logging.getLogger("hone.app")
LEADERSHIP_RETRY_S = 5.0
WAKE_BATCH_S = 0.05  # the least time between two steps of a loop that requests wake  # how often a non-leading worker checks whether the leader is gone


class _LeaderDuties:
    """What only the leading process does: validate and schedule jobs, run endpoints' engines, expire files."""

    def __init__(self, app: FastAPI, ctx: AppContext):
        self.app, self.ctx = app, ctx
        self.deployer: EndpointDeployer | None = None
        self.eval_runner: EvalRunner | None = None
        self.deliverer: Deliverer | None = None

    async def take_up(self) -> None:
        ctx, settings, loops = self.ctx, self.ctx.settings, self.app.state.loops
        scheduler = Scheduler(ctx, open_executor(settings))
        await run_in_threadpool(scheduler.reconcile)

        def validate_then_wake_scheduler():
            if advance_validating_jobs(ctx):
                loops.wake(Loop.SCHEDULER)

        self.deployer = self.app.state.deployer = EndpointDeployer(ctx, open_engine_backend(settings))
        # Woken by every job created (validation) and by every validation, action and trainer exit (scheduler): at
        # most one step each 50 ms, so that a burst of creates is validated and scheduled in batches, not one
        # transaction per job (in-process, PostgreSQL, 32 clients: 2.2-2.7 -> 1.9-2.1 ms of CPU per job created).
        loops.add(
            BackgroundLoop(
                Loop.VALIDATION,
                validate_then_wake_scheduler,
                settings.training.job_validation_poll_s,
                min_gap=WAKE_BATCH_S,
            )
        )
        loops.add(
            BackgroundLoop(Loop.SCHEDULER, scheduler.tick, settings.training.scheduler_poll_s, min_gap=WAKE_BATCH_S)
        )
        loops.add(BackgroundLoop(Loop.FILE_EXPIRY, lambda: expire_files(ctx), settings.files.file_expiry_poll_s))
        loops.add(BackgroundLoop(Loop.ENDPOINTS, self.deployer.tick, settings.serving.endpoint_poll_s))
        self.eval_runner = EvalRunner(ctx, self.app.state.graders, asyncio.get_running_loop())
        loops.add(BackgroundLoop(Loop.EVALS, self.eval_runner.tick, settings.graders.eval_poll_s, min_gap=WAKE_BATCH_S))
        self.deliverer = Deliverer(ctx)  # webhooks: the outbox's due deliveries sent
        loops.add(BackgroundLoop(Loop.WEBHOOKS, self.deliverer.tick, settings.webhooks.webhook_poll_s))

    async def lay_down(self) -> None:
        if self.eval_runner is not None:
            await self.eval_runner.stop()  # its runs stay in progress: the next leader finishes them
        if self.deployer is not None:
            await run_in_threadpool(self.deployer.close)  # engines are children of this process: stop them
        if self.deliverer is not None:
            await run_in_threadpool(self.deliverer.close)


def create_app(settings: Settings | None = None, *, context: AppContext | None = None) -> FastAPI:
    settings = settings or Settings()
    DATABASE_LANE.size = settings.resolved_database_threads

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx = context or AppContext.build(settings)
        app.state.ctx = ctx
        metrics.configure(settings.server.metrics_max_label_values, settings.server.metrics_model_labels)
        app.state.metrics = MetricsExporter(ctx, settings.metrics_multiprocess_dir)
        loops = app.state.loops = Loops()
        usage = app.state.usage = UsageBook()
        loops.add(BackgroundLoop(Loop.USAGE, lambda: usage.flush(ctx.db), settings.serving.usage_flush_s))
        app.state.gateway = Gateway(ctx, usage, engine_api_keys(settings))
        app.state.graders = Graders(ctx, app.state.gateway)
        ctx.hinter = AppHinter(loops, app.state.gateway)  # the domain's changes wake these loops now
        leader = app.state.leader = LeaderLock(settings.server.data_dir.resolve() / "leader.lock")
        duties = _LeaderDuties(app, ctx)
        if leader.try_acquire():
            await duties.take_up()
        else:
            log.info("another server process leads; this one serves requests only")
            event_loop = asyncio.get_running_loop()

            def take_over_if_free():
                if not leader.held and leader.try_acquire():
                    log.info("taking over the background loops")
                    asyncio.run_coroutine_threadsafe(duties.take_up(), event_loop).result()

            loops.add(BackgroundLoop(Loop.LEADERSHIP, take_over_if_free, LEADERSHIP_RETRY_S))
        loops.start()
        # Start-up objects (routes, models, SQLAlchemy metadata) live as long as the process; keep
        # the collector from re-scanning them: full collections paused the server ~110 ms each.
        gc.collect()
        gc.freeze()
        log.info(
            "hone control plane ready",
            extra={
                "database": ctx.db.engine.url.render_as_string(hide_password=True),
                "storage": settings.resolved_storage_url,
                "leader": leader.held,
            },
        )
        try:
            yield
        finally:
            await loops.stop()
            await duties.lay_down()  # eval runs stop before the gateway they sample through closes
            await app.state.gateway.close()
            await run_in_threadpool(usage.flush, ctx.db)
            leader.release()
            ctx.db.dispose()
            log.info("hone control plane stopped")

    app = FastAPI(
        title="Hone",
        version=__version__,
        lifespan=lifespan,
        description="Self-hosted tuning service with OpenAI- and Vertex-compatible APIs.",
        # Hone's metrics are Prometheus's (service/metrics.py). FastAPI's OpenTelemetry hooks otherwise look up
        # the global tracer and meter providers on every request (~1% of a retrieve's CPU).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    # Routes are matched in order, twice a request (FastAPI's matches, then its handle): the busiest routers first.
    # No two routers' paths overlap, so the order decides nothing else (the OpenAPI document sorts its keys).
    # Jobs and files after admin and the rest cost list jobs ~10% of its CPU in matching (py-spy).
    for router in (
        health.router,
        fine_tuning.router,
        files.router,
        observability.router,
        admin.router,
        dataset_grants.router,
        checkpoint_permissions.router,
        base_models.router,
        models.router,
        endpoints.router,
        graders.router,
        evals.router,
        external_models.router,
        stored_completions.router,
        webhooks.router,
        vertex.router,
        internal.router,
    ):
        app.include_router(router)
    app.router.routes.extend(console.routes())  # the web console's static pages, at /console (last: rarely asked)
    app.router.routes[:0] = gateway.routes  # first: the hot path should not try every other route before it
    app.add_middleware(AccessLogMiddleware, observers=(HttpMetrics(),))
    return app
