"""Fine-tuning jobs: creation checks, listing, user actions and state transitions with events."""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import Table, bindparam, exists, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import idempotency, metrics
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.datasets import FORMAT_LABELS, DatasetFormat, methods_for, too_few_examples
from service.db.database import after_commit
from service.db.tables import Checkpoint, File, Job, JobEvent, JobMetadata, Project
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt
from service.hints import Loop
from service.ids import new_id
from service.job_states import JobStatus, check_transition, entry_fields
from service.models import Parent, continuation_parent
from service.pagination import FixedPages, list_envelope, paginate
from service.schemas import CreateFineTuningJob, DpoMethod, Method, SupervisedMethod
from service.serve_compat import check_servable


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


# What job_api reads: lists and retrieves select just these as plain rows. Loading whole ORM objects (every
# column, identity map, instance state) was a fifth of a list's server CPU (py-spy, 32 clients, 10k jobs).
JOB_API_COLUMNS = (Job.id, Job.created_at, Job.error, Job.finished_at, Job.fine_tuned_model, Job.method, Job.model,
                   Job.result_files, Job.status, Job.trained_tokens, Job.training_file, Job.validation_file,
                   Job.seed, Job.estimated_finish, Job.integrations, Job.metadata_.label("metadata_"), Job.suffix,
                   Job.priority, Job.auto_deploy)


# Built once: see FixedPages for why.
_JOBS_OF_PROJECT = FixedPages(select(*JOB_API_COLUMNS).where(Job.project_id == bindparam("project_id")), Job)
_JOB_OF_PROJECT = select(*JOB_API_COLUMNS).where(Job.id == bindparam("job_id"),
                                                 Job.project_id == bindparam("project_id"))


def job_api(job: Any, organization_id: str) -> dict:
    """The API shape of a Job, or of a row of JOB_API_COLUMNS."""
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": job.created_at,
        "error": job.error if isinstance(job.error, dict) else None,
        "finished_at": job.finished_at, "fine_tuned_model": job.fine_tuned_model,
        "hyperparameters": _hyperparameters(job.method), "model": job.model, "organization_id": organization_id,
        "result_files": _list(job.result_files), "status": job.status, "trained_tokens": job.trained_tokens,
        "training_file": job.training_file, "validation_file": job.validation_file, "seed": job.seed,
        "estimated_finish": job.estimated_finish, "method": _dict(job.method), "integrations": _list(job.integrations),
        "metadata": job.metadata_ if isinstance(job.metadata_, dict) else None, "user_provided_suffix": job.suffix,
        "priority": job.priority, "auto_deploy": job.auto_deploy,
    }


def event_api(event: JobEvent) -> dict:
    return {"id": event.id, "object": "fine_tuning.job.event", "created_at": event.created_at,
            "level": event.level, "message": event.message, "type": event.type, "data": _dict(event.data)}


def checkpoint_api(ckpt: Checkpoint) -> dict:
    return {"id": ckpt.id, "object": "fine_tuning.job.checkpoint", "created_at": ckpt.created_at,
            "fine_tuned_model_checkpoint": ckpt.fine_tuned_model_checkpoint, "fine_tuning_job_id": ckpt.job_id,
            "step_number": ckpt.step_number, "metrics": _dict(ckpt.metrics)}


# --- events and transitions ---------------------------------------------------------

def add_event(session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
    session.add(JobEvent(id=new_id("ftevent-"), job_id=job_id, created_at=int(time.time()), level=level,
                         message=message, type=type, data=data))


def transition(session: Session, job: Job, target: JobStatus, message: str, *, level: str = "info",
               **fields: Any) -> None:
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
    result = session.execute(update(Job).where(Job.id == job.id, Job.status == current.value)
                             .values(status=target.value, **fields))
    if result.rowcount != 1:  # type: ignore[attr-defined]  # typed Result; an UPDATE's is a CursorResult
        session.refresh(job)
        check_transition(job.id, JobStatus(job.status), target)  # raises with the status it has now
        raise InvalidRequest(f"Job {job.id} changed while this request ran; retry.", code=ErrorCode.CONCURRENT_UPDATE)
    session.refresh(job)
    add_event(session, job.id, message, level=level)
    waited = now - queued_at if target is JobStatus.RUNNING and queued_at else None
    lasted = now - (job.started_at or job.created_at) if target.terminal else None
    after_commit(session, lambda: metrics.transitioned(current, target, waited=waited, lasted=lasted))


def transition_many(session: Session, job_ids: list[str], current: JobStatus, target: JobStatus,
                    message: str) -> None:
    """`transition` for a batch of jobs all in `current` (the validation loop queues every new job): one UPDATE
    compare-and-set on `current` with the target's entry fields, one multi-row INSERT of their events."""
    if not job_ids:
        return
    check_transition(job_ids[0], current, target)
    now = int(time.time())
    fields = entry_fields(target, now=now, started_at=now)
    result = session.execute(update(Job).where(Job.id.in_(job_ids), Job.status == current.value)
                             .values(status=target.value, **fields).execution_options(synchronize_session=False))
    if result.rowcount != len(job_ids):  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        raise InvalidRequest("Jobs changed while they moved; retry.", code=ErrorCode.CONCURRENT_UPDATE)
    session.execute(insert(JobEvent), [
        {"id": new_id("ftevent-"), "job_id": job_id, "created_at": now, "level": "info", "message": message,
         "type": "message", "data": None} for job_id in job_ids])
    count = len(job_ids)

    def count_them() -> None:
        for _ in range(count):
            metrics.transitioned(current, target, waited=None, lasted=None)

    after_commit(session, count_them)


# --- creation ---------------------------------------------------------------------

def _resolve_method(body: CreateFineTuningJob) -> dict:
    if body.method is None:
        method = Method(type="supervised", supervised=SupervisedMethod(
            hyperparameters=body.hyperparameters or SupervisedMethod().hyperparameters))
    else:
        method = body.method
        if method.type == "reinforcement":
            raise InvalidRequest("Reinforcement fine-tuning is not supported by Hone; use 'supervised' or 'dpo'.",
                                 param="method.type", code=ErrorCode.UNSUPPORTED_METHOD)
        for other in ("supervised", "dpo"):
            if other != method.type and getattr(method, other) is not None:
                raise InvalidRequest(f"method.type is '{method.type}' but a '{other}' section was given.",
                                     param=f"method.{other}", code=ErrorCode.INVALID_VALUE)
        if method.type == "supervised" and method.supervised is None:
            method.supervised = SupervisedMethod()
        if method.type == "dpo" and method.dpo is None:
            method.dpo = DpoMethod()
        if body.hyperparameters is not None:
            given = body.hyperparameters.model_dump()
            section = getattr(method, method.type).hyperparameters.model_dump()
            legacy_set = {k: v for k, v in given.items() if v != "auto"}
            if any(section.get(k) != v for k, v in legacy_set.items()):
                raise InvalidRequest("'hyperparameters' conflicts with method."
                                     f"{method.type}.hyperparameters; give them in 'method' only.",
                                     param="hyperparameters", code=ErrorCode.INVALID_VALUE)
    return method.model_dump(exclude_none=True)


# What _check_file reads, as plain rows through a statement built once (see FixedPages for why).
_FILE_FOR_JOB = select(File.purpose, File.status, File.status_details, File.validation_errors, File.dataset_format,
                       File.example_count).where(File.id == bindparam("file_id"),
                                                 File.project_id == bindparam("project_id"))


def _check_file(session: Session, principal: ProjectPrincipal, file_id: str, param: str, method_type: str,
                min_examples: int) -> None:
    code = f"invalid_{param}"
    row = session.connection().execute(_FILE_FOR_JOB, {"file_id": file_id, "project_id": principal.project_id}).first()
    if row is None:
        raise InvalidRequest(f"invalid {param}: {file_id} (no such file in this project)", param=param, code=code)
    if row.purpose != "fine-tune":
        raise InvalidRequest(f"invalid {param}: {file_id} has purpose '{row.purpose}', expected 'fine-tune'.",
                             param=param, code=code)
    if row.status == "error":
        errors = row.validation_errors or {"errors": [], "total": 0}
        first = errors["errors"][0] if errors["errors"] else {}
        raise InvalidRequest(f"invalid {param}: {file_id} failed validation. {row.status_details}", param=param,
                             code=code, extra={"file_id": file_id, "line": first.get("line"),
                                               "field": first.get("field"), "errors": errors["errors"],
                                               "total_errors": errors["total"]})
    if row.status != "processed" or row.dataset_format is None:
        raise InvalidRequest(f"invalid {param}: {file_id} is not a processed fine-tune file ({row.status}).",
                             param=param, code=code)
    fmt = DatasetFormat(row.dataset_format)
    if method_type not in methods_for(fmt):
        raise InvalidRequest(
            f"invalid {param}: {file_id} is in the {FORMAT_LABELS[fmt]} format, which the '{method_type}' method "
            f"cannot train on; it needs {'OpenAI preference' if method_type == 'dpo' else 'a supervised'} data.",
            param=param, code=code)
    too_few = too_few_examples(row.example_count, min_examples)  # the rule `hone files validate` applies offline
    if too_few:
        raise InvalidRequest(too_few, param=param, code=ErrorCode.INVALID_N_EXAMPLES)


def _resolve_base_model(ctx: AppContext, session: Session, principal: ProjectPrincipal,
                        model: str) -> tuple[str, Parent | None]:
    """(root base model, parent): a tuned model or checkpoint of the project is continued from its weights."""
    if ctx.base_models.get(model) is not None:
        return model, None
    try:
        parent = continuation_parent(ctx, session, principal.project_id, model)
    except NotFound:  # another project's model reads exactly like a missing one
        parent = None
    if parent is None:
        raise InvalidRequest(f"Model {model} is not available for fine-tuning or does not exist.",
                             param="model", code=ErrorCode.MODEL_NOT_AVAILABLE)
    return parent.base_model, parent


_SHAPE_FIELDS = ("tuning_mode", "lora_rank", "lora_alpha", "lora_target_modules")


def _inherit_shape(method: dict, parent: Parent, model: str) -> dict:
    """The method with the parent's tuning mode and adapter shape written in (so "auto" resolution sees them);
    a different value asked for is refused: the parent's weights are loaded as they are."""
    kind = method["type"]
    if kind == "dpo" and parent.shape["tuning_mode"] == "full":
        raise InvalidRequest(f"DPO trains a LoRA adapter, and {model} is fully tuned; continue it with "
                             "'supervised', or run DPO on a LoRA-tuned model.", param="model",
                             code=ErrorCode.INVALID_VALUE)
    hp = dict((method.get(kind) or {}).get("hyperparameters") or {})
    for field in _SHAPE_FIELDS:
        inherited, asked = parent.shape.get(field), hp.get(field)
        if inherited is None:
            continue
        same = set(asked) == set(inherited) if field == "lora_target_modules" and asked else asked == inherited
        if asked not in (None, "auto") and not same:
            raise InvalidRequest(f"{field} {asked!r} differs from {inherited!r} of {model}, which this job continues: "
                                 "an adapter cannot change shape. Leave it out to keep the parent's.",
                                 param=f"method.{kind}.hyperparameters.{field}", code=ErrorCode.INVALID_VALUE)
        hp[field] = inherited
    return {**method, kind: {**(method.get(kind) or {}), "hyperparameters": hp}}


def create_job(ctx: AppContext, principal: ProjectPrincipal, body: CreateFineTuningJob,
               idempotency_key: str | None = None) -> dict:
    return job_api(new_job(ctx, principal, body, idempotency_key), ctx.settings.server.organization_id)


def new_job(ctx: AppContext, principal: ProjectPrincipal, body: CreateFineTuningJob,
            idempotency_key: str | None = None, vertex_spec: dict | None = None) -> Job:
    """The new job's row; `vertex_spec` keeps what a Vertex request said beyond OpenAI's fields."""
    method = _resolve_method(body)
    check_servable(method, ctx.settings.serving.max_lora_rank)
    request_sha = idempotency.fingerprint(body) if idempotency_key else ""
    try:
        job = _insert_job(ctx, principal, body, method, idempotency_key, request_sha, vertex_spec)
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent request with the same key won the insert (PostgreSQL); answer with its job.
        job = _insert_job(ctx, principal, body, method, idempotency_key, request_sha, vertex_spec)
    ctx.hinter.wake(Loop.VALIDATION)  # its files are checked now, not at the next poll
    return job


JOBS: Table = Job.__table__  # type: ignore[assignment]  # the Core table (mapped classes type it loosely)

# Built once, executed with each job's values (keyed by column name): a statement built per request was walked
# for its cache key each time (a fifth of a create's CPU).
_INSERT_JOB = insert(JOBS).returning(JOBS.c.seq)


def _insert_job(ctx: AppContext, principal: ProjectPrincipal, body: CreateFineTuningJob, method: dict,
                idempotency_key: str | None, request_sha: str, vertex_spec: dict | None) -> Job:
    now = int(time.time())
    with ctx.db.write() as session:
        if idempotency_key:
            earlier = idempotency.replayed_object(session, principal.project_id, idempotency_key, request_sha)
            if earlier is not None:
                return _get_job(session, principal, earlier)
        base_model, parent = _resolve_base_model(ctx, session, principal, body.model)
        if parent is not None:
            method = _inherit_shape(method, parent, body.model)
        _check_file(session, principal, body.training_file, "training_file", method["type"],
                    ctx.settings.files.min_training_examples)
        if body.validation_file is not None:
            _check_file(session, principal, body.validation_file, "validation_file", method["type"], 1)
        values = dict(id=new_id("ftjob-"), project_id=principal.project_id, model=body.model, base_model=base_model,
                      status=JobStatus.VALIDATING_FILES.value, created_at=now, training_file=body.training_file,
                      validation_file=body.validation_file, method=method, suffix=body.suffix,
                      seed=body.seed if body.seed is not None else secrets.randbelow(2147483648),
                      metadata_=body.metadata, result_files=[], priority=body.priority,
                      auto_deploy=body.auto_deploy, attempts=0, failures=0,
                      integrations=[i.model_dump(exclude_none=True) for i in body.integrations or []],
                      vertex_spec=vertex_spec, parent_model=parent.name if parent else None,
                      parent_prefix=parent.prefix if parent else None)
        # Statements, not the ORM's unit of work: its flush of the job and its events was a third of a create's
        # CPU. The job handed back is a detached object holding the values written.
        conn = session.connection()
        columns = {("metadata" if key == "metadata_" else key): value for key, value in values.items()}
        seq = conn.execute(_INSERT_JOB, columns).scalar_one()
        job = Job(seq=seq, **values)
        if body.metadata:
            conn.execute(insert(JobMetadata), [{"job_seq": seq, "key": key, "value": value}
                                               for key, value in body.metadata.items()])
        messages = [f"Created fine-tuning job: {job.id}"]
        if parent is not None:
            messages.append(f"Continuing from {parent.name}: training starts from its weights")
        validating = f"Validating training file: {job.training_file}"
        if job.validation_file:
            validating += f" and validation file: {job.validation_file}"
        messages.append(validating)
        conn.execute(insert(JobEvent), [{"id": new_id("ftevent-"), "job_id": job.id, "created_at": now,
                                         "level": "info", "message": message, "type": "message", "data": None}
                                        for message in messages])
        if idempotency_key:
            idempotency.remember(session, principal.project_id, idempotency_key, request_sha, job.id)
    return job


# --- reads ------------------------------------------------------------------------

def _get_job(session: Session, principal: ProjectPrincipal, job_id: str, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.project_id == principal.project_id)
    # Row lock on PostgreSQL so a concurrent transition waits; SQLite writers are already serialized.
    job = session.execute(stmt.with_for_update() if for_update else stmt).scalar()
    if job is None:
        raise NotFound(f"No such fine-tuning job: {excerpt(job_id)}", param="fine_tuning_job_id", code=ErrorCode.NOT_FOUND)
    return job


def get_job(ctx: AppContext, principal: ProjectPrincipal, job_id: str) -> dict:
    with ctx.db.read_statement() as conn:
        row = conn.execute(_JOB_OF_PROJECT, {"job_id": job_id, "project_id": principal.project_id}).first()
    if row is None:
        raise NotFound(f"No such fine-tuning job: {excerpt(job_id)}", param="fine_tuning_job_id",
                       code=ErrorCode.NOT_FOUND)
    return job_api(row, ctx.settings.server.organization_id)


def list_jobs(ctx: AppContext, principal: ProjectPrincipal, *, after: str | None, limit: int,
              metadata: dict[str, str] | None, without_metadata: bool = False) -> dict:
    with ctx.db.read_statement() as conn:
        if not metadata and not without_metadata:
            rows, has_more = _JOBS_OF_PROJECT.page(conn, {"project_id": principal.project_id}, after=after,
                                                   limit=limit)
        else:
            stmt = select(*JOB_API_COLUMNS).where(Job.project_id == principal.project_id)
            for key, value in (metadata or {}).items():
                stmt = stmt.where(exists().where(JobMetadata.job_seq == Job.seq, JobMetadata.key == key,
                                                 JobMetadata.value == value))
            if without_metadata:
                stmt = stmt.where(~exists().where(JobMetadata.job_seq == Job.seq))
            rows, has_more = paginate(conn, stmt, Job, after=after, limit=limit, as_rows=True)
    return list_envelope([job_api(j, ctx.settings.server.organization_id) for j in rows], has_more)


def list_events(ctx: AppContext, principal: ProjectPrincipal, job_id: str, *, after: str | None, limit: int) -> dict:
    with ctx.db.read() as session:
        _get_job(session, principal, job_id)
        stmt = select(JobEvent).where(JobEvent.job_id == job_id)
        rows, has_more = paginate(session, stmt, JobEvent, after=after, limit=limit)
        return list_envelope([event_api(e) for e in rows], has_more)


def list_checkpoints(ctx: AppContext, principal: ProjectPrincipal, job_id: str, *, after: str | None,
                     limit: int) -> dict:
    with ctx.db.read() as session:
        _get_job(session, principal, job_id)
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
        job = _get_job(session, principal, job_id, for_update=True)
        if action == "resume" and job.status != JobStatus.PAUSED.value:
            # running -> queued exists for retries; users resume paused jobs only
            raise InvalidRequest(f"Cannot resume job {job.id}: its status is '{job.status}'.",
                                 param="fine_tuning_job_id", code=ErrorCode.INVALID_JOB_STATUS)
        transition(session, job, target, message)
    ctx.hinter.wake(Loop.SCHEDULER)  # stops or starts the trainer now, not at the next poll
    return job_api(job, ctx.settings.server.organization_id)
