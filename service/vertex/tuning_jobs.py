"""tuningJobs: Hone's fine-tuning jobs created, listed and cancelled through service.jobs, seen in Vertex's shape.

A Vertex request becomes the OpenAI-shaped job request Hone already checks (base model, files, servability),
with its datasets resolved to files first; errors name the Vertex field the problem came from. supervisedTuningSpec
is Hone's `supervised` method, preferenceOptimizationSpec `dpo`, and distillationSpec `distillation` (its prompts the
training file, its teacher the method's: service/vertex/sources.py)."""

from __future__ import annotations

import re

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import dataset_grants, files, job_creation, jobs
from service.context import AppContext
from service.db.tables import Job
from service.errors import ApiError, ErrorCode, InvalidRequest, NotFound, param_from_loc
from service.pagination import paginate
from service.schemas import CreateFineTuningJob
from service.vertex import evaluation as vertex_evaluation
from service.vertex import tuning_job_view
from service.vertex.dataset_uris import ResolvedDataset, resolve_dataset
from service.vertex.list_filter import filter_conditions
from service.vertex.resources import VertexScope, check_id
from service.vertex.schemas import CreateTuningJob
from service.vertex.sources import source_model, teacher_model
from service.vertex.tuning_job_view import DATASET_FIELDS, HYPERPARAMETERS, SPEC_FIELDS

_UNTRAINED_SPECS = (
    "reinforcement_tuning_spec",
    "partner_model_tuning_spec",
    "full_fine_tuning_spec",
    "veo_tuning_spec",
    "veo_lora_tuning_spec",
)
PAGE_SIZE, MAX_PAGE_SIZE = 20, 100


# --- creation -------------------------------------------------------------------------------------


def _tuning_spec(body: CreateTuningJob):
    for name in _UNTRAINED_SPECS:
        if getattr(body, name) is not None:
            field = CreateTuningJob.model_fields[name].alias
            raise InvalidRequest(
                f"{field} is not supported by Hone; use supervisedTuningSpec, preferenceOptimizationSpec or "
                "distillationSpec.",
                param=field,
                code=ErrorCode.UNSUPPORTED_TUNING_SPEC,
            )
    given = [
        (t, s)
        for t, s in (
            ("supervised", body.supervised_tuning_spec),
            ("dpo", body.preference_optimization_spec),
            ("distillation", body.distillation_spec),
        )
        if s is not None
    ]
    if len(given) != 1:
        raise InvalidRequest(
            "Give exactly one of supervisedTuningSpec, preferenceOptimizationSpec and distillationSpec.",
            param="supervisedTuningSpec",
            code=ErrorCode.INVALID_TUNING_SPEC,
        )
    return given[0]


def _vertex_param(param: str | None, spec_field: str, teacher_field: str | None = None) -> str | None:
    """Names a parameter of the OpenAI-shaped job request by the Vertex field it came from."""
    training, validation = DATASET_FIELDS[spec_field]
    top = {
        "model": "baseModel",
        "suffix": "tunedModelDisplayName",
        "metadata": "labels",
        "training_file": f"{spec_field}.{training}",
        "validation_file": f"{spec_field}.{validation}",
    }
    if teacher_field:
        top["method.distillation.teacher"] = f"{spec_field}.{teacher_field}"
    if param in top:
        return top[param]
    if (param or "").startswith("evaluation"):  # what Hone's evaluation refused of an evaluationConfig
        return f"{spec_field}.evaluationConfig"
    head, _, name = (param or "").rpartition("hyperparameters.")
    if name == "tuning_mode":  # the spec's tuningMode, not a hyperParameters field
        return f"{spec_field}.tuningMode"
    if head or name in HYPERPARAMETERS:
        return f"{spec_field}.hyperParameters.{HYPERPARAMETERS.get(name, name)}"
    return param


def _evaluation(ctx: AppContext, scope: VertexScope, spec, spec_field: str) -> tuple[dict | None, dict | None]:
    """An evaluationConfig as Hone's job `evaluation`, and what the Vertex view keeps of it (its output prefix
    checked against the project's grants first). A distillationSpec has none (it refuses one)."""
    config = getattr(spec, "evaluation_config", None)
    if config is None:
        return None, None
    prefix = config.output_config.gcs_destination.output_uri_prefix
    field = f"{spec_field}.evaluationConfig.outputConfig.gcsDestination.outputUriPrefix"
    dataset_grants.check_output_prefix(ctx, scope.principal.project_id, prefix, field)
    evaluation, vertex = vertex_evaluation.job_evaluation(config)
    return evaluation, {"vertex": vertex}


def _suffix(display_name: str | None) -> str | None:
    """The display name as the tuned model's OpenAI suffix (which allows fewer characters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", display_name or "").strip("-")[:64] or None


def _refuse_unhonoured(spec, spec_field: str) -> None:
    """400 for what a spec may ask that Hone does not do (never accepted and ignored)."""
    hp = spec.hyper_parameters
    if hp.learning_rate is not None:
        raise InvalidRequest(
            "learningRate is not supported: Hone scales its own learning rate by learningRateMultiplier.",
            param=f"{spec_field}.hyperParameters.learningRate",
            code=ErrorCode.UNSUPPORTED_HYPERPARAMETER,
        )
    sft_weight = getattr(hp, "sft_loss_weight_multiplier", None)
    if sft_weight is not None and sft_weight != 1:
        raise InvalidRequest(
            f"sftLossWeightMultiplier {sft_weight} is not supported: Hone trains the student on the teacher's "
            "answers with the SFT loss alone (a multiplier of 1).",
            param=f"{spec_field}.hyperParameters.sftLossWeightMultiplier",
            code=ErrorCode.UNSUPPORTED_HYPERPARAMETER,
        )
    if spec.export_last_checkpoint_only:
        # Hone keeps (and lists) every epoch's checkpoint; exporting only the last is not something it does.
        raise InvalidRequest(
            "exportLastCheckpointOnly: true is not supported by Hone: every checkpoint is kept and "
            "listed in tunedModel.checkpoints.",
            param=f"{spec_field}.exportLastCheckpointOnly",
            code=ErrorCode.UNSUPPORTED_PARAMETER,
        )


def create_tuning_job(ctx: AppContext, scope: VertexScope, body: CreateTuningJob) -> dict:
    method_type, spec = _tuning_spec(body)
    spec_field = SPEC_FIELDS[method_type]
    _refuse_unhonoured(spec, spec_field)
    hp = spec.hyper_parameters
    hyperparameters = {
        "n_epochs": hp.epoch_count,
        "learning_rate_multiplier": hp.learning_rate_multiplier,
        "batch_size": hp.batch_size,
        "lora_rank": hp.adapter_size,
        "beta": getattr(hp, "beta", None),
        "tuning_mode": spec.tuning_mode,
    }
    teacher_generation = getattr(hp, "generation_config", None)
    if teacher_generation is not None:  # distillation: how the teacher answers
        hyperparameters.update(
            temperature=teacher_generation.temperature,
            samples_per_prompt=teacher_generation.candidate_count,
            max_completion_tokens=teacher_generation.max_output_tokens,
        )
    section: dict = {"hyperparameters": {k: v for k, v in hyperparameters.items() if v is not None}}
    model, source = source_model(ctx, scope, body)
    teacher_field: str | None = None
    teacher_echo: dict[str, str] = {}
    if method_type == "distillation":  # the prompts' teacher (whether the project may call it: new_job checks)
        section["teacher"], teacher_field, teacher_echo = teacher_model(ctx, scope, spec)
    training_field, validation_field = DATASET_FIELDS[spec_field]
    training_uri = spec.prompt_dataset_uri if method_type == "distillation" else spec.training_dataset_uri
    datasets: list[ResolvedDataset] = []
    try:
        for uri, field in ((training_uri, training_field), (spec.validation_dataset_uri, validation_field)):
            if uri is not None:
                datasets.append(resolve_dataset(ctx, scope.principal, uri, f"{spec_field}.{field}"))
        evaluation, evaluation_extra = _evaluation(ctx, scope, spec, spec_field)
        config = getattr(spec, "evaluation_config", None)
        request = CreateFineTuningJob.model_validate(
            {
                **({"evaluation": evaluation} if evaluation is not None else {}),
                "model": model,
                "training_file": datasets[0].file_id,
                "validation_file": datasets[1].file_id if len(datasets) > 1 else None,
                "method": {"type": method_type, method_type: section},
                "suffix": _suffix(body.tuned_model_display_name),
                "metadata": body.labels,
            }
        )
        vertex_spec = {
            "tunedModelDisplayName": body.tuned_model_display_name,
            "description": body.description,
            training_field: training_uri,
            validation_field: spec.validation_dataset_uri,
            **teacher_echo,
            "exportLastCheckpointOnly": spec.export_last_checkpoint_only,
            "evaluationConfig": config.model_dump(by_alias=True, exclude_none=True) if config else None,
            **source,
        }
        job = job_creation.new_job(
            ctx,
            scope.principal,
            request,
            vertex_spec={k: v for k, v in vertex_spec.items() if v is not None},
            evaluation_extra=evaluation_extra,
        )
    except ValidationError as exc:
        _discard(ctx, scope, datasets)
        first = exc.errors()[0]
        param = _vertex_param(param_from_loc(tuple(first["loc"])), spec_field, teacher_field)
        raise InvalidRequest(
            f"Invalid value for '{param}': {first['msg']}.", param=param, code=ErrorCode.INVALID_VALUE
        ) from None
    except BaseException as exc:
        _discard(ctx, scope, datasets)  # a refused job leaves no imported files behind
        if isinstance(exc, ApiError):
            exc.param = _vertex_param(exc.param, spec_field, teacher_field)
            if exc.param == "baseModel" and "preTunedModel" in source:
                exc.param = "preTunedModel.tunedModelName"
        raise
    with ctx.db.read() as session:
        return tuning_job_view.views(session, scope, [job])[0]


def _discard(ctx: AppContext, scope: VertexScope, datasets: list[ResolvedDataset]) -> None:
    for dataset in datasets:
        if dataset.imported:
            files.delete_file(ctx, scope.principal, dataset.file_id)


# --- reads and cancel ----------------------------------------------------------------------------


def _job(session: Session, scope: VertexScope, job_id: str) -> Job:
    check_id(job_id, "TuningJob")
    job = session.execute(select(Job).where(Job.id == job_id, Job.project_id == scope.principal.project_id)).scalar()
    if job is None:
        raise scope.not_found("tuningJobs", job_id)
    return job


def get_tuning_job(ctx: AppContext, scope: VertexScope, job_id: str) -> dict:
    with ctx.db.read() as session:
        return tuning_job_view.views(session, scope, [_job(session, scope, job_id)])[0]


def list_tuning_jobs(
    ctx: AppContext, scope: VertexScope, *, page_size: int, page_token: str | None, filter_text: str | None
) -> dict:
    """Newest first. The page token is the id of the last job of the previous page."""
    size = PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
    stmt = select(Job).where(Job.project_id == scope.principal.project_id, *filter_conditions(filter_text))
    with ctx.db.read() as session:
        try:
            rows, more = paginate(session, stmt, Job, after=page_token or None, limit=size)
        except InvalidRequest:
            assert page_token is not None  # only a token can be invalid
            raise InvalidRequest(
                f"Invalid pageToken '{page_token[:100]}'.", param="pageToken", code=ErrorCode.INVALID_PAGE_TOKEN
            ) from None
        body: dict = {}  # proto3 JSON leaves empty fields out
        if rows:
            body["tuningJobs"] = tuning_job_view.views(session, scope, rows)
        if more:
            body["nextPageToken"] = rows[-1].id
        return body


def cancel_tuning_job(ctx: AppContext, scope: VertexScope, job_id: str) -> dict:
    """Cancellation is immediate: the job is CANCELLED (error.code 1) and its trainer is stopped."""
    check_id(job_id, "TuningJob")
    try:
        jobs.act_on_job(ctx, scope.principal, job_id, "cancel")
    except NotFound:
        raise scope.not_found("tuningJobs", job_id) from None
    except InvalidRequest as exc:  # FAILED_PRECONDITION: it has ended already
        exc.param = "name"
        raise
    return {}
