"""tuningJobs: Hone's fine-tuning jobs created, listed and cancelled through service.jobs, seen in Vertex's shape.

A Vertex request becomes the OpenAI-shaped job request Hone already checks (base model, files, servability),
with its datasets resolved to files first; errors name the Vertex field the problem came from."""

from __future__ import annotations

import re

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import dataset_grants, files, job_creation, jobs
from service.context import AppContext
from service.db.tables import Checkpoint, Job
from service.errors import ApiError, ErrorCode, InvalidRequest, NotFound, param_from_loc
from service.pagination import paginate
from service.schemas import CreateFineTuningJob
from service.vertex import evaluation as vertex_evaluation
from service.vertex import tuning_job_view
from service.vertex.dataset_uris import ResolvedDataset, resolve_dataset
from service.vertex.list_filter import filter_conditions
from service.vertex.resources import VertexScope, check_id
from service.vertex.schemas import CreateTuningJob
from service.vertex.tuning_job_view import HYPERPARAMETERS, SPEC_FIELDS

_UNTRAINED_SPECS = (
    "distillation_spec",
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
                f"{field} is not supported by Hone; use supervisedTuningSpec or preferenceOptimizationSpec.",
                param=field,
                code=ErrorCode.UNSUPPORTED_TUNING_SPEC,
            )
    given = [
        (t, s)
        for t, s in (("supervised", body.supervised_tuning_spec), ("dpo", body.preference_optimization_spec))
        if s is not None
    ]
    if len(given) != 1:
        raise InvalidRequest(
            "Give exactly one of supervisedTuningSpec and preferenceOptimizationSpec.",
            param="supervisedTuningSpec",
            code=ErrorCode.INVALID_TUNING_SPEC,
        )
    return given[0]


# A tuned model as this view names it (tunedModel.model): projects/{p}/locations/{l}/models/{job id}@1
_TUNED_MODEL = re.compile(r"^projects/([^/]+)/locations/[^/]+/models/([^/@]+)(?:@([^/]+))?$")


def _source_model(ctx: AppContext, scope: VertexScope, body: CreateTuningJob) -> tuple[str, dict]:
    """The model the job request names, and what to echo of the source: a base model, or a tuned model (or one of
    its checkpoints) that the job continues from (continuous tuning), by preTunedModel or a tuned model's name."""
    pre = body.pre_tuned_model
    if pre is not None:
        if body.base_model:
            raise InvalidRequest(
                "baseModel and preTunedModel are one of a kind: give only one.",
                param="preTunedModel",
                code=ErrorCode.INVALID_VALUE,
            )
        name = pre.get("tunedModelName") or pre.get("tuned_model_name")
        checkpoint = pre.get("checkpointId") or pre.get("checkpoint_id")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(
                "preTunedModel.tunedModelName is required.",
                param="preTunedModel.tunedModelName",
                code=ErrorCode.MISSING_REQUIRED_PARAMETER,
            )
        if checkpoint is not None and not isinstance(checkpoint, str):
            raise InvalidRequest(
                "preTunedModel.checkpointId must be a string.",
                param="preTunedModel.checkpointId",
                code=ErrorCode.INVALID_VALUE,
            )
        model = _tuned_source(ctx, scope, name, checkpoint, "preTunedModel.tunedModelName")
        given = {"tunedModelName": name, **({"checkpointId": checkpoint} if checkpoint else {})}
        return model, {"preTunedModel": given}
    if not body.base_model:
        raise InvalidRequest("baseModel is required.", param="baseModel", code=ErrorCode.MISSING_REQUIRED_PARAMETER)
    if _TUNED_MODEL.match(body.base_model):
        return _tuned_source(ctx, scope, body.base_model, None, "baseModel"), {"baseModel": body.base_model}
    return body.base_model, {}


def _tuned_source(ctx: AppContext, scope: VertexScope, name: str, checkpoint: str | None, field: str) -> str:
    """The Hone model name (ft:..., or a checkpoint's id) of a tuned model's Vertex name and checkpoint id."""
    match = _TUNED_MODEL.match(name)
    principal = scope.principal
    missing = InvalidRequest(
        f"Tuned model '{name}' does not exist or cannot be tuned further.",
        param=field,
        code=ErrorCode.MODEL_NOT_AVAILABLE,
    )
    if not match or match[1] not in (principal.project_id, principal.project_slug) or match[3] not in (None, "1"):
        raise missing
    with ctx.db.read() as session:
        job = session.execute(select(Job).where(Job.id == match[2], Job.project_id == principal.project_id)).scalar()
        if job is None:
            raise missing
        if checkpoint is not None:
            found = session.execute(
                select(Checkpoint.id).where(Checkpoint.job_id == job.id, Checkpoint.id == checkpoint)
            ).scalar()
            if found is None:
                raise InvalidRequest(
                    f"Tuned model '{name}' has no checkpoint '{checkpoint}'.",
                    param="preTunedModel.checkpointId",
                    code=ErrorCode.MODEL_NOT_AVAILABLE,
                )
            return found
    if not job.fine_tuned_model:
        raise InvalidRequest(
            f"Tuned model '{name}' is not ready: its tuning job is {job.status}; continue one of "
            "its checkpoints with preTunedModel.checkpointId, or wait.",
            param=field,
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    return job.fine_tuned_model


def _vertex_param(param: str | None, spec_field: str) -> str | None:
    """Names a parameter of the OpenAI-shaped job request by the Vertex field it came from."""
    top = {
        "model": "baseModel",
        "suffix": "tunedModelDisplayName",
        "metadata": "labels",
        "training_file": f"{spec_field}.trainingDatasetUri",
        "validation_file": f"{spec_field}.validationDatasetUri",
    }
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
    checked against the project's grants first)."""
    config = spec.evaluation_config
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


def create_tuning_job(ctx: AppContext, scope: VertexScope, body: CreateTuningJob) -> dict:
    method_type, spec = _tuning_spec(body)
    spec_field = SPEC_FIELDS[method_type]
    hp = spec.hyper_parameters
    if hp.learning_rate is not None:
        raise InvalidRequest(
            "learningRate is not supported: Hone scales its own learning rate by learningRateMultiplier.",
            param=f"{spec_field}.hyperParameters.learningRate",
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
    hyperparameters = {
        "n_epochs": hp.epoch_count,
        "learning_rate_multiplier": hp.learning_rate_multiplier,
        "batch_size": hp.batch_size,
        "lora_rank": hp.adapter_size,
        "beta": getattr(hp, "beta", None),
        "tuning_mode": spec.tuning_mode,
    }
    model, source = _source_model(ctx, scope, body)
    datasets: list[ResolvedDataset] = []
    try:
        for uri, field in (
            (spec.training_dataset_uri, "trainingDatasetUri"),
            (spec.validation_dataset_uri, "validationDatasetUri"),
        ):
            if uri is not None:
                datasets.append(resolve_dataset(ctx, scope.principal, uri, f"{spec_field}.{field}"))
        evaluation, evaluation_extra = _evaluation(ctx, scope, spec, spec_field)
        request = CreateFineTuningJob.model_validate(
            {
                **({"evaluation": evaluation} if evaluation is not None else {}),
                "model": model,
                "training_file": datasets[0].file_id,
                "validation_file": datasets[1].file_id if len(datasets) > 1 else None,
                "method": {
                    "type": method_type,
                    method_type: {"hyperparameters": {k: v for k, v in hyperparameters.items() if v is not None}},
                },
                "suffix": _suffix(body.tuned_model_display_name),
                "metadata": body.labels,
            }
        )
        vertex_spec = {
            "tunedModelDisplayName": body.tuned_model_display_name,
            "description": body.description,
            "trainingDatasetUri": spec.training_dataset_uri,
            "validationDatasetUri": spec.validation_dataset_uri,
            "exportLastCheckpointOnly": spec.export_last_checkpoint_only,
            "evaluationConfig": (
                spec.evaluation_config.model_dump(by_alias=True, exclude_none=True) if spec.evaluation_config else None
            ),
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
        param = _vertex_param(param_from_loc(tuple(first["loc"])), spec_field)
        raise InvalidRequest(
            f"Invalid value for '{param}': {first['msg']}.", param=param, code=ErrorCode.INVALID_VALUE
        ) from None
    except BaseException as exc:
        _discard(ctx, scope, datasets)  # a refused job leaves no imported files behind
        if isinstance(exc, ApiError):
            exc.param = _vertex_param(exc.param, spec_field)
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
