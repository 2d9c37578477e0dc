"""Creating a fine-tuning job: the method resolved and checked, its files checked, a continued model's shape
inherited, and the job, its metadata and first events inserted (or an idempotent replay answered)."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import Connection, Table, bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import (
    distillation,
    idempotency,
    job_evaluation,
    job_evaluation_rows,
    job_insert,
    job_resources,
    jobs,
    reinforcement,
    training_plan,
)
from service.auth import ProjectPrincipal
from service.base_models import BaseModel, BaseModelRegistry
from service.context import AppContext
from service.datasets import FORMAT_LABELS, DatasetFormat, methods_for, too_few_examples
from service.db.plain import PlainConnection
from service.db.tables import File, Job, JobEvent, JobMetadata
from service.errors import ErrorCode, InvalidRequest, NotFound
from service.hints import Loop
from service.ids import new_id
from service.job_states import JobStatus
from service.models import Parent, continuation_parent
from service.schemas import CreateFineTuningJob, DpoMethod, Method, SupervisedMethod
from service.serve_compat import check_fits_trainer, check_servable


def _resolve_method(body: CreateFineTuningJob) -> dict:
    if body.method is None:
        method = Method(
            type="supervised",
            supervised=SupervisedMethod(hyperparameters=body.hyperparameters or SupervisedMethod().hyperparameters),
        )
    else:
        method = body.method
        if method.type == "supervised" and method.supervised is None:
            method.supervised = SupervisedMethod()
        if method.type == "dpo" and method.dpo is None:
            method.dpo = DpoMethod()
        if method.type == "reinforcement":
            reinforcement.check_method(method.reinforcement)
        if method.type == "distillation":
            distillation.check_method(method.distillation)
        if body.hyperparameters is not None:
            given = body.hyperparameters.model_dump()
            section = getattr(method, method.type).hyperparameters.model_dump()
            legacy_set = {k: v for k, v in given.items() if v != "auto"}
            if any(section.get(k) != v for k, v in legacy_set.items()):
                raise InvalidRequest(
                    "'hyperparameters' conflicts with method."
                    f"{method.type}.hyperparameters; give them in 'method' only.",
                    param="hyperparameters",
                    code=ErrorCode.INVALID_VALUE,
                )
    return method.model_dump(exclude_none=True)


# What each method trains on, for the error that says a file is not it.
_NEEDS = {
    "dpo": "OpenAI preference data",
    "reinforcement": "OpenAI prompts (messages ending with the user's turn, plus the fields the grader reads)",
    "distillation": "prompts for its teacher to answer: OpenAI prompts (messages ending with the user's turn) or "
    "Vertex/Gemini prompts (contents ending with the user's turn)",
}

# What _check_file reads, as plain rows through a statement built once (see FixedPages for why).
_FILE_FOR_JOB = select(
    File.purpose,
    File.status,
    File.status_details,
    File.validation_errors,
    File.dataset_format,
    File.example_count,
    File.dataset_media,
).where(File.id == bindparam("file_id"), File.project_id == bindparam("project_id"))


def _check_file(
    conn: Connection,
    principal: ProjectPrincipal,
    file_id: str,
    param: str,
    method_type: str,
    min_examples: int,
    base: BaseModel | None,
    registry: BaseModelRegistry,
) -> None:
    code = f"invalid_{param}"
    row = conn.execute(_FILE_FOR_JOB, {"file_id": file_id, "project_id": principal.project_id}).first()
    if row is None:
        raise InvalidRequest(f"invalid {param}: {file_id} (no such file in this project)", param=param, code=code)
    if row.purpose != "fine-tune":
        raise InvalidRequest(
            f"invalid {param}: {file_id} has purpose '{row.purpose}', expected 'fine-tune'.", param=param, code=code
        )
    if row.status == "error":
        errors = row.validation_errors or {"errors": [], "total": 0}
        first = errors["errors"][0] if errors["errors"] else {}
        raise InvalidRequest(
            f"invalid {param}: {file_id} failed validation. {row.status_details}",
            param=param,
            code=code,
            extra={
                "file_id": file_id,
                "line": first.get("line"),
                "field": first.get("field"),
                "errors": errors["errors"],
                "total_errors": errors["total"],
            },
        )
    if row.status != "processed" or row.dataset_format is None:
        raise InvalidRequest(
            f"invalid {param}: {file_id} is not a processed fine-tune file ({row.status}).", param=param, code=code
        )
    fmt = DatasetFormat(row.dataset_format)
    if method_type not in methods_for(fmt):
        takes = " or ".join(f"'{m}'" for m in sorted(methods_for(fmt)))
        raise InvalidRequest(
            f"invalid {param}: {file_id} is in the {FORMAT_LABELS[fmt]} format, which the '{method_type}' method "
            f"cannot train on; it needs {_NEEDS.get(method_type, 'supervised data')} (this file is for the {takes} "
            "method).",
            param=param,
            code=code,
        )
    too_few = too_few_examples(row.example_count, min_examples)  # the rule `hone files validate` applies offline
    if too_few:
        raise InvalidRequest(too_few, param=param, code=ErrorCode.INVALID_N_EXAMPLES)
    if row.dataset_media:
        _check_images(row.dataset_media, file_id, param, method_type, base, registry)


def _check_vision_mode(ctx: AppContext, body: CreateFineTuningJob, method: dict) -> None:
    """A vision model trains with LoRA or full weights: Hone's QLoRA loads text models only (trainer/quantization.py)."""
    base = ctx.base_models.get(body.model)
    hp = (method.get(method["type"]) or {}).get("hyperparameters") or {}
    if base is not None and base.vision and hp.get("tuning_mode") == "qlora":
        raise InvalidRequest(
            f"Base model {base.name} reads images, and QLoRA quantizes text models only; use tuning_mode 'lora' or "
            "'full'.",
            param=f"method.{method['type']}.hyperparameters.tuning_mode",
            code=ErrorCode.INVALID_VALUE,
        )


def _check_images(
    media: dict, file_id: str, param: str, method_type: str, base: BaseModel | None, registry: BaseModelRegistry
) -> None:
    """A file with images trains a vision model, with the supervised method (the one that reads them)."""
    first = media["first_image"]
    where = f"line {first['line']}, field {first['field']}"
    if base is None or not base.vision:
        vision = ", ".join(m.name for m in registry.all() if m.vision)
        raise InvalidRequest(
            f"invalid {param}: {file_id} holds {media['images']} image(s) (the first at {where}), but base model "
            f"{base.name if base else '(unknown)'} reads text only; tune a vision model ({vision}) or remove "
            "the images.",
            param=param,
            code=ErrorCode.UNSUPPORTED_MEDIA,
            extra={"line": first["line"], "field": first["field"]},
        )
    if method_type not in ("supervised",):
        raise InvalidRequest(
            f"invalid {param}: {file_id} holds images (the first at {where}); the '{method_type}' method trains on "
            "text only, and images train with the 'supervised' method.",
            param=param,
            code=ErrorCode.UNSUPPORTED_MEDIA,
            extra={"line": first["line"], "field": first["field"]},
        )


def _resolve_base_model(
    ctx: AppContext, session: Session, principal: ProjectPrincipal, model: str
) -> tuple[str, Parent | None]:
    """(root base model, parent): a tuned model or checkpoint of the project is continued from its weights."""
    if ctx.base_models.get(model) is not None:
        return model, None
    try:
        parent = continuation_parent(ctx, session, principal.project_id, model)
    except NotFound:  # another project's model reads exactly like a missing one
        parent = None
    if parent is None:
        raise InvalidRequest(
            f"Model {model} is not available for fine-tuning or does not exist.",
            param="model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    return parent.base_model, parent


_SHAPE_FIELDS = ("tuning_mode", "lora_rank", "lora_alpha", "lora_target_modules")


def _inherit_shape(method: dict, parent: Parent, model: str) -> dict:
    """The method with the parent's tuning mode and adapter shape written in (so "auto" resolution sees them);
    a different value asked for is refused: the parent's weights are loaded as they are."""
    kind = method["type"]
    if kind == "dpo" and parent.shape["tuning_mode"] == "full":
        raise InvalidRequest(
            f"DPO trains a LoRA adapter, and {model} is fully tuned; continue it with "
            "'supervised', or run DPO on a LoRA-tuned model.",
            param="model",
            code=ErrorCode.INVALID_VALUE,
        )
    hp = dict((method.get(kind) or {}).get("hyperparameters") or {})
    for field in _SHAPE_FIELDS:
        inherited, asked = parent.shape.get(field), hp.get(field)
        if inherited is None:
            continue
        if field == "tuning_mode" and asked == "qlora":
            if inherited == "full":
                raise InvalidRequest(
                    f"tuning_mode 'qlora' trains an adapter over a 4-bit base, and {model} is fully tuned: its "
                    "weights are not an adapter. Continue it with tuning_mode 'full' (or leave tuning_mode out).",
                    param=f"method.{kind}.hyperparameters.tuning_mode",
                    code=ErrorCode.INVALID_VALUE,
                )
            continue  # an adapter (LoRA- or QLoRA-trained: the same shape) trains on over the 4-bit base as it is
        same = set(asked) == set(inherited) if field == "lora_target_modules" and asked else asked == inherited
        if asked not in (None, "auto") and not same:
            raise InvalidRequest(
                f"{field} {asked!r} differs from {inherited!r} of {model}, which this job continues: "
                "an adapter cannot change shape. Leave it out to keep the parent's.",
                param=f"method.{kind}.hyperparameters.{field}",
                code=ErrorCode.INVALID_VALUE,
            )
        hp[field] = inherited
    return {**method, kind: {**(method.get(kind) or {}), "hyperparameters": hp}}


def create_job(
    ctx: AppContext, principal: ProjectPrincipal, body: CreateFineTuningJob, idempotency_key: str | None = None
) -> dict:
    return jobs.job_api(new_job(ctx, principal, body, idempotency_key), ctx.settings.server.organization_id)


def new_job(
    ctx: AppContext,
    principal: ProjectPrincipal,
    body: CreateFineTuningJob,
    idempotency_key: str | None = None,
    vertex_spec: dict | None = None,
    evaluation_extra: dict | None = None,
) -> Job:
    """The new job's row; `vertex_spec` keeps what a Vertex request said beyond OpenAI's fields, and
    `evaluation_extra` what its evaluationConfig asks of the evaluation beyond Hone's own (service/vertex)."""
    method = check_request(ctx, principal, body)
    request_sha = idempotency.fingerprint(body) if idempotency_key else ""
    try:
        job = _insert_job(ctx, principal, body, method, idempotency_key, request_sha, vertex_spec, evaluation_extra)
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent request with the same key won the insert (PostgreSQL); answer with its job.
        job = _insert_job(ctx, principal, body, method, idempotency_key, request_sha, vertex_spec, evaluation_extra)
    ctx.hinter.wake(Loop.VALIDATION)  # its files are checked now, not at the next poll
    return job


def check_request(ctx: AppContext, principal: ProjectPrincipal, body: CreateFineTuningJob) -> dict:
    """The checks a create makes before its write transaction (a preflight makes them too); returns the method as
    asked, "auto" left in."""
    method = _resolve_method(body)
    _check_vision_mode(ctx, body, method)
    check_servable(method, ctx.settings.serving.max_lora_rank)
    check_fits_trainer(ctx, body.model, method)
    training_plan.check_tuning_options(
        method, "hyperparameters" if body.method is None else f"method.{method['type']}.hyperparameters"
    )
    if body.resources is not None:
        job_resources.check(ctx.settings, body.resources.resolved(), method["type"], body.resources.gpus is not None)
    if method["type"] in ("reinforcement", "distillation"):  # the models they call, the project's to call
        with ctx.db.read() as session:
            if method["type"] == "reinforcement":
                reinforcement.check_grader_models(ctx, session, principal.project_id, method)
            else:
                distillation.check_teacher(ctx, session, principal.project_id, method)
    job_evaluation_rows.check_item_fields(ctx, principal, body, method)  # reads storage: before the transaction
    return method


JOBS: Table = Job.__table__  # type: ignore[assignment]  # the Core table (mapped classes type it loosely)

# Built once, executed with each job's values (keyed by column name): a statement built per request was walked
# for its cache key each time (a fifth of a create's CPU).
_INSERT_JOB = insert(JOBS).returning(JOBS.c.seq)
# One row each, every column a parameter: run by SQLAlchemy or straight by the driver (service/db/plain.py).
_INSERT_METADATA = insert(JobMetadata).values({name: bindparam(name) for name in ("job_seq", "key", "value")})
_INSERT_EVENT = insert(JobEvent).values(
    {name: bindparam(name) for name in ("id", "job_id", "created_at", "level", "message", "type", "data")}
)


def _insert_job(
    ctx: AppContext,
    principal: ProjectPrincipal,
    body: CreateFineTuningJob,
    method: dict,
    idempotency_key: str | None,
    request_sha: str,
    vertex_spec: dict | None,
    evaluation_extra: dict | None = None,
) -> Job:
    if not idempotency_key and body.evaluation is None and ctx.base_models.get(body.model) is not None:
        # A base model and no replay to look up: no ORM session (its set-up was ~15% of a create on SQLite).
        values = _job_values(principal, body, method, vertex_spec, base_model=body.model, parent=None)
        events = _first_events(values, parent=None)
        minimum = ctx.settings.files.min_training_examples
        base = ctx.base_models.get(body.model)
        images = base is not None and base.vision and method["type"] == "supervised"  # what _check_images allows
        if ctx.db.is_sqlite:
            with ctx.db.write_connection() as conn:
                # Straight through sqlite3, inside the transaction: SQLAlchemy's execution of each statement cost
                # more than SQLite's.
                plain = ctx.db.plain(conn)
                seq = job_insert.insert_job_row(plain, _columns(values), method["type"], minimum, images)
                if seq is None:  # refused: the checks say why (or, should a file pass them, insert it now)
                    _check_files(ctx, conn, principal, body, method, body.model)
                    seq = conn.execute(_INSERT_JOB, _columns(values)).scalar_one()
                return _insert_children(plain, seq, values, events)
        # PostgreSQL: one statement (service/job_insert.py). When it refuses, the transaction below says why.
        with ctx.db.plain_statements() as plain:  # autocommit: the statement is its own transaction
            seq = job_insert.insert_job(plain, _columns(values), method["type"], minimum, events, images)
        if seq is not None:
            return Job(seq=seq, **values)
    with ctx.db.write() as session:
        if idempotency_key:
            earlier = idempotency.replayed_object(session, principal.project_id, idempotency_key, request_sha)
            if earlier is not None:
                return jobs.job_row(session, principal, earlier)
        base_model, parent, method = check_in_project(ctx, session, principal, body, method)
        values = _job_values(principal, body, method, vertex_spec, base_model=base_model, parent=parent)
        values["evaluation"] = job_evaluation.plan(ctx, session, principal, body, method, base_model, values["seed"])
        if values["evaluation"] is not None and evaluation_extra:
            values["evaluation"] |= evaluation_extra
        values["evaluation_open"] = values["evaluation"] is not None
        conn = session.connection()
        job = _insert_children(
            conn, conn.execute(_INSERT_JOB, _columns(values)).scalar_one(), values, _first_events(values, parent)
        )
        if idempotency_key:
            idempotency.remember(session, principal.project_id, idempotency_key, request_sha, values["id"])
    return job


def check_in_project(
    ctx: AppContext, session: Session, principal: ProjectPrincipal, body: CreateFineTuningJob, method: dict
) -> tuple[str, Parent | None, dict]:
    """The checks a create makes in its transaction (a preflight in a read): the model to tune (a continued one's
    shape written into the method) and the files. Returns (root base model, parent, method)."""
    base_model, parent = _resolve_base_model(ctx, session, principal, body.model)
    if parent is not None:
        method = _inherit_shape(method, parent, body.model)
    _check_files(ctx, session.connection(), principal, body, method, base_model)
    return base_model, parent, method


def _check_files(
    ctx: AppContext,
    conn: Connection,
    principal: ProjectPrincipal,
    body: CreateFineTuningJob,
    method: dict,
    base_model: str,
) -> None:
    minimum = ctx.settings.files.min_training_examples
    base, registry = ctx.base_models.get(base_model), ctx.base_models
    _check_file(conn, principal, body.training_file, "training_file", method["type"], minimum, base, registry)
    if body.validation_file is not None:
        _check_file(conn, principal, body.validation_file, "validation_file", method["type"], 1, base, registry)


def _insert_children(conn: Connection | PlainConnection, seq: int, values: dict, events: list[tuple[str, str]]) -> Job:
    """Inserts the metadata and first events of the job inserted as `seq`; returns the job as a detached object
    holding the values written. Statements, not the ORM's unit of work: its flush of the job and its events was a
    third of a create's CPU."""
    for key, value in (values["metadata_"] or {}).items():
        conn.execute(_INSERT_METADATA, {"job_seq": seq, "key": key, "value": value})
    for event_id, message in events:
        event = {"id": event_id, "job_id": values["id"], "created_at": values["created_at"], "message": message}
        conn.execute(_INSERT_EVENT, {**event, "level": "info", "type": "message", "data": None})
    return Job(seq=seq, **values)


def _job_values(
    principal: ProjectPrincipal,
    body: CreateFineTuningJob,
    method: dict,
    vertex_spec: dict | None,
    *,
    base_model: str,
    parent: Parent | None,
) -> dict:
    """The new job's attributes (the mapped class's names: `metadata_`)."""
    return dict(
        id=new_id("ftjob-"),
        project_id=principal.project_id,
        model=body.model,
        base_model=base_model,
        status=JobStatus.VALIDATING_FILES.value,
        created_at=int(time.time()),
        training_file=body.training_file,
        validation_file=body.validation_file,
        method=method,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2147483648),
        metadata_=body.metadata,
        result_files=[],
        priority=body.priority,
        auto_deploy=body.auto_deploy,
        attempts=0,
        failures=0,
        integrations=[i.model_dump(exclude_none=True) for i in body.integrations or []],
        vertex_spec=vertex_spec,
        parent_model=parent.name if parent else None,
        parent_prefix=parent.prefix if parent else None,
        evaluation=None,
        evaluation_open=False,
        resources=body.resources.resolved() if body.resources else None,
    )


def _columns(values: dict) -> dict:
    """The attributes keyed by column name."""
    return {("metadata" if key == "metadata_" else key): value for key, value in values.items()}


def _first_events(values: dict, parent: Parent | None) -> list[tuple[str, str]]:
    """(id, message) of the events a new job starts with."""
    messages = [f"Created fine-tuning job: {values['id']}"]
    if parent is not None:
        messages.append(f"Continuing from {parent.name}: training starts from its weights")
    validating = f"Validating training file: {values['training_file']}"
    if values["validation_file"]:
        validating += f" and validation file: {values['validation_file']}"
    messages.append(validating)
    return [(new_id("ftevent-"), message) for message in messages]
