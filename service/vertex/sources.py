"""The models a Vertex tuningJobs create names, as Hone model names: the model the job tunes (a base model, or a
tuned model or one of its checkpoints that the job continues from) and a distillation's teacher (a model the
project can call, or a tuned model by its Vertex name)."""

from __future__ import annotations

import re

from sqlalchemy import select

from service.context import AppContext
from service.db.tables import Checkpoint, Job
from service.errors import ErrorCode, InvalidRequest
from service.vertex.resources import VertexScope
from service.vertex.schemas import CreateTuningJob, DistillationSpec

# A tuned model as this view names it (tunedModel.model): projects/{p}/locations/{l}/models/{job id}@1
TUNED_MODEL = re.compile(r"^projects/([^/]+)/locations/[^/]+/models/([^/@]+)(?:@([^/]+))?$")
DISTILLATION = "distillationSpec"
TEACHER_FIELDS = ("baseTeacherModel", "tunedTeacherModelSource")


def source_model(ctx: AppContext, scope: VertexScope, body: CreateTuningJob) -> tuple[str, dict]:
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
        model = tuned_source(ctx, scope, name, checkpoint, "preTunedModel.tunedModelName")
        given = {"tunedModelName": name, **({"checkpointId": checkpoint} if checkpoint else {})}
        return model, {"preTunedModel": given}
    if not body.base_model:
        raise InvalidRequest("baseModel is required.", param="baseModel", code=ErrorCode.MISSING_REQUIRED_PARAMETER)
    if TUNED_MODEL.match(body.base_model):
        return tuned_source(ctx, scope, body.base_model, None, "baseModel"), {"baseModel": body.base_model}
    return body.base_model, {}


def teacher_model(ctx: AppContext, scope: VertexScope, spec: DistillationSpec) -> tuple[str, str, dict]:
    """(the teacher as Hone names it, the Vertex field that named it, what the view echoes). Whether the project
    can call it is Hone's distillation check (service/distillation.py), at the job's creation."""
    given = {
        field: value
        for field, value in zip(TEACHER_FIELDS, (spec.base_teacher_model, spec.tuned_teacher_model_source))
        if value
    }
    if len(given) != 1:
        raise InvalidRequest(
            f"Give exactly one of {DISTILLATION}.baseTeacherModel (a model the project can call: a base model, a "
            f"tuned model ft:..., an external model ext:<name>) and {DISTILLATION}.tunedTeacherModelSource (a tuned "
            "model's name, projects/{project}/locations/{location}/models/{model}).",
            param=f"{DISTILLATION}.{list(given)[-1] if given else TEACHER_FIELDS[0]}",
            code=ErrorCode.INVALID_VALUE if given else ErrorCode.MISSING_REQUIRED_PARAMETER,
        )
    [(field, name)] = given.items()
    if field == "tunedTeacherModelSource":
        return tuned_source(ctx, scope, name, None, f"{DISTILLATION}.{field}", teacher=True), field, given
    if TUNED_MODEL.match(name):
        raise InvalidRequest(
            f"'{name[:200]}' is a tuned model's name: give it as {DISTILLATION}.tunedTeacherModelSource.",
            param=f"{DISTILLATION}.{field}",
            code=ErrorCode.INVALID_VALUE,
        )
    return name, field, given


def tuned_source(
    ctx: AppContext, scope: VertexScope, name: str, checkpoint: str | None, field: str, *, teacher: bool = False
) -> str:
    """The Hone model name (ft:..., or a checkpoint's id) of a tuned model's Vertex name and checkpoint id: a model
    to continue tuning, or (`teacher`) a distillation's teacher."""
    match = TUNED_MODEL.match(name)
    principal = scope.principal
    missing = InvalidRequest(
        f"Tuned model '{name}' does not exist" + ("." if teacher else " or cannot be tuned further."),
        param=field,
        code=ErrorCode.MODEL_NOT_FOUND if teacher else ErrorCode.MODEL_NOT_AVAILABLE,
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
        wait = (
            "wait for it to succeed"
            if teacher
            else "continue one of its checkpoints with preTunedModel.checkpointId, or wait"
        )
        raise InvalidRequest(
            f"Tuned model '{name}' is not ready: its tuning job is {job.status}; {wait}.",
            param=field,
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    return job.fine_tuned_model
