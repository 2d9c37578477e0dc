"""Checkpoint permissions (OpenAI's `/v1/fine_tuning/checkpoints/{model}/permissions`): a tuned model or checkpoint
of one project shared with others, by the admin key.

A permission names one model as users write it: a tuned model (`ft:...`, its final weights) or one checkpoint
(`ft:...:ckpt-step-N`); sharing one does not share the other. The project it is granted to can use the model as its
own (`endpoints.resolve_model`, the one lookup of what a project may use, reads this table): see it in its models
list, deploy an endpoint for it and call it through the gateway, continue it in a fine-tuning job, name it as a
grader's, teacher's or eval's model. It cannot delete it, download its weights, or see anything else of its owner's
(the job, its events and checkpoints). Revoking stops the project's endpoints of the model; deleting the model
drops its permissions (and stops those endpoints) too. A checkpoint's permissions stay while the checkpoint does,
which deleting its job's tuned model does not remove."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.context import AppContext
from service.db.tables import Checkpoint, CheckpointPermission, Job, Project, TunedModel
from service.endpoints import stop_model_endpoints
from service.errors import NAME_CHARS, ErrorCode, InvalidRequest, NotFound, excerpt
from service.hints import Loop
from service.ids import new_id
from service.pagination import list_envelope, paginate

PARAM = "fine_tuned_model_checkpoint"
MAX_PROJECTS = 100  # project_ids in one request
ORDERS = ("ascending", "descending")


def permission_api(row: CheckpointPermission) -> dict[str, Any]:
    return {"id": row.id, "object": "checkpoint.permission", "created_at": row.created_at, "project_id": row.project_id}


def _owner(ctx: AppContext, session: Session, model: str) -> str:
    """The project owning a tuned model or checkpoint, by its name; 404 for anything else (400 for a base model)."""
    owner = session.execute(select(TunedModel.project_id).where(TunedModel.id == model)).scalar()
    if owner is None:
        owner = session.execute(
            select(Job.project_id)
            .join(Checkpoint, Checkpoint.job_id == Job.id)
            .where(Checkpoint.fine_tuned_model_checkpoint == model)
        ).scalar()
    if owner is not None:
        return owner
    if ctx.base_models.get(model) is not None:
        raise InvalidRequest(
            f"'{excerpt(model, NAME_CHARS)}' is a base model, which every project can use: only tuned models "
            "(ft:...) and their checkpoints (ft:...:ckpt-step-N) are shared.",
            param=PARAM,
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    raise NotFound(
        f"The model '{excerpt(model, NAME_CHARS)}' does not exist", param=PARAM, code=ErrorCode.MODEL_NOT_FOUND
    )


def _check_projects(session: Session, owner: str, project_ids: list[str]) -> None:
    """400 naming the ids that are no project, an archived one, or the owner itself."""
    if owner in project_ids:
        raise InvalidRequest(
            f"project_ids: {owner} owns the model, which it can use without a permission.",
            param="project_ids",
            code=ErrorCode.INVALID_VALUE,
        )
    found = dict(session.execute(select(Project.id, Project.archived_at).where(Project.id.in_(project_ids))).all())
    missing = [p for p in project_ids if p not in found]
    if missing:
        raise InvalidRequest(
            f"project_ids: no such project: {', '.join(excerpt(p) for p in missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""),
            param="project_ids",
            code=ErrorCode.PROJECT_NOT_FOUND,
        )
    archived = [p for p in project_ids if found[p] is not None]
    if archived:
        raise InvalidRequest(
            f"project_ids: archived: {', '.join(archived[:10])}", param="project_ids", code=ErrorCode.PROJECT_ARCHIVED
        )


def create(ctx: AppContext, model: str, project_ids: list[str]) -> dict[str, Any]:
    """Grants `model` to each project (in the order given, repeats once); one it already has answers as it is."""
    wanted = list(dict.fromkeys(project_ids))
    try:
        data = _create(ctx, model, wanted)
    except IntegrityError:  # the same grant made at the same moment by another request: it is there now
        data = _create(ctx, model, wanted)
    for project_id in wanted:
        ctx.hinter.routes_changed(project_id)
    return list_envelope(data, False, with_ids=True)


def _create(ctx: AppContext, model: str, wanted: list[str]) -> list[dict[str, Any]]:
    now = int(time.time())
    with ctx.db.write() as session:
        owner = _owner(ctx, session, model)
        _check_projects(session, owner, wanted)
        existing = {
            row.project_id: row
            for row in session.execute(
                select(CheckpointPermission).where(
                    CheckpointPermission.model == model, CheckpointPermission.project_id.in_(wanted)
                )
            ).scalars()
        }
        rows = []
        for project_id in wanted:
            row = existing.get(project_id)
            if row is None:
                row = CheckpointPermission(
                    id=new_id("cp_"), model=model, owner_project_id=owner, project_id=project_id, created_at=now
                )
                session.add(row)
            rows.append(row)
        session.flush()
        return [permission_api(r) for r in rows]


def list_permissions(
    ctx: AppContext, model: str, *, after: str | None, limit: int, order: str, project_id: str | None
) -> dict[str, Any]:
    with ctx.db.read() as session:
        _owner(ctx, session, model)
        stmt = select(CheckpointPermission).where(CheckpointPermission.model == model)
        if project_id is not None:
            stmt = stmt.where(CheckpointPermission.project_id == project_id)
        rows, has_more = paginate(
            session, stmt, CheckpointPermission, after=after, limit=limit, newest_first=order == "descending"
        )
        return list_envelope([permission_api(r) for r in rows], has_more, with_ids=True)


def delete_permission(ctx: AppContext, model: str, permission_id: str) -> dict[str, Any]:
    """Revokes: the project's endpoints of the model stop, and it can no longer name the model."""
    with ctx.db.write() as session:
        _owner(ctx, session, model)
        row = session.execute(
            select(CheckpointPermission).where(
                CheckpointPermission.id == permission_id, CheckpointPermission.model == model
            )
        ).scalar()
        if row is None:
            raise NotFound(
                f"No such permission of this model: {excerpt(permission_id)}",
                param="permission_id",
                code=ErrorCode.NOT_FOUND,
            )
        grantee = row.project_id
        session.delete(row)
        stop_model_endpoints(
            session,
            grantee,
            model,
            f"The model '{model}' is no longer shared with this project.",
            code=ErrorCode.MODEL_UNSHARED,
        )
    ctx.hinter.routes_changed(grantee)
    ctx.hinter.wake(Loop.ENDPOINTS)
    return {"id": permission_id, "object": "checkpoint.permission", "deleted": True}


def drop_model(session: Session, model: str) -> list[str]:
    """For a model being deleted: its permissions go, and its grantees' endpoints of it stop. The grantees."""
    grantees = list(
        session.execute(select(CheckpointPermission.project_id).where(CheckpointPermission.model == model)).scalars()
    )
    for project_id in grantees:
        stop_model_endpoints(session, project_id, model, f"The model '{model}' was deleted.")
    session.execute(delete(CheckpointPermission).where(CheckpointPermission.model == model))
    return grantees


# --- what a grantee sees: its shared models as model objects ------------------------------------------------------


def _model_api(name: str, created: int, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


def shared_models(session: Session, project_id: str, name: str | None = None) -> list[dict[str, Any]]:
    """The tuned models and checkpoints shared with the project (only `name`, if given), last shared first."""
    grant = CheckpointPermission
    tuned = (
        select(TunedModel.id, TunedModel.created_at, TunedModel.project_id, grant.seq)
        .join(grant, and_(grant.model == TunedModel.id, grant.owner_project_id == TunedModel.project_id))
        .where(grant.project_id == project_id)
    )
    checkpoints = (
        select(Checkpoint.fine_tuned_model_checkpoint, Checkpoint.created_at, Job.project_id, grant.seq)
        .join(Job, Job.id == Checkpoint.job_id)
        .join(
            grant, and_(grant.model == Checkpoint.fine_tuned_model_checkpoint, grant.owner_project_id == Job.project_id)
        )
        .where(grant.project_id == project_id)
    )
    if name is not None:
        tuned, checkpoints = tuned.where(grant.model == name), checkpoints.where(grant.model == name)
    rows = [*session.execute(tuned).all(), *session.execute(checkpoints).all()]
    rows.sort(key=lambda r: r[3], reverse=True)
    return [_model_api(model, created, owner) for model, created, owner, _ in rows]
