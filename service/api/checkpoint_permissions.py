"""OpenAI's checkpoint permissions: an admin shares a project's tuned model or checkpoint with other projects.
The path holds the model's name, with ':' and '/' (a base model's Hugging Face id), hence the path converters."""

import logging

from fastapi import APIRouter, Depends
from pydantic import Field

from hone_kernel.strict import StrictModel
from service import api_models_permissions as m
from service import checkpoint_permissions
from service.api.contract import ADMIN, enum_query, limit_query, openai_errors
from service.api.deps import admin_principal, get_ctx
from service.api.routing import JSONRoute, database_read
from service.context import AppContext
from service.errors import ErrorCode, InvalidRequest
from service.pagination import check_limit

log = logging.getLogger("hone.api")

PATH = "/{fine_tuned_model_checkpoint:path}/permissions"


class CreateCheckpointPermissions(StrictModel):  # an unknown field is a 400 naming it, not silently dropped
    project_ids: list[str] = Field(
        min_length=1,
        max_length=checkpoint_permissions.MAX_PROJECTS,
        description="The projects that may use the model (each an existing project other than its owner).",
    )


router = APIRouter(
    route_class=JSONRoute,
    prefix="/v1/fine_tuning/checkpoints",
    tags=["fine-tuning"],
    dependencies=[Depends(admin_principal)],
    responses=openai_errors(*ADMIN),
)


@router.post(PATH, response_model=m.CheckpointPermissionList)
def create_checkpoint_permissions(
    fine_tuned_model_checkpoint: str, body: CreateCheckpointPermissions, ctx: AppContext = Depends(get_ctx)
):
    """Shares a tuned model (ft:...) or checkpoint (ft:...:ckpt-step-N) with projects (admin key)."""
    created = checkpoint_permissions.create(ctx, fine_tuned_model_checkpoint, body.project_ids)
    log.info("checkpoint permissions created", extra={"permission_ids": [p["id"] for p in created["data"]]})
    return created


@router.get(PATH, response_model=m.CheckpointPermissionList)
@database_read
def list_checkpoint_permissions(
    fine_tuned_model_checkpoint: str,
    after: str | None = None,
    limit: int = limit_query(10, 100),
    order: str | None = enum_query("descending", checkpoint_permissions.ORDERS),
    project_id: str | None = None,
    ctx: AppContext = Depends(get_ctx),
):
    """The projects a tuned model or checkpoint is shared with (admin key)."""
    if order not in (None, *checkpoint_permissions.ORDERS):
        raise InvalidRequest("order must be 'ascending' or 'descending'.", param="order", code=ErrorCode.INVALID_VALUE)
    return checkpoint_permissions.list_permissions(
        ctx,
        fine_tuned_model_checkpoint,
        after=after,
        limit=check_limit(limit, 100),
        order=order or "descending",
        project_id=project_id,
    )


@router.delete(PATH + "/{permission_id}", response_model=m.CheckpointPermissionDeleted)
def delete_checkpoint_permission(
    fine_tuned_model_checkpoint: str, permission_id: str, ctx: AppContext = Depends(get_ctx)
):
    """Revokes a permission: the project's endpoints of the model stop (admin key)."""
    deleted = checkpoint_permissions.delete_permission(ctx, fine_tuned_model_checkpoint, permission_id)
    log.info("checkpoint permission deleted", extra={"permission_id": permission_id})
    return deleted
