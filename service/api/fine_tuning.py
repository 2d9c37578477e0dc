"""OpenAI fine-tuning jobs API."""

import logging
import re

from fastapi import APIRouter, Depends, Query, Request, Response

from service import api_models as m
from service import idempotency, job_creation, jobs, preflight
from service import job_logs as job_logs_domain
from service.api.contract import PROJECT, limit_query, openai_errors
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute, database_read, query_pattern
from service.api_models_preflight import FineTuningJobPreflight
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.job_states import JobStatus
from service.pagination import check_limit
from service.schemas import CreateFineTuningJob

router = APIRouter(
    route_class=JSONRoute, prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=openai_errors(*PROJECT)
)

log = logging.getLogger("hone.api")

_METADATA_KEY = re.compile(r"^metadata\[(.+)\]$")


@router.post("", response_model=m.FineTuningJob)
def create_job(
    body: CreateFineTuningJob,
    request: Request,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    key = idempotency.check_key(request.headers.get("idempotency-key"))
    job = job_creation.create_job(ctx, principal, body, idempotency_key=key)
    log.info("fine-tuning job created", extra={"job_id": job["id"], "model": job["model"], "status": job["status"]})
    return job


@router.post("/preflight", response_model=FineTuningJobPreflight)
def preflight_job(
    body: CreateFineTuningJob,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    """Hone: what this job would be (resolved hyperparameters, tokens, truncated examples, memory fit, a time
    estimate, its place in the queue), without creating it; a body a create would refuse gets the same 400."""
    return preflight.preflight(ctx, principal, body)


@router.get("", response_model=m.FineTuningJobList)
@database_read
@query_pattern(r"metadata(\[.+\])?|status\[\]", "metadata[key], status[]")
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = limit_query(20, 100),
    status: list[str] = Query(
        [],
        description="Hone: only jobs in these statuses (repeat the parameter for several).",
        json_schema_extra={"items": {"enum": [s.value for s in JobStatus]}},
    ),
    model: str | None = Query(None, description="Hone: only jobs whose `model` (the base or tuned model) is this."),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    # `metadata[key]=value` pairs, as the openai SDK sends them; `metadata=null` means "without metadata".
    metadata = {m.group(1): v for k, v in request.query_params.multi_items() if (m := _METADATA_KEY.match(k))}
    return jobs.list_jobs(
        ctx,
        principal,
        after=after,
        limit=check_limit(limit, 100),
        metadata=metadata,
        without_metadata=request.query_params.get("metadata") == "null",
        statuses=status + request.query_params.getlist("status[]"),  # status[]: the openai SDK's way with lists
        model=model,
    )


@router.get("/{job_id}", response_model=m.FineTuningJob)
@database_read
def retrieve_job(
    job_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return jobs.get_job(ctx, principal, job_id)


@router.post("/{job_id}/cancel", response_model=m.FineTuningJob)
def cancel_job(
    job_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    job = jobs.act_on_job(ctx, principal, job_id, "cancel")
    log.info("fine-tuning job cancelled", extra={"status": job["status"]})
    return job


@router.post("/{job_id}/pause", response_model=m.FineTuningJob)
def pause_job(
    job_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    job = jobs.act_on_job(ctx, principal, job_id, "pause")
    log.info("fine-tuning job paused", extra={"status": job["status"]})
    return job


@router.post("/{job_id}/resume", response_model=m.FineTuningJob)
def resume_job(
    job_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    job = jobs.act_on_job(ctx, principal, job_id, "resume")
    log.info("fine-tuning job resumed", extra={"status": job["status"]})
    return job


@router.get("/{job_id}/events", response_model=m.JobEventList)
@database_read
def list_events(
    job_id: str,
    after: str | None = None,
    limit: int = limit_query(20, 1000),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return jobs.list_events(ctx, principal, job_id, after=after, limit=check_limit(limit, 1000))


@router.get("/{job_id}/checkpoints", response_model=m.JobCheckpointList)
@database_read
def list_checkpoints(
    job_id: str,
    after: str | None = None,
    limit: int = limit_query(10, 100),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return jobs.list_checkpoints(ctx, principal, job_id, after=after, limit=check_limit(limit, 100))


_LOG_DOC: dict[int | str, dict[str, object]] = {
    200: {
        "description": "Hone: what the trainer printed in the attempt (the latest unless `attempt` is given); "
        "`X-Hone-Attempt` says which. While it runs, its log so far, copied every HONE_LIVE_LOG_INTERVAL_S "
        "(`X-Hone-Log-Complete: false`); once the attempt has ended, the whole log (`true`).",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


@router.get("/{job_id}/logs", response_class=Response, responses=_LOG_DOC)
def job_logs(
    job_id: str,
    attempt: int | None = Query(None, ge=1, description="Which trainer attempt (1, 2, ...); default the latest."),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    kept = job_logs_domain.trainer_log(ctx, principal, job_id, attempt)
    headers = {"x-hone-attempt": str(kept.attempt), "x-hone-log-complete": "true" if kept.complete else "false"}
    return Response(kept.text, media_type="text/plain; charset=utf-8", headers=headers)
