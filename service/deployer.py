"""The endpoint deployer: a background loop that makes the engines match the endpoints.

Each tick: deploying endpoints get a deploy (in a worker thread): weights fetched from storage into a local
cache, an engine started (one per endpoint, or one per base model with HONE_SHARED_ENGINES), the adapter
hot-loaded, and the parity gate passed before the endpoint is `ready`. Ready endpoints whose engine died or
restarted are deployed again. Stopped endpoints have their adapter unloaded and local copy removed, and
engines nothing uses any more are stopped."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select

from inference.client import AdapterLoadError, AdapterNotFound, EngineClient, EngineUnavailable
from inference.launcher import choose_engine
from service import metrics, parity
from service.context import AppContext
from service.db.tables import Endpoint, Job, ModelUsage
from service.endpoint_states import EndpointState
from service.job_states import JobStatus
from service.endpoints import live_endpoints, transition
from service.engines import EngineBackend, EngineHandle, EngineSpec, EngineStartError
from service.storage import BlobNotFound

log = logging.getLogger("hone.deployer")

# Trainer bookkeeping that checkpoints carry but engines do not need.
_NOT_SERVED = ("trainer_state.pt", "COMPLETE")


class DeployError(Exception):
    def __init__(self, code: str, message: str, *, retry: bool = True):
        super().__init__(message)
        self.code, self.message, self.retry = code, message, retry


class EndpointDeployer:
    def __init__(self, ctx: AppContext, backend: EngineBackend):
        self.ctx, self.backend = ctx, backend
        self.engine = choose_engine(ctx.settings.inference_engine)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deploy")
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._cache = ctx.settings.resolved_adapter_cache_dir
        prewarm = ctx.settings.prewarm_engines
        # Default: prewarm built-in engines run locally (the Kubernetes backend has no spares to hand over).
        self.prewarm = (self.engine == "builtin" and ctx.settings.endpoint_backend == "local") \
            if prewarm is None else prewarm

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
                if handle is None or handle.url != ep.url:
                    self._restart(ep.id, "its engine stopped" if handle is None else "its engine was restarted")
                    continue
            elif ep.state == EndpointState.DEPLOYING.value:
                self._submit(ep.id)
        for ep in stopped:
            self._retire(ep)
        warm = self._prewarm() if self.prewarm else set()
        self._stop_unused_engines(warm)

    def _prewarm(self) -> set[str]:
        """Engine keys kept warm for jobs that are training now and will deploy when they succeed."""
        if not self.ctx.settings.auto_deploy:
            return set()
        with self.ctx.db.read() as session:
            bases = set(session.execute(select(Job.base_model).where(Job.status == JobStatus.RUNNING.value,
                                                                     Job.auto_deploy.is_(True))).scalars())
        keys = set()
        for base in bases:
            key = f"base:{base}" if self.ctx.settings.shared_engines else f"spare:{base}"
            keys.add(key)
            if key not in self.backend.keys():
                self._submit(key, lambda b=base, k=key: self._start_warm(b, k))
        return keys

    def _start_warm(self, base: str, key: str) -> None:
        try:
            self.backend.ensure(self._base_spec(base, key))
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
            if ep is not None and transition(ep, EndpointState.DEPLOYING, restarts=ep.restarts + 1, url=None,
                                             error={"code": "engine_restarted", "message": f"Redeploying: {why}."}):
                log.warning("endpoint redeploying", extra={"endpoint_id": endpoint_id, "reason": why})
        self._submit(endpoint_id)

    # --- scale to zero ------------------------------------------------------------------------------------

    def _idle(self, session, ready: list[Endpoint]) -> dict[str, int]:
        """Ready endpoints past their idle timeout -> the timeout: no request since (counted by the gateway's
        usage book, flushed every few seconds) for that long, nor since they became ready."""
        default = self.ctx.settings.endpoint_idle_timeout_s
        timed = [ep for ep in ready if (ep.idle_timeout_s if ep.idle_timeout_s is not None else default) > 0]
        if not timed:
            return {}
        last_used = dict(((row.project_id, row.model), row.updated_at) for row in session.execute(
            select(ModelUsage).where(ModelUsage.model.in_({ep.model for ep in timed}))).scalars())
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
            self._unload(handle, ep)
        with self.ctx.db.write() as session:
            row = session.get(Endpoint, ep.seq)
            if row is not None and row.state == EndpointState.READY.value and \
                    transition(row, EndpointState.IDLE, url=None, error=None):
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
            self._failed_attempt(ep.id, DeployError("deploy_error", f"{type(exc).__name__}: {exc}"))
            return
        with self.ctx.db.write() as session:
            row = session.get(Endpoint, ep.seq)
            moved = row is not None and transition(row, EndpointState.READY, url=handle.url, engine=self.engine,
                                                   engine_key=handle.key, error=None, ready_at=int(time.time()),
                                                   failed_attempts=0)
        if moved:
            log.info("endpoint ready", extra={"endpoint_id": ep.id, "model": ep.model,
                                              "seconds": round(time.monotonic() - started, 2)})
        else:  # deleted while it deployed
            self._retire(ep, handle=handle)

    def _serve(self, ep: Endpoint) -> tuple[EngineHandle, Path | None]:
        weights = self._fetch_weights(ep) if ep.weights_prefix else None
        spec = self._engine_spec(ep, weights)
        try:
            handle = self.backend.ensure(spec)
        except EngineStartError as exc:
            raise DeployError("engine_start_failed", str(exc))
        with EngineClient(handle.url, api_key=handle.api_key) as client:
            try:
                if ep.kind == "adapter":
                    load_started = time.perf_counter()
                    client.load_adapter(ep.model, self._engine_path(handle, ep, weights))
                    loaded_in = time.perf_counter() - load_started
                    metrics.ADAPTER_LOAD.labels(metrics.model_name_label(ep.base_model)).observe(loaded_in)
                if weights is not None:
                    parity.check(client, ep.model, weights, self.ctx.settings.parity_samples)
            except parity.ParityFailure as exc:
                self._unload(handle, ep)
                raise DeployError("parity_check_failed", str(exc), retry=False)
            except (AdapterNotFound, AdapterLoadError) as exc:
                raise DeployError("adapter_load_failed", f"The engine refused the adapter: {exc}", retry=False)
            except EngineUnavailable as exc:
                raise DeployError("engine_unavailable", str(exc))
        return handle, weights

    def _engine_path(self, handle: EngineHandle, ep: Endpoint, weights: Path) -> str:
        """Where the engine finds the adapter: the local copy, unless the backend's engines cannot see this
        disk (Kubernetes: the engine pod's fetcher copies it from storage and answers its own path)."""
        return self.backend.stage_weights(handle, ep.id, ep.weights_prefix, weights)

    def _engine_spec(self, ep: Endpoint, weights: Path | None) -> EngineSpec:
        if ep.kind == "full":  # fully tuned weights are their own base: an engine of their own
            return self._spec(ep.id, str(weights), ep.model, f"storage:{ep.weights_prefix}")
        if self.ctx.settings.shared_engines:
            return self._base_spec(ep.base_model, f"base:{ep.base_model}")
        spec = self._base_spec(ep.base_model, ep.id)
        if self.engine == "vllm" and weights is not None:
            # vLLM ignores templates stored beside adapters: an engine of its own gets the pinned one.
            pinned_file = weights / "hone_serving.json"
            pinned = json.loads(pinned_file.read_text()).get("chat_template") if pinned_file.exists() else None
            if pinned:
                (weights / "hone_chat_template.jinja").write_text(pinned)
                spec = dataclasses.replace(spec, chat_template=str(weights / "hone_chat_template.jinja"))
        return spec

    def _base_spec(self, base: str, key: str) -> EngineSpec:
        registered = self.ctx.base_models.get(base)
        source = registered.source if registered is not None and registered.source.startswith("builtin:") else None
        return self._spec(key, self._base_model_path(base), base, source)

    def _spec(self, key: str, model_path: str, served_name: str, model_source: str | None) -> EngineSpec:
        s = self.ctx.settings
        return EngineSpec(key, self.engine, model_path, served_name, max_loras=s.max_loras,
                          max_cpu_loras=s.resolved_max_cpu_loras, max_lora_rank=s.max_lora_rank,
                          model_source=model_source)

    def _base_model_path(self, name: str) -> str:
        base = self.ctx.base_models.get(name)
        if base is None:
            raise DeployError("model_not_found", f"Base model {name!r} is no longer registered.", retry=False)
        if not base.source.startswith("builtin:"):
            return base.source
        # Built-in models are built where the engine runs (the spec's model_source says how): here on first
        # use by the local backend, in the pod by the Kubernetes one.
        return str(self.ctx.settings.resolved_model_cache_dir / base.source.split(":", 1)[1])

    def _fetch_weights(self, ep: Endpoint) -> Path:
        """A complete local copy (engines reload evicted adapters from it), made atomically by renaming."""
        target = self._cache / ep.id
        if (target / ".complete").exists():
            return target
        storage, prefix = self.ctx.storage, ep.weights_prefix
        work = self._cache / f".{ep.id}.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            keys = [k for k in storage.list(prefix) if k.rsplit("/", 1)[-1] not in _NOT_SERVED]
            if not keys:
                raise DeployError("weights_not_found", f"No weights under {prefix} in storage.", retry=False)
            for key in keys:
                path = work / key[len(prefix):]
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as out:
                    for chunk in storage.iter_chunks(key):
                        out.write(chunk)
            (work / ".complete").write_text(prefix)
            shutil.rmtree(target, ignore_errors=True)
            work.rename(target)
        except BlobNotFound as exc:
            raise DeployError("weights_not_found", f"Weights vanished from storage while fetching: {exc}", retry=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def _failed_attempt(self, endpoint_id: str, exc: DeployError) -> None:
        limit = self.ctx.settings.max_deploy_attempts
        with self.ctx.db.write() as session:
            ep = _endpoint(session, endpoint_id)
            if ep is None or ep.state != EndpointState.DEPLOYING.value:
                return
            error = {"code": exc.code, "message": exc.message}
            if not exc.retry or ep.failed_attempts + 1 >= limit:
                transition(ep, EndpointState.FAILED, error=error)
                log.error("endpoint failed", extra={"endpoint_id": endpoint_id, "code": exc.code, "reason": exc.message})
            else:
                ep.failed_attempts += 1
                ep.error = error
                log.warning("deploy attempt failed; retrying", extra={"endpoint_id": endpoint_id, "code": exc.code})

    # --- retiring ----------------------------------------------------------------------------------------

    def _stopped_with_local_copies(self, session) -> list[Endpoint]:
        if not self._cache.exists():
            return []
        ids = [p.name for p in self._cache.iterdir() if not p.name.startswith(".")]
        if not ids:
            return []
        rows = session.execute(select(Endpoint).where(Endpoint.id.in_(ids))).scalars().all()
        gone = {r.id for r in rows}
        for orphan in set(ids) - gone:  # a deploy of a record that no longer exists
            shutil.rmtree(self._cache / orphan, ignore_errors=True)
        return [r for r in rows if r.state in (EndpointState.STOPPED.value, EndpointState.FAILED.value)]

    def _unload(self, handle: EngineHandle, ep: Endpoint) -> None:
        if ep.kind != "adapter":
            return
        try:
            with EngineClient(handle.url, api_key=handle.api_key) as client:
                client.unload_adapter(ep.model)
        except EngineUnavailable:
            pass

    def _retire(self, ep: Endpoint, handle: EngineHandle | None = None) -> None:
        handle = handle or (self.backend.get(ep.engine_key) if ep.engine_key else None)
        if handle is not None:  # a shared engine, or one Hone does not run (static), keeps serving the others
            self._unload(handle, ep)
        shutil.rmtree(self._cache / ep.id, ignore_errors=True)
        log.info("endpoint retired", extra={"endpoint_id": ep.id, "state": ep.state})

    def _stop_unused_engines(self, warm: set[str]) -> None:
        # Read again rather than reuse the tick's snapshot: a job that finished after that snapshot has its
        # endpoint (which will claim the job's spare) visible only now.
        with self.ctx.db.read() as session:
            live = live_endpoints(session)
            retiring = self._stopped_with_local_copies(session)
            idle = session.execute(select(Endpoint.engine_key).where(
                Endpoint.state == EndpointState.IDLE.value, Endpoint.engine_key.is_not(None))).scalars().all()
        needed = warm | {ep.engine_key for ep in live if ep.engine_key} | {ep.id for ep in live}
        # an endpoint stopped since this tick began is retired (its adapter unloaded) on the next one
        needed |= {ep.engine_key for ep in retiring if ep.engine_key}
        # a deploying endpoint is about to claim the spare its job kept warm
        needed |= {f"spare:{ep.base_model}" for ep in live if ep.state == EndpointState.DEPLOYING.value}
        if self.ctx.settings.shared_engines:
            needed |= {f"base:{ep.base_model}" for ep in live}
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
