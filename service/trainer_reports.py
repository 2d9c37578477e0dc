"""What trainers report through the internal API: events, checkpoints, progress, and how the run ended.

Each call carries the job's current trainer token (new per attempt). Reports are idempotent: events
keep the ids the trainer gave them and checkpoints are keyed by step, so a resent batch changes nothing."""

from __future__ import annotations

import hmac
import math
import time

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from hone_kernel import trainer_contract as contract
from service import distillation, endpoints, metrics
from service.auth import bearer_token, hash_key
from service.context import AppContext
from service.db.database import after_commit
from service.db.tables import Checkpoint, File, Job, JobEvent, TunedModel
from service.errors import ApiError, AuthenticationFailed, ErrorCode, InvalidRequest, NotFound, excerpt
from service.hints import Loop
from service.ids import new_id
from service.job_states import JobStatus
from service.jobs import add_event, transition, tuned_model_name

# A job's offline W&B run, packed by its trainer (trainer/wandb_log.py) beside result.csv: a second result file
WANDB_ARCHIVE = "wandb-offline-run.tar.gz"
ACCEPTS_REPORTS = {JobStatus.RUNNING.value, JobStatus.PAUSED.value}
# Progress fields kept as the running job's live figures (exported as hone_job_* gauges).
LIVE_FIGURES = frozenset(
    {"step", "total_steps", "train_loss", "valid_loss", "tokens_per_second", "step_seconds", "step_at", "mfu"}
)


def _finite_number(value) -> bool:
    # JSON from a trainer may hold NaN (Python's json reads it); PostgreSQL's json refuses it, and no figure needs it.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def heartbeat_s(ctx: AppContext) -> float:
    """How often a trainer should report while it works (its reply to every report says so): a sixth of the
    stall timeout, so a few lost beats never get a healthy trainer killed."""
    timeout = ctx.settings.training.trainer_stall_timeout_s
    return min(30.0, max(1.0, timeout / 6)) if timeout > 0 else 30.0


class JobNotRunning(ApiError):
    status_code = 409
    error_type = "invalid_request_error"


# The bodies of the trainer contract's messages (hone_kernel/trainer_contract.py), validated: the same fields,
# the contract's limits (tests/test_trainer_contract.py holds the two to each other).
class ReportedEvent(BaseModel):
    id: str = Field(pattern=contract.EVENT_ID_PATTERN)
    created_at: int
    level: str = Field(pattern="^(info|warn|error)$")
    message: str = Field(max_length=contract.MAX_MESSAGE_CHARS)
    type: str = Field(pattern="^(message|metrics)$")
    data: dict | None = None


class ReportedCheckpoint(BaseModel):
    step: int = Field(ge=1)
    metrics: dict
    storage_prefix: str


class Report(BaseModel):
    events: list[ReportedEvent] = Field(default_factory=list, max_length=contract.MAX_EVENTS_PER_REPORT)
    checkpoints: list[ReportedCheckpoint] = Field(default_factory=list)
    progress: dict = Field(default_factory=dict)


class Completion(BaseModel):
    trained_tokens: int = Field(ge=0)
    adapter_prefix: str
    result_key: str
    metrics: dict = Field(default_factory=dict)


class Failure(BaseModel):
    code: str = Field(max_length=contract.MAX_FAILURE_CODE_CHARS)
    message: str = Field(max_length=contract.MAX_MESSAGE_CHARS)


def _job_for_trainer(session: Session, job_id: str, authorization: str | None) -> Job:
    token = bearer_token(authorization)
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar()
    if job is None:
        raise NotFound(f"No such fine-tuning job: {excerpt(job_id)}")
    if not job.trainer_token_hash or not hmac.compare_digest(job.trainer_token_hash, hash_key(token)):
        raise AuthenticationFailed(
            "This trainer token is not valid for this job (a newer attempt may own it).",
            code=ErrorCode.INVALID_TRAINER_TOKEN,
        )
    return job


class ModelChat(BaseModel):
    model: str = Field(min_length=1)
    messages: list[dict] = Field(min_length=1)
    params: dict = Field(default_factory=dict)


def running_job_project(ctx: AppContext, job_id: str, authorization: str | None) -> str:
    """The project a running trainer acts for (MODEL_CHAT): its token checked, nothing locked."""
    token = bearer_token(authorization)
    with ctx.db.read() as session:
        row = session.execute(
            select(Job.trainer_token_hash, Job.project_id, Job.status).where(Job.id == job_id)
        ).first()
    if row is None:
        raise NotFound(f"No such fine-tuning job: {excerpt(job_id)}")
    if not row.trainer_token_hash or not hmac.compare_digest(row.trainer_token_hash, hash_key(token)):
        raise AuthenticationFailed(
            "This trainer token is not valid for this job (a newer attempt may own it).",
            code=ErrorCode.INVALID_TRAINER_TOKEN,
        )
    if row.status != JobStatus.RUNNING.value:
        raise JobNotRunning(f"Fine-tuning job {job_id} is {row.status}, not running.", code=ErrorCode.JOB_NOT_RUNNING)
    return row.project_id


def _check_own_keys(job: Job, *keys: str) -> None:
    """A trainer writes under its own job's folder only; anything else would point at another job's data."""
    for key in keys:
        if not key.startswith(f"jobs/{job.id}/") or ".." in key.split("/"):
            raise InvalidRequest(
                f"Storage key '{excerpt(key)}' is outside jobs/{job.id}/.", code=ErrorCode.INVALID_STORAGE_KEY
            )


def record_report(ctx: AppContext, job_id: str, authorization: str | None, report: Report) -> dict:
    with ctx.db.write() as session:
        job = _job_for_trainer(session, job_id, authorization)
        if job.status not in ACCEPTS_REPORTS:
            return {"status": job.status, "heartbeat_s": heartbeat_s(ctx)}
        _check_own_keys(job, *(c.storage_prefix for c in report.checkpoints))
        incoming = [e.id for e in report.events]
        seen = (
            set(session.execute(select(JobEvent.id).where(JobEvent.id.in_(incoming))).scalars()) if incoming else set()
        )
        for event in report.events:
            if event.id not in seen:
                seen.add(event.id)
                session.add(JobEvent(job_id=job.id, **event.model_dump()))
        if report.checkpoints:
            _record_checkpoints(session, job, report.checkpoints)
        progress = report.progress
        if isinstance(progress.get("trained_tokens"), int):
            job.trained_tokens = progress["trained_tokens"]
            _count_tokens(session, job, progress["trained_tokens"])
        figures = {k: v for k, v in progress.items() if k in LIVE_FIGURES and _finite_number(v)}
        if figures:
            job.live_metrics = {**(job.live_metrics or {}), **figures}
        if isinstance(progress.get("estimated_finish"), int) and job.status == JobStatus.RUNNING.value:
            job.estimated_finish = progress["estimated_finish"]
        job.last_report_at = int(time.time())  # an empty report is a heartbeat: the scheduler's stall check reads it
        return {"status": job.status, "heartbeat_s": heartbeat_s(ctx)}


def _count_tokens(session: Session, job: Job, trained_tokens: int) -> None:
    """Adds the tokens trained since the last report to hone_trained_tokens. A trainer resumed from a
    checkpoint reports fewer tokens than before; counting from the high-water mark counts none twice."""
    figures = dict(job.live_metrics or {})
    counted = figures.get("counted_tokens", 0)
    if trained_tokens > counted:
        figures["counted_tokens"] = trained_tokens
        job.live_metrics = figures
        base_model = metrics.model_name_label(job.base_model)
        after_commit(session, lambda: metrics.TRAINED_TOKENS.labels(base_model).inc(trained_tokens - counted))


def _record_checkpoints(session: Session, job: Job, checkpoints: list[ReportedCheckpoint]) -> None:
    have = set(session.execute(select(Checkpoint.step_number).where(Checkpoint.job_id == job.id)).scalars())
    name = tuned_model_name(session, job)
    for ckpt in checkpoints:
        if ckpt.step in have:
            continue
        have.add(ckpt.step)
        snapshot = f"{name}:ckpt-step-{ckpt.step}"
        metrics = {k: v for k, v in ckpt.metrics.items() if _finite_number(v)}
        session.add(
            Checkpoint(
                id=new_id("ftckpt_"),
                job_id=job.id,
                created_at=int(time.time()),
                step_number=ckpt.step,
                fine_tuned_model_checkpoint=snapshot,
                metrics=metrics,
                storage_prefix=ckpt.storage_prefix,
            )
        )
        add_event(session, job.id, f"Checkpoint created at step {ckpt.step} with Snapshot ID: {snapshot}")


def complete(ctx: AppContext, job_id: str, authorization: str | None, body: Completion) -> dict:
    reply = _complete(ctx, job_id, authorization, body)
    ctx.hinter.wake(Loop.ENDPOINTS)  # the new model's endpoint deploys now, not at the next poll
    ctx.hinter.wake(Loop.EVALS)  # and its evaluation, if it asked for one, starts
    return reply


def _complete(ctx: AppContext, job_id: str, authorization: str | None, body: Completion) -> dict:
    with ctx.db.write() as session:
        job = _job_for_trainer(session, job_id, authorization)
        if job.status == JobStatus.SUCCEEDED.value:
            return {"status": job.status}  # a retried call whose first reply was lost
        if job.status != JobStatus.RUNNING.value:
            raise JobNotRunning(
                f"Job {job.id} is {job.status}; its result is discarded.", code=ErrorCode.JOB_NOT_RUNNING
            )
        _check_own_keys(job, body.adapter_prefix, body.result_key)
        _count_tokens(session, job, body.trained_tokens)
        now = int(time.time())
        name = tuned_model_name(session, job)
        result = File(
            id=new_id("file-"),
            project_id=job.project_id,
            filename="step_metrics.csv",
            purpose="fine-tune-results",
            bytes=ctx.storage.size(body.result_key),
            created_at=now,
            status="processed",
            storage_key=body.result_key,
        )
        session.add(result)
        results = [result.id]
        # Beside result.csv, what the trainer published for the user: an offline wandb run, a teacher's answers.
        published = [(WANDB_ARCHIVE, bool(job.integrations))]
        published.append((distillation.ANSWERS_FILE, job.method.get("type") == "distillation"))
        for filename, wanted in published:
            key = f"jobs/{job.id}/{filename}"
            if wanted and ctx.storage.exists(key):
                extra = File(
                    id=new_id("file-"),
                    project_id=job.project_id,
                    filename=filename,
                    purpose="fine-tune-results",
                    bytes=ctx.storage.size(key),
                    created_at=now,
                    status="processed",
                    storage_key=key,
                )
                session.add(extra)
                results.append(extra.id)
        session.add(
            TunedModel(
                id=name,
                project_id=job.project_id,
                job_id=job.id,
                base_model=job.base_model,
                created_at=now,
                storage_prefix=body.adapter_prefix,
            )
        )
        add_event(session, job.id, f"New fine-tuned model created: {name}")
        if job.auto_deploy and ctx.settings.serving.auto_deploy:
            session.flush()
            ep = endpoints.deploy(
                session, job.project_id, endpoints.resolve_model(ctx, session, job.project_id, name), now=now
            )  # the same second as finished_at, whatever the clock did meanwhile
            add_event(session, job.id, f"Deploying endpoint {ep.id} for {name}", data={"endpoint_id": ep.id})
        transition(
            session,
            job,
            JobStatus.SUCCEEDED,
            "The job has successfully completed",
            fine_tuned_model=name,
            trained_tokens=body.trained_tokens,
            result_files=results,
            finished_at=now,
            executor_ref=job.executor_ref,
        )
        return {"status": job.status, "fine_tuned_model": name}


def fail(ctx: AppContext, job_id: str, authorization: str | None, body: Failure) -> dict:
    with ctx.db.write() as session:
        job = _job_for_trainer(session, job_id, authorization)
        if job.status != JobStatus.RUNNING.value:
            return {"status": job.status}
        error = {"code": body.code, "message": body.message, "param": None}
        transition(session, job, JobStatus.FAILED, body.message, level="error", error=error)
        return {"status": job.status}
