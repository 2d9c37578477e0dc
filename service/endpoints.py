"""Endpoints: a tuned model, checkpoint or base model served by an inference engine.

This module is the resource (create, list, get, delete, the state machine's bookkeeping) and the lookup
the gateway routes by. Starting engines and loading adapters is the deployer's job (service/deploy/)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, object_session

from inference.launcher import choose_engine
from service.auth import ProjectPrincipal
from service.base_models import builtin_cannot_split
from service.context import AppContext
from service.db.tables import Checkpoint, CheckpointPermission, Endpoint, Job, ModelUsage, TunedModel
from service.endpoint_states import LIVE, EndpointState, can_transition, entry_fields
from service.engines.devices import device_pool
from service.errors import NAME_CHARS, ErrorCode, InvalidRequest, NotFound, excerpt
from service.hints import Loop
from service.ids import new_id
from service.pagination import list_envelope, paginate

log = logging.getLogger("hone.endpoints")


@dataclass(frozen=True)
class ServedModel:
    """What serving a model name takes: its weights and the base they run on."""

    name: str  # the engine-side name: the tuned model, the checkpoint's snapshot name, or the base model
    kind: str  # adapter | full | base
    base_model: str
    job_id: str | None = None
    checkpoint_id: str | None = None
    weights_prefix: str | None = None


def tuning_mode(job: Job) -> str:
    mode = (job.method.get(job.method["type"]) or {}).get("hyperparameters", {}).get("tuning_mode") or "lora"
    return "lora" if mode == "auto" else mode


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model '{excerpt(model, NAME_CHARS)}' does not exist or you do not have access to it.",
        param="model",
        code=ErrorCode.MODEL_NOT_FOUND,
    )


def usable_by(project_id: str, owner: Any, name: Any, *, shared: bool = True) -> Any:
    """The condition that a model (its owning project's and its name's columns) is the project's own or, with
    `shared`, shared with it by its owner (service/checkpoint_permissions.py)."""
    if not shared:
        return owner == project_id
    granted = select(CheckpointPermission.seq).where(
        CheckpointPermission.model == name,
        CheckpointPermission.owner_project_id == owner,
        CheckpointPermission.project_id == project_id,
    )
    return or_(owner == project_id, granted.exists())


def resolve_model(
    ctx: AppContext, session: Session, project_id: str, model: str, *, shared: bool = True
) -> ServedModel:
    """A model name as users write it (ft:..., a checkpoint id or snapshot name, a base model) in a project: its
    own, or with `shared` (every use but downloading) one another project shared with it by name. A shared model
    is served without its owner's job or checkpoint id: the caller's endpoint refers to nothing of the owner's."""
    tuned = session.execute(
        select(TunedModel).where(
            TunedModel.id == model, usable_by(project_id, TunedModel.project_id, TunedModel.id, shared=shared)
        )
    ).scalar()
    if tuned is not None:
        if tuned.job_id is None:  # imported (service/model_import.py): a LoRA adapter that no job made
            return ServedModel(tuned.id, "adapter", tuned.base_model, None, None, tuned.storage_prefix)
        job = session.execute(select(Job).where(Job.id == tuned.job_id)).scalar_one()
        kind = "full" if tuning_mode(job) == "full" else "adapter"
        own = tuned.project_id == project_id
        return ServedModel(tuned.id, kind, tuned.base_model, job.id if own else None, None, tuned.storage_prefix)
    by_id = model.startswith("ftckpt_")  # a checkpoint's id is its owner's handle: shared ones go by name
    column = Checkpoint.id if by_id else Checkpoint.fine_tuned_model_checkpoint
    found = session.execute(
        select(Checkpoint, Job)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(column == model, usable_by(project_id, Job.project_id, column, shared=shared and not by_id))
    ).first()
    if found is not None:
        ckpt, job = found
        kind = "full" if tuning_mode(job) == "full" else "adapter"
        own = job.project_id == project_id
        return ServedModel(
            ckpt.fine_tuned_model_checkpoint,
            kind,
            job.base_model,
            job.id if own else None,
            ckpt.id if own else None,
            ckpt.storage_prefix,
        )
    if ctx.base_models.get(model) is not None:
        return ServedModel(model, "base", model)
    raise model_not_found(model)


def check_servable(ctx: AppContext, served: ServedModel, replicas: int) -> None:
    """Refuses (400, naming the field) what this deployment could never serve, rather than an endpoint that
    fails after it was accepted: a split model on the built-in engine, replicas where engines cannot have them,
    more GPUs than the local backend has."""
    serving = ctx.settings.serving
    base = ctx.base_models.get(served.base_model)
    per_replica = base.serving_devices if base is not None else 1
    try:
        engine = choose_engine(serving.inference_engine)
    except ValueError:
        engine = None  # a bad setting: the deployer says so on the endpoint
    if base is not None and per_replica > 1 and engine == "builtin":
        raise InvalidRequest(builtin_cannot_split(base), param="model", code=ErrorCode.MODEL_NOT_AVAILABLE)
    if replicas > 1:
        if serving.endpoint_backend == "static":
            why = "HONE_ENDPOINT_BACKEND=static serves each base model from one server someone else runs"
        elif serving.shared_engines and served.kind != "full":
            why = "HONE_SHARED_ENGINES serves every adapter of a base model from one engine"
        else:
            why = None
        if why:
            raise InvalidRequest(
                f"replicas {replicas} cannot be served here: {why}; omit replicas or use 1.",
                param="replicas",
                code=ErrorCode.UNSUPPORTED_PARAMETER,
            )
    if serving.endpoint_backend == "local" and engine == "vllm":
        pool = device_pool(ctx.settings)
        if pool and per_replica * replicas > len(pool):
            raise InvalidRequest(
                f"{replicas} replica(s) of '{served.base_model}' need {per_replica * replicas} GPU(s) "
                f"({per_replica} each: tensor_parallel_size x pipeline_parallel_size); this server hands engines "
                f"{len(pool)} (HONE_ENGINE_DEVICES).",
                param="replicas" if per_replica <= len(pool) else "model",
                code=ErrorCode.NO_GPU_CAPACITY,
            )


# --- the resource ---------------------------------------------------------------------------------


def endpoint_api(ep: Endpoint, usage: dict) -> dict:
    return {
        "id": ep.id,
        "object": "endpoint",
        "created_at": ep.created_at,
        "updated_at": ep.updated_at,
        "model": ep.model,
        "base_model": ep.base_model,
        "kind": ep.kind,
        "state": ep.state,
        "engine": ep.engine,
        "fine_tuning_job_id": ep.job_id,
        "checkpoint_id": ep.checkpoint_id,
        "ready_at": ep.ready_at,
        "restarts": ep.restarts,
        "error": ep.error,
        "idle_timeout_s": ep.idle_timeout_s,
        "replicas": ep.replicas or 1,
        # engines serving it now (one per replica; fewer while a dead one is replaced); 0 unless ready
        "ready_replicas": (ep.ready_replicas or 0) if ep.state == EndpointState.READY.value else 0,
        "usage": usage,
    }


def _usage(session: Session, ep: Endpoint, pending_usage) -> dict:
    """Flushed totals plus what the gateway counted since (`pending_usage` is UsageBook.pending)."""
    row = session.get(ModelUsage, (ep.project_id, ep.model))
    pending = pending_usage(ep.project_id, ep.model) or {}
    totals = {
        k: (getattr(row, k) if row else 0) + pending.get(k, 0)
        for k in ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_ms_total")
    }
    latency = totals.pop("latency_ms_total")
    totals["mean_latency_ms"] = round(latency / totals["requests"], 2) if totals["requests"] else None
    return totals


def transition(session: Session, ep: Endpoint, target: EndpointState, **fields) -> bool:
    """The one way an endpoint's state moves: checks the table (service/endpoint_states.py), writes the target
    state's entry fields with the caller's, and compare-and-sets on the state it read. False when the table
    forbids it or the endpoint changed meanwhile (deleted, woken, failed by another replica)."""
    current = EndpointState(ep.state)
    if not can_transition(current, target):
        return False
    if target is EndpointState.FAILED and not fields.get("error"):
        raise ValueError(f"endpoint {ep.id} cannot fail without an error")  # a bug, never a request's fault
    fields = {**entry_fields(target, now=int(time.time())), **fields}
    result = session.execute(
        update(Endpoint)
        .where(Endpoint.seq == ep.seq, Endpoint.state == current.value)
        .values(state=target.value, **fields)
    )
    moved = result.rowcount == 1  # type: ignore[attr-defined]  # typed Result; an UPDATE's is a CursorResult
    session.refresh(ep)
    if moved:
        log.info("endpoint state", extra={"endpoint_id": ep.id, "from": current.value, "to": target.value})
    return moved


def open_endpoints(session: Session, project_id: str, model: str) -> list[Endpoint]:
    """A project's endpoints for `model` that are not stopped, newest first."""
    stmt = (
        select(Endpoint)
        .where(
            Endpoint.project_id == project_id,
            Endpoint.model == model,
            Endpoint.state != EndpointState.STOPPED.value,
        )
        .order_by(Endpoint.seq.desc())
    )
    return list(session.execute(stmt).scalars())


def deploy(
    session: Session,
    project_id: str,
    served: ServedModel,
    idle_timeout_s: int | None = None,
    now: int | None = None,
    replicas: int | None = None,
) -> Endpoint:
    """The endpoint for a model: the live one if there is one, a failed one retried, an idle one woken, else a
    new one. An idle timeout or replica count given replaces the endpoint's (the deployer starts or stops the
    difference). `now`: the caller's clock (a job's success stamps its endpoint with its own finish time, which
    the Vertex view relies on)."""
    existing = next(iter(open_endpoints(session, project_id, served.name)), None)
    if existing is not None:
        if idle_timeout_s is not None:
            existing.idle_timeout_s = idle_timeout_s
        if replicas is not None:
            existing.replicas = replicas
        if existing.state == EndpointState.FAILED.value:
            transition(session, existing, EndpointState.DEPLOYING, error=None, failed_attempts=0)
        elif existing.state == EndpointState.IDLE.value:
            wake(existing, "asked to deploy")
        return existing
    now = now or int(time.time())
    ep = Endpoint(
        id=new_id("ep-"),
        project_id=project_id,
        model=served.name,
        kind=served.kind,
        base_model=served.base_model,
        job_id=served.job_id,
        checkpoint_id=served.checkpoint_id,
        weights_prefix=served.weights_prefix,
        state=EndpointState.DEPLOYING.value,
        restarts=0,
        failed_attempts=0,
        idle_timeout_s=idle_timeout_s,
        replicas=replicas or 1,
        ready_replicas=0,
        created_at=now,
        updated_at=now,
    )
    session.add(ep)
    session.flush()
    return ep


WAKING = ErrorCode.WAKING  # the error code a woken endpoint deploys with (the gateway waits for those)


def wake(ep: Endpoint, why: str) -> bool:
    """An idle endpoint deploys again."""
    session = object_session(ep)
    assert session is not None  # a row loaded in a session
    return transition(
        session,
        ep,
        EndpointState.DEPLOYING,
        failed_attempts=0,
        error={"code": WAKING, "message": f"Waking from idle: {why}."},
    )


def create_endpoint(
    ctx: AppContext,
    principal: ProjectPrincipal,
    model: str,
    pending_usage,
    idle_timeout_s: int | None = None,
    replicas: int | None = None,
) -> dict:
    with ctx.db.write() as session:
        served = resolve_model(ctx, session, principal.project_id, model)
        check_servable(ctx, served, replicas or 1)
        ep = deploy(session, principal.project_id, served, idle_timeout_s, replicas=replicas)
        created = endpoint_api(ep, _usage(session, ep, pending_usage))
    ctx.hinter.wake(Loop.ENDPOINTS)
    return created


def _get(session: Session, principal: ProjectPrincipal, endpoint_id: str) -> Endpoint:
    ep = session.execute(
        select(Endpoint).where(Endpoint.id == endpoint_id, Endpoint.project_id == principal.project_id)
    ).scalar()
    if ep is None:
        raise NotFound(f"No such endpoint: {excerpt(endpoint_id)}", param="endpoint_id", code=ErrorCode.NOT_FOUND)
    return ep


def get_endpoint(ctx: AppContext, principal: ProjectPrincipal, endpoint_id: str, pending_usage) -> dict:
    with ctx.db.read() as session:
        ep = _get(session, principal, endpoint_id)
        return endpoint_api(ep, _usage(session, ep, pending_usage))


def list_endpoints(
    ctx: AppContext, principal: ProjectPrincipal, *, after: str | None, limit: int, model: str | None, pending_usage
) -> dict:
    with ctx.db.read() as session:
        stmt = select(Endpoint).where(Endpoint.project_id == principal.project_id)
        if model:
            stmt = stmt.where(Endpoint.model == model)
        rows, has_more = paginate(session, stmt, Endpoint, after=after, limit=limit)
        data = [endpoint_api(ep, _usage(session, ep, pending_usage)) for ep in rows]
        return list_envelope(data, has_more, with_ids=True)


def delete_endpoint(ctx: AppContext, principal: ProjectPrincipal, endpoint_id: str) -> dict:
    """Stops serving; the record stays, `stopped`, and the deployer frees the engine and the local copy."""
    with ctx.db.write() as session:
        ep = _get(session, principal, endpoint_id)
        transition(session, ep, EndpointState.STOPPED)
    ctx.hinter.routes_changed(principal.project_id)
    ctx.hinter.wake(Loop.ENDPOINTS)  # its engine and local copy go now
    return {"id": endpoint_id, "object": "endpoint.deleted", "deleted": True}


def stop_model_endpoints(
    session: Session, project_id: str, model: str, reason: str, code: ErrorCode = ErrorCode.MODEL_DELETED
) -> int:
    eps = open_endpoints(session, project_id, model)
    for ep in eps:
        transition(session, ep, EndpointState.STOPPED, error={"code": code, "message": reason})
    return len(eps)


def live_endpoints(session: Session) -> list[Endpoint]:
    return list(session.execute(select(Endpoint).where(Endpoint.state.in_([s.value for s in LIVE]))).scalars())
