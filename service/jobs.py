"""Fine-tuning jobs: API shapes, reads, user actions and state transitions with events (creation is in
service/job_creation.py)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from service import metrics, webhooks
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.database import after_commit
from service.db.tables import Checkpoint, Job, JobEvent, JobMetadata, Project
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt
from service.hints import Loop
from service.ids import new_id
from service.job_states import JobStatus, check_transition, entry_fields
from service.pagination import FixedPages, list_envelope, paginate


def fine_tuned_model_name(base_model: str, project_slug: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base_model}:{project_slug}:{suffix or ''}:{job_id}"


def tuned_model_name(session: Session, job: Job) -> str:
    """The name the job's model gets (and its checkpoints build on), from the job and its project."""
    slug = session.execute(select(Project.slug).where(Project.id == job.project_id)).scalar_one()
    return fine_tuned_model_name(job.base_model, slug, job.suffix, job.id)


# --- API shapes -------------------------------------------------------------------

# Reads never depend on a row being well-formed (one written by an older version, or by hand): a JSON column of
# an unexpected shape is shown as its empty value rather than failing the retrieve, the list and the cancel.
# Non-finite floats are rendered as null by the response class (service/api/routing.py).


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return list(value) if isinstance(value, list) else []


def _hyperparameters(method: Any) -> dict:
    method = _dict(method)
    section = _dict(method.get(method.get("type")) if isinstance(method.get("type"), str) else None)
    hp = _dict(section.get("hyperparameters"))
    return {k: hp.get(k, "auto") for k in ("batch_size", "learning_rate_multiplier", "n_epochs")}


# Jobs in line for a trainer: queued ones, and validating ones (which join the queue in creation order).
IN_LINE = (JobStatus.QUEUED.value, JobStatus.VALIDATING_FILES.value)


def _queue_position() -> Any:
    """Hone: a queued job's place in the cluster's queue (1: the next the scheduler claims, which takes higher
    priorities first, FIFO within one); null for a job not queued. A column of a select of jobs."""
    other = aliased(Job)
    ahead = (
        select(func.count())
        .select_from(other)
        .where(
            or_(*(other.status == status for status in IN_LINE)),  # no IN: plain statements bind no expanding lists
            or_(other.priority > Job.priority, and_(other.priority == Job.priority, other.seq < Job.seq)),
        )
        .correlate(Job)
        .scalar_subquery()
    )
    return case((Job.status == JobStatus.QUEUED.value, ahead + 1), else_=None).label("queue_position")


# What job_api reads: lists and retrieves select just these as plain rows. Loading whole ORM objects (every
# column, identity map, instance state) was a fifth of a list's server CPU (py-spy, 32 clients, 10k jobs).
JOB_API_COLUMNS = (
    Job.id,
    Job.created_at,
    Job.error,
    Job.finished_at,
    Job.fine_tuned_model,
    Job.method,
    Job.model,
    Job.result_files,
    Job.status,
    Job.trained_tokens,
    Job.training_file,
    Job.validation_file,
    Job.seed,
    Job.estimated_finish,
    Job.integrations,
    Job.metadata_.label("metadata_"),
    Job.suffix,
    Job.priority,
    Job.auto_deploy,
    Job.evaluation,
    Job.resources,
    _queue_position(),
)


# Built once: see FixedPages for why.
_STATUS_VALUES = tuple(s.value for s in JobStatus)
_JOBS_OF_PROJECT = FixedPages(select(*JOB_API_COLUMNS).where(Job.project_id == bindparam("project_id")), Job)
_JOB_OF_PROJECT = select(*JOB_API_COLUMNS).where(
    Job.id == bindparam("job_id"), Job.project_id == bindparam("project_id")
)


def job_api(job: Any, organization_id: str) -> dict:
    """The API shape of a Job, or of a row of JOB_API_COLUMNS."""
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": job.created_at,
        "error": job.error if isinstance(job.error, dict) else None,
        "finished_at": job.finished_at,
        "fine_tuned_model": job.fine_tuned_model,
        "hyperparameters": _hyperparameters(job.method),
        "model": job.model,
        "organization_id": organization_id,
        "result_files": _list(job.result_files),
        "status": job.status,
        "trained_tokens": job.trained_tokens,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "seed": job.seed,
        "estimated_finish": job.estimated_finish,
        "method": _dict(job.method),
        "integrations": _list(job.integrations),
        "metadata": job.metadata_ if isinstance(job.metadata_, dict) else None,
        "user_provided_suffix": job.suffix,
        "priority": job.priority,
        "auto_deploy": job.auto_deploy,
        "evaluation": evaluation_api(job.evaluation),
        "resources": job.resources if isinstance(job.resources, dict) else {"nodes": 1, "gpus_per_node": 1},
        "queue_position": getattr(job, "queue_position", None),  # a Job object (created, acted on) has none
    }


def evaluation_api(stored: Any) -> dict | None:
    """Hone: the job's evaluation against its base, as service/job_evaluation.py keeps it (the held-out example
    numbers and endpoint ids stay inside)."""
    if not isinstance(stored, dict):
        return None
    return {k: v for k, v in stored.items() if k not in ("holdout", "endpoints", "deployed_for_evaluation")}


def event_api(event: JobEvent) -> dict:
    return {
        "id": event.id,
        "object": "fine_tuning.job.event",
        "created_at": event.created_at,
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": _dict(event.data),
    }


def checkpoint_api(ckpt: Checkpoint) -> dict:
    return {
        "id": ckpt.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": ckpt.created_at,
        "fine_tuned_model_checkpoint": ckpt.fine_tuned_model_checkpoint,
        "fine_tuning_job_id": ckpt.job_id,
        "step_number": ckpt.step_number,
        "metrics": _dict(ckpt.metrics),
    }


# --- events and transitions ---------------------------------------------------------


def add_event(
    session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None
) -> None:
    session.add(
        JobEvent(
            id=new_id("ftevent-"),
            job_id=job_id,
            created_at=int(time.time()),
            level=level,
            message=message,
            type=type,
            data=data,
        )
    )


def transition(
    session: Session, job: Job, target: JobStatus, message: str, *, level: str = "info", **fields: Any
) -> None:
    """The one way a job's status moves: checks the table (service/job_states.py), writes the target state's entry
    fields (ENTRY_FIELDS there) with the caller's, compare-and-sets on the status it read (a concurrent move wins,
    and this one raises), and records the event and the metrics."""
    current = JobStatus(job.status)
    check_transition(job.id, current, target)
    now = time.time()
    fields = {**entry_fields(target, now=int(now), started_at=job.started_at), **fields}
    if target is JobStatus.FAILED and not fields.get("error"):
        raise ValueError(f"job {job.id} cannot fail without an error")  # a bug, never a request's fault
    queued_at = job.queued_at
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.status == current.value).values(status=target.value, **fields)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # typed Result; an UPDATE's is a CursorResult
        session.refresh(job)
        check_transition(job.id, JobStatus(job.status), target)  # raises with the status it has now
        raise InvalidRequest(f"Job {job.id} changed while this request ran; retry.", code=ErrorCode.CONCURRENT_UPDATE)
    session.refresh(job)
    add_event(session, job.id, message, level=level)
    if target.terminal:  # the webhook event commits with the status it reports (the outbox: service/webhooks.py)
        webhooks.enqueue(session, job.project_id, webhooks.JOB_EVENTS[target.value], job.id, int(now))
    waited = now - queued_at if target is JobStatus.RUNNING and queued_at else None
    lasted = now - (job.started_at or job.created_at) if target.terminal else None
    reason = (fields.get("error") or {}).get("code") if target is JobStatus.FAILED else None
    project_id = job.project_id
    after_commit(
        session,
        lambda: metrics.transitioned(
            current, target, waited=waited, lasted=lasted, reason=reason, project_id=project_id
        ),
    )


def transition_many(session: Session, job_ids: list[str], current: JobStatus, target: JobStatus, message: str) -> None:
    """`transition` for a batch of jobs all in `current` (the validation loop queues every new job): one UPDATE
    compare-and-set on `current` with the target's entry fields, one multi-row INSERT of their events."""
    if not job_ids:
        return
    check_transition(job_ids[0], current, target)
    now = int(time.time())
    fields = entry_fields(target, now=now, started_at=now)
    result = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == current.value)
        .values(status=target.value, **fields)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != len(job_ids):  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        raise InvalidRequest("Jobs changed while they moved; retry.", code=ErrorCode.CONCURRENT_UPDATE)
    session.execute(
        insert(JobEvent),
        [
            {
                "id": new_id("ftevent-"),
                "job_id": job_id,
                "created_at": now,
                "level": "info",
                "message": message,
                "type": "message",
                "data": None,
            }
            for job_id in job_ids
        ],
    )
    if target.terminal:
        projects = dict(session.execute(select(Job.id, Job.project_id).where(Job.id.in_(job_ids))).all())
        for job_id in job_ids:
            webhooks.enqueue(session, projects[job_id], webhooks.JOB_EVENTS[target.value], job_id, now)
    count = len(job_ids)

    def count_them() -> None:
        for _ in range(count):
            metrics.transitioned(current, target, waited=None, lasted=None)

    after_commit(session, count_them)


# --- reads ------------------------------------------------------------------------


def job_row(session: Session, principal: ProjectPrincipal, job_id: str, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.project_id == principal.project_id)
    # Row lock on PostgreSQL so a concurrent transition waits; SQLite writers are already serialized.
    job = session.execute(stmt.with_for_update() if for_update else stmt).scalar()
    if job is None:
        raise NotFound(
            f"No such fine-tuning job: {excerpt(job_id)}", param="fine_tuning_job_id", code=ErrorCode.NOT_FOUND
        )
    return job


def get_job(ctx: AppContext, principal: ProjectPrincipal, job_id: str) -> dict:
    with ctx.db.plain_statements() as conn:
        row = conn.execute(_JOB_OF_PROJECT, {"job_id": job_id, "project_id": principal.project_id}).first()
    if row is None:
        raise NotFound(
            f"No such fine-tuning job: {excerpt(job_id)}", param="fine_tuning_job_id", code=ErrorCode.NOT_FOUND
        )
    return job_api(row, ctx.settings.server.organization_id)


def list_jobs(
    ctx: AppContext,
    principal: ProjectPrincipal,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
    without_metadata: bool = False,
    statuses: list[str] | None = None,
    model: str | None = None,
) -> dict:
    """A page of the project's jobs, newest first; `metadata` pairs, `statuses` and `model` narrow it (in the
    query, so a page is full and `has_more` true to the filter)."""
    for value in statuses or ():
        if value not in _STATUS_VALUES:
            raise InvalidRequest(
                f"Unknown status {excerpt(value, 64)!r}: a job's status is one of {', '.join(_STATUS_VALUES)}.",
                param="status",
                code=ErrorCode.INVALID_VALUE,
            )
    if not metadata and not without_metadata and not statuses and model is None:
        with ctx.db.plain_statements() as plain:
            rows, has_more = _JOBS_OF_PROJECT.page(
                plain, {"project_id": principal.project_id}, after=after, limit=limit
            )
    else:
        with ctx.db.read_statement() as conn:
            stmt = select(*JOB_API_COLUMNS).where(Job.project_id == principal.project_id)
            for key, value in (metadata or {}).items():
                stmt = stmt.where(
                    exists().where(JobMetadata.job_seq == Job.seq, JobMetadata.key == key, JobMetadata.value == value)
                )
            if without_metadata:
                stmt = stmt.where(~exists().where(JobMetadata.job_seq == Job.seq))
            if statuses:
                stmt = stmt.where(Job.status.in_(statuses))
            if model is not None:
                stmt = stmt.where(Job.model == model)
            rows, has_more = paginate(conn, stmt, Job, after=after, limit=limit, as_rows=True)
    return list_envelope([job_api(j, ctx.settings.server.organization_id) for j in rows], has_more)


def list_events(ctx: AppContext, principal: ProjectPrincipal, job_id: str, *, after: str | None, limit: int) -> dict:
    with ctx.db.read() as session:
        job_row(session, principal, job_id)
        stmt = select(JobEvent).where(JobEvent.job_id == job_id)
        rows, has_more = paginate(session, stmt, JobEvent, after=after, limit=limit)
        return list_envelope([event_api(e) for e in rows], has_more)


def list_checkpoints(
    ctx: AppContext, principal: ProjectPrincipal, job_id: str, *, after: str | None, limit: int
) -> dict:
    with ctx.db.read() as session:
        job_row(session, principal, job_id)
        stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
        rows, has_more = paginate(session, stmt, Checkpoint, after=after, limit=limit)
        return list_envelope([checkpoint_api(c) for c in rows], has_more, with_ids=True)


# --- user actions -------------------------------------------------------------------

_ACTIONS = {
    "cancel": (JobStatus.CANCELLED, "Fine-tuning job cancelled"),
    "pause": (JobStatus.PAUSED, "Fine-tuning job paused"),
    "resume": (JobStatus.QUEUED, "Fine-tuning job resumed, moving job to queued state"),
}


def act_on_job(ctx: AppContext, principal: ProjectPrincipal, job_id: str, action: str) -> dict:
    target, message = _ACTIONS[action]
    with ctx.db.write() as session:
        job = job_row(session, principal, job_id, for_update=True)
        if action == "resume" and job.status != JobStatus.PAUSED.value:
            # running -> queued exists for retries; users resume paused jobs only
            raise InvalidRequest(
                f"Cannot resume job {job.id}: its status is '{job.status}'.",
                param="fine_tuning_job_id",
                code=ErrorCode.INVALID_JOB_STATUS,
            )
        transition(session, job, target, message)
    ctx.hinter.wake(Loop.SCHEDULER)  # stops or starts the trainer now, not at the next poll
    return job_api(job, ctx.settings.server.organization_id)
