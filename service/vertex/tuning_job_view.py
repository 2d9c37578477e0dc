"""A Hone job seen as a Vertex TuningJob: state, hyperparameters, data stats, the tuned model and its endpoint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import Checkpoint, Endpoint, File, Job
from service.endpoint_states import EndpointState
from service.training_plan import DEFAULT_LORA_RANK
from service.vertex.evaluation import dataset_runs
from service.vertex.resources import VertexScope, rfc3339
from service.vertex.schemas import ADAPTER_SIZE_OF_RANK
from service.vertex.states import vertex_state

SPEC_FIELDS = {
    "supervised": "supervisedTuningSpec",
    "dpo": "preferenceOptimizationSpec",
    "distillation": "distillationSpec",
}
# A spec's (training, validation) dataset fields: a distillation's training dataset is its prompts.
DATASET_FIELDS = {
    "supervisedTuningSpec": ("trainingDatasetUri", "validationDatasetUri"),
    "preferenceOptimizationSpec": ("trainingDatasetUri", "validationDatasetUri"),
    "distillationSpec": ("promptDatasetUri", "validationDatasetUri"),
}
STATS_FIELDS = {"supervised": "supervisedTuningDataStats", "dpo": "preferenceOptimizationDataStats"}
# OpenAI hyperparameter -> Vertex hyperParameters field
HYPERPARAMETERS = {
    "n_epochs": "epochCount",
    "learning_rate_multiplier": "learningRateMultiplier",
    "lora_rank": "adapterSize",
    "batch_size": "batchSize",
    "beta": "beta",
}
CANCELLED_CODE = 1  # google.rpc.Code.CANCELLED


def views(session: Session, scope: VertexScope, rows: Sequence[Job]) -> list[dict]:
    """Vertex TuningJobs for job rows, with what each view needs loaded in three queries for the lot."""
    ids = [job.id for job in rows]
    training = {
        f.id: f for f in session.execute(select(File).where(File.id.in_({job.training_file for job in rows}))).scalars()
    }
    live = (
        session.execute(
            select(Endpoint)
            .where(Endpoint.job_id.in_(ids), Endpoint.state != EndpointState.STOPPED.value)
            .order_by(Endpoint.seq.desc())
        )
        .scalars()
        .all()
    )
    checkpoints = (
        session.execute(select(Checkpoint).where(Checkpoint.job_id.in_(ids)).order_by(Checkpoint.step_number))
        .scalars()
        .all()
    )
    return [
        _view(
            scope,
            job,
            training.get(job.training_file),
            [ep for ep in live if ep.job_id == job.id],
            [c for c in checkpoints if c.job_id == job.id],
        )
        for job in rows
    ]


def _hyperparameters(job: Job) -> dict:
    hp = (job.method.get(job.method["type"]) or {}).get("hyperparameters") or {}
    out = {}
    for name, field in HYPERPARAMETERS.items():
        value: Any = hp.get(name)
        if name == "lora_rank":
            if hp.get("tuning_mode") != "full" and (value or "auto") == "auto":
                value = DEFAULT_LORA_RANK
            value = ADAPTER_SIZE_OF_RANK.get(value)
        if value is None or value == "auto":
            continue
        out[field] = str(value) if name in ("n_epochs", "batch_size") else value  # int64 as a string
    if job.method["type"] == "distillation":  # how the teacher answered, as resolved
        teacher = {
            "temperature": hp.get("temperature"),
            "candidateCount": hp.get("samples_per_prompt"),
            "maxOutputTokens": hp.get("max_completion_tokens"),
        }
        out["generationConfig"] = {k: v for k, v in teacher.items() if v not in (None, "auto")}
    return out


def _steps_per_epoch(job: Job) -> float | None:
    epochs = ((job.method.get(job.method["type"]) or {}).get("hyperparameters") or {}).get("n_epochs")
    total = (job.live_metrics or {}).get("total_steps")
    return total / epochs if isinstance(epochs, int) and epochs > 0 and total else None


def _error(job: Job) -> dict | None:
    if job.status == "cancelled":
        return {"code": CANCELLED_CODE, "message": "CANCELED"}
    if job.status == "failed":
        error = job.error or {}
        code = 3 if str(error.get("code") or "").startswith("invalid") else 13  # INVALID_ARGUMENT or INTERNAL
        return {"code": code, "message": error.get("message") or "The tuning job failed."}
    return None


def _tuned_model(scope: VertexScope, job: Job, endpoints: list[Endpoint], checkpoints: list[Checkpoint]) -> dict:
    tuned = [ep for ep in endpoints if ep.checkpoint_id is None]
    served = {ep.checkpoint_id: ep for ep in endpoints if ep.checkpoint_id}
    per_epoch = _steps_per_epoch(job)
    model: dict = {"model": scope.name("models", f"{job.id}@1")}
    if tuned:
        model["endpoint"] = scope.name("endpoints", tuned[0].id)
    listed = []
    for ckpt in checkpoints:
        entry = {"checkpointId": ckpt.id, "step": str(ckpt.step_number)}
        if per_epoch:
            entry["epoch"] = str(math.ceil(ckpt.step_number / per_epoch))
        if ckpt.id in served:
            entry["endpoint"] = scope.name("endpoints", served[ckpt.id].id)
        listed.append(entry)
    if listed:
        model["checkpoints"] = listed
    return model


def _data_stats(job: Job, training: File | None) -> dict | None:
    stats = {
        "tuningDatasetExampleCount": training.example_count if training else None,
        "totalBillableTokenCount": job.trained_tokens,
        "tuningStepCount": (job.live_metrics or {}).get("total_steps"),
    }
    known = {k: str(v) for k, v in stats.items() if isinstance(v, int)}
    if not known:
        return None
    if job.method["type"] == "distillation":
        # Vertex's DistillationDataStats: the prompt dataset's DatasetStats (which counts no billable tokens)
        known.pop("totalBillableTokenCount", None)
        return {"distillationDataStats": {"trainingDatasetStats": known}} if known else None
    return {STATS_FIELDS.get(job.method["type"], STATS_FIELDS["supervised"]): known}


def _view(
    scope: VertexScope, job: Job, training: File | None, endpoints: list[Endpoint], checkpoints: list[Checkpoint]
) -> dict:
    given = job.vertex_spec or {}
    spec_field = SPEC_FIELDS.get(job.method["type"], SPEC_FIELDS["supervised"])
    training_field, validation_field = DATASET_FIELDS[spec_field]
    spec = {training_field: given.get(training_field, job.training_file)}
    if job.validation_file:
        spec[validation_field] = given.get(validation_field, job.validation_file)
    if job.method["type"] == "distillation":  # the teacher as given, or as Hone names it (an OpenAI-made job)
        teacher: dict[str, str] = {f: given[f] for f in ("baseTeacherModel", "tunedTeacherModelSource") if f in given}
        spec |= teacher or {"baseTeacherModel": job.method["distillation"]["teacher"]}
    spec["hyperParameters"] = _hyperparameters(job)
    if "exportLastCheckpointOnly" in given:
        spec["exportLastCheckpointOnly"] = given["exportLastCheckpointOnly"]
    if "evaluationConfig" in given:
        spec["evaluationConfig"] = given["evaluationConfig"]
    state, sub_state = vertex_state(job, endpoints)
    updated = max(
        t
        for t in (
            job.created_at,
            job.queued_at,
            job.started_at,
            job.last_report_at,
            job.finished_at,
            *(ep.updated_at for ep in endpoints),
        )
        if t
    )
    # A continued job shows its source as given: preTunedModel (with its root base) or baseModel.
    source = (
        {"preTunedModel": {**given["preTunedModel"], "baseModel": job.base_model}}
        if "preTunedModel" in given
        else {"baseModel": given.get("baseModel", job.model)}
    )
    view = {
        "name": scope.name("tuningJobs", job.id),
        **source,
        "tunedModelDisplayName": given.get("tunedModelDisplayName") or job.suffix,
        "description": given.get("description"),
        "labels": job.metadata_ or None,
        spec_field: spec,
        "state": state,
        "tuningJobState": sub_state,
        "createTime": rfc3339(job.created_at),
        "startTime": rfc3339(job.started_at),
        "endTime": rfc3339(job.finished_at),
        "updateTime": rfc3339(updated),
        "error": _error(job),
    }
    step = (job.live_metrics or {}).get("step")
    if isinstance(step, int):
        per_epoch = _steps_per_epoch(job)
        view["tuningJobMetadata"] = {
            "completedStepCount": str(step),
            **({"completedEpochCount": str(int(step // per_epoch))} if per_epoch else {}),
        }
    if job.fine_tuned_model:
        view["tunedModel"] = _tuned_model(scope, job, endpoints, checkpoints)
    view["tuningDataStats"] = _data_stats(job, training)
    view["evaluateDatasetRuns"] = dataset_runs(scope, job.evaluation)
    return {k: v for k, v in view.items() if v is not None}  # proto3 JSON leaves unset fields out
