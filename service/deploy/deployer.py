"""The endpoint deployer: a background loop that makes the engines match the endpoints.

Each tick: deploying endpoints get a deploy (in a worker thread): weights fetched from storage into a local
cache, an engine started (one per endpoint, or one per base model with HONE_SHARED_ENGINES), the adapter
hot-loaded, and the parity gate passed before the endpoint is `ready`. Ready endpoints whose engine died or
restarted are deployed again. Stopped endpoints have their adapter unloaded and local copy removed, and
engines nothing uses any more are stopped. Which engine serves what is placement.py's call, getting the weights
there adapters.py's, and the gate parity.py's."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select

from inference.client import AdapterLoadError, AdapterNotFound, EngineClient, EngineUnavailable
from inference.launcher import choose_engine
from service.context import AppContext
from service.db.tables import Endpoint, Job, ModelUsage
from service.deploy import DeployError, parity
from service.deploy.adapters import AdapterLoader
from service.deploy.placement import EngineKey, Placement
from service.deploy.replicas import Replicas
from service.endpoint_states import EndpointState
from service.endpoints import live_endpoints, transition
from service.engines import EngineBackend, EngineHandle, EngineStartError
from service.errors import ErrorCode
from service.job_states import JobStatus

log = logging.getLogger("hone.deployer")


class EndpointDeployer:
    def __init__(self, ctx: AppContext, backend: EngineBackend):
        self.ctx, self.backend = ctx, backend
        self.engine = choose_engine(ctx.settings.serving.inference_engine)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deploy")
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self.placement = Placement(ctx, self.engine)
        self.adapters = AdapterLoader(ctx, backend)
        self.replicas = Replicas(self)
        prewarm = ctx.settings.serving.prewarm_engines
        # Default: prewarm built-in engines run locally (the Kubernetes backend has no spares to hand over).
        self.prewarm = (
            (self.engine == "builtin" and ctx.settings.serving.endpoint_backend == "local")
            if prewarm is None
            else prewarm
        )

    # --- the loop ------------------------------------------------------------------------------------

    def tick(self) -> None:
        with self.ctx.db.read() as session:
            live = live_endpoints(session)
            stopped = self._stopped_with_local_copies(session)
            idle = self._idle(session, [ep for ep in live if ep.state == EndpointState.READY.value])
        for ep in live:
            if ep.id in idle:
                self._suspend(ep, idle[ep.id])
                continue
            if ep.state == EndpointState.READY.value:
                handle = self.backend.get(ep.engine_key or "")
                # one replica: a new url is a new engine, without the adapter; several: replicas.py follows them
                if handle is None or ((ep.replicas or 1) == 1 and handle.url != ep.url):
                    self._restart(ep.id, "its engine stopped" if handle is None else "its engine was restarted")
                    continue
                self.replicas.follow(ep, handle)
            elif ep.state == EndpointState.DEPLOYING.value:
                self._submit(ep.id)
        for ep in stopped:
            self._retire(ep)
        warm = self._prewarm() if self.prewarm else set()
        self._stop_unused_engines(warm)

    def _prewarm(self) -> set[str]:
        """Engine keys kept warm for jobs that are training now and will deploy when they succeed."""
        if not self.ctx.settings.serving.auto_deploy:
            return set()
        with self.ctx.db.read() as session:
            bases = set(
                session.execute(
                    select(Job.base_model).where(Job.status == JobStatus.RUNNING.value, Job.auto_deploy.is_(True))
                ).scalars()
            )
        keys: set[str] = set()
        for base in bases:
            key = self.placement.warm_key(base)
            keys.add(key)
            if key not in self.backend.keys():
                self._submit(key, lambda b=base, k=key: self._start_warm(b, k))
        return keys

    def _start_warm(self, base: str, key: EngineKey) -> None:
        try:
            self.backend.ensure(self.placement.base_spec(base, key))
        except (DeployError, EngineStartError) as exc:
            log.warning("could not prewarm an engine", extra={"base_model": base, "reason": str(exc)})

    def _submit(self, task_id: str, task=None) -> None:
        """Runs a deploy (or another task) in a worker unless one with the same id is under way."""
        with self._lock:
            if task_id in self._inflight:
                return
            self._inflight.add(task_id)
        self._pool.submit(self._guarded, task_id, task or (lambda: self._deploy(task_id)))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.backend.close()

    def _restart(self, endpoint_id: str, why: str) -> None:
        with self.ctx.db.write() as session:
            ep = _endpoint(session, endpoint_id)
            if ep is not None and transition(
                session,
                ep,
                EndpointState.DEPLOYING,
                restarts=ep.restarts + 1,
                error={"code": ErrorCode.ENGINE_RESTARTED, "message": f"Redeploying: {why}."},
            ):
                log.warning("endpoint redeploying", extra={"endpoint_id": endpoint_id, "reason": why})
        self._submit(endpoint_id)

    # --- scale to zero ------------------------------------------------------------------------------------

    def _idle(self, session, ready: list[Endpoint]) -> dict[str, int]:
        """Ready endpoints past their idle timeout -> the timeout: no request since (counted by the gateway's
        usage book, flushed every few seconds) for that long, nor since they became ready."""
        default = self.ctx.settings.serving.endpoint_idle_timeout_s
        timed = [ep for ep in ready if (ep.idle_timeout_s if ep.idle_timeout_s is not None else default) > 0]
        if not timed:
            return {}
        last_used = dict(
            ((row.project_id, row.model), row.updated_at)
            for row in session.execute(
                select(ModelUsage).where(ModelUsage.model.in_({ep.model for ep in timed}))
            ).scalars()
        )
        now, found = time.time(), {}
        for ep in timed:
            timeout = ep.idle_timeout_s if ep.idle_timeout_s is not None else default
            if now - max(ep.ready_at or 0, last_used.get((ep.project_id, ep.model)) or 0) >= timeout:
                found[ep.id] = timeout
        return found

    def _suspend(self, ep: Endpoint, timeout: int) -> None:
        """Idle: the adapter leaves a shared engine; an engine nothing live needs is suspended below."""
        handle = self.backend.get(ep.engine_key or "")
        if handle is not None and handle.key != ep.id:
            self.adapters.unload(handle, ep)
        with self.ctx.db.write() as session:
            row = session.get(Endpoint, ep.seq)
            if (
                row is not None
                and row.state == EndpointState.READY.value
                and transition(session, row, EndpointState.IDLE, error=None)
            ):
                log.info("endpoint idle: scaled to zero", extra={"endpoint_id": ep.id, "idle_timeout_s": timeout})

    # --- deploying ---------------------------------------------------------------------------------------

    def _guarded(self, task_id: str, task) -> None:
        try:
            task()
        except Exception:
            log.exception("deploy task crashed", extra={"task": task_id})
        finally:
            with self._lock:
                self._inflight.discard(task_id)

    def _deploy(self, endpoint_id: str) -> None:
        with self.ctx.db.read() as session:
            ep = _endpoint(session, endpoint_id)
            if ep is None or ep.state != EndpointState.DEPLOYING.value:
                return
            session.expunge(ep)
        started = time.monotonic()
        try:
            handle, weights = self._serve(ep)
        except DeployError as exc:
            self._failed_attempt(ep.id, exc)
            return
        except Exception as exc:  # counted like any failed attempt, so a persistent bug ends in `failed`
            log.exception("deploy attempt crashed", extra={"endpoint_id": ep.id})
            self._failed_attempt(ep.id, DeployError(ErrorCode.DEPLOY_ERROR, f"{type(exc).__name__}: {exc}"))
            return
        with self.ctx.db.write() as session:
            row = session.get(Endpoint, ep.seq)
            moved = row is not None and transition(
                session,
                row,
                EndpointState.READY,
                url=handle.url,
                engine=self.engine,
                engine_key=handle.key,
                urls=list(handle.request_urls),
                ready_replicas=len(handle.ready),
            )
        if moved:
            log.info(
                "endpoint ready",
                extra={"endpoint_id": ep.id, "model": ep.model, "seconds": round(time.monotonic() - started, 2)},
            )
        else:  # deleted while it deployed
            self._retire(ep, handle=handle)

    def _serve(self, ep: Endpoint) -> tuple[EngineHandle, Path | None]:
        weights = self.adapters.fetch(ep) if ep.weights_prefix else None
        spec = self.placement.endpoint_spec(ep, weights)
        try:
            handle = self.backend.ensure(spec)
        except EngineStartError as exc:
            raise DeployError(ErrorCode.ENGINE_START_FAILED, str(exc)) from exc
        with EngineClient(handle.url, api_key=handle.api_key) as client:
            try:
                self.replicas.loaded[ep.id] = self.adapters.load_everywhere(handle, ep, weights, set())
                if weights is not None:
                    parity.check(client, ep.model, weights, self.ctx.settings.serving.parity_samples)
            except parity.ParityFailure as exc:
                self.adapters.unload(handle, ep)
                raise DeployError(ErrorCode.PARITY_CHECK_FAILED, str(exc), retry=False) from exc
            except (AdapterNotFound, AdapterLoadError) as exc:
                raise DeployError(
                    ErrorCode.ADAPTER_LOAD_FAILED, f"The engine refused the adapter: {exc}", retry=False
                ) from exc
            except EngineUnavailable as exc:
                raise DeployError(ErrorCode.ENGINE_UNAVAILABLE, str(exc)) from exc
        return handle, weights

    def _failed_attempt(self, endpoint_id: str, exc: DeployError) -> None:
        limit = self.ctx.settings.serving.max_deploy_attempts
        with self.ctx.db.write() as session:
            ep = _endpoint(session, endpoint_id)
            if ep is None or ep.state != EndpointState.DEPLOYING.value:
                return
            error = {"code": exc.code, "message": exc.message}
            if not exc.retry or ep.failed_attempts + 1 >= limit:
                transition(session, ep, EndpointState.FAILED, error=error)
                log.error(
                    "endpoint failed", extra={"endpoint_id": endpoint_id, "code": exc.code, "reason": exc.message}
                )
            else:
                ep.failed_attempts += 1
                ep.error = error
                log.warning("deploy attempt failed; retrying", extra={"endpoint_id": endpoint_id, "code": exc.code})

    # --- retiring ----------------------------------------------------------------------------------------

    def _stopped_with_local_copies(self, session) -> list[Endpoint]:
        ids = self.adapters.local_copies()
        if not ids:
            return []
        rows = session.execute(select(Endpoint).where(Endpoint.id.in_(ids))).scalars().all()
        gone = {r.id for r in rows}
        for orphan in set(ids) - gone:  # a deploy of a record that no longer exists
            self.adapters.remove(orphan)
        return [r for r in rows if r.state in (EndpointState.STOPPED.value, EndpointState.FAILED.value)]

    def _retire(self, ep: Endpoint, handle: EngineHandle | None = None) -> None:
        handle = handle or (self.backend.get(ep.engine_key) if ep.engine_key else None)
        if handle is not None:  # a shared engine, or one Hone does not run (static), keeps serving the others
            self.adapters.unload(handle, ep)
        self.adapters.remove(ep.id)
        self.replicas.forget(ep.id)
        log.info("endpoint retired", extra={"endpoint_id": ep.id, "state": ep.state})

    def _stop_unused_engines(self, warm: set[str]) -> None:
        # Read again rather than reuse the tick's snapshot: a job that finished after that snapshot has its
        # endpoint (which will claim the job's spare) visible only now.
        with self.ctx.db.read() as session:
            live = live_endpoints(session)
            retiring = self._stopped_with_local_copies(session)
            idle = (
                session.execute(
                    select(Endpoint.engine_key).where(
                        Endpoint.state == EndpointState.IDLE.value, Endpoint.engine_key.is_not(None)
                    )
                )
                .scalars()
                .all()
            )
        needed = self.placement.needed(live, retiring, warm)
        with self._lock:
            starting = set(self._inflight)  # a spare being started is not running yet; one just claimed is
        for key in self.backend.keys():
            if key in needed or key in starting:
                continue
            if key in idle:  # only idle endpoints use it: to zero, ready to come back (Kubernetes keeps its objects)
                self.backend.suspend(key)
            else:
                self.backend.stop(key)


def _endpoint(session, endpoint_id: str) -> Endpoint | None:
    return session.execute(select(Endpoint).where(Endpoint.id == endpoint_id)).scalar()
