"""OpenAI's Stored Completions API (`GET/POST/DELETE /v1/chat/completions/...`) and Hone's export of stored
completions to a fine-tune file. Creating one is the gateway's `POST /v1/chat/completions` with `store: true`."""

import re

from fastapi import APIRouter, Depends, Request

from service import api_models, stored_completions
from service import api_models_stored as m
from service.api.contract import PROJECT, enum_query, limit_query, openai_errors
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute, database_read, query_pattern
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.errors import ErrorCode, InvalidRequest
from service.pagination import check_limit
from service.schemas import ExportStoredCompletions, UpdateStoredCompletion

router = APIRouter(
    route_class=JSONRoute, prefix="/v1/chat/completions", tags=["chat"], responses=openai_errors(*PROJECT)
)

_METADATA_KEY = re.compile(r"^metadata\[(.+)\]$")
ORDERS = ("asc", "desc")


def _order(order: str | None) -> str:
    if order not in (None, *ORDERS):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order", code=ErrorCode.INVALID_VALUE)
    return order or "asc"


@router.get("", response_model=m.StoredCompletionList)
@database_read
@query_pattern(r"metadata\[.+\]", "metadata[key]")
def list_stored(
    request: Request,
    model: str | None = None,
    after: str | None = None,
    limit: int = limit_query(20, 100),
    order: str | None = enum_query("asc", ORDERS),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    metadata = {g.group(1): v for k, v in request.query_params.multi_items() if (g := _METADATA_KEY.match(k))}
    return stored_completions.list_completions(
        ctx, principal, model=model, metadata=metadata, after=after, limit=check_limit(limit, 100), order=_order(order)
    )


@router.post("/export", response_model=api_models.FileObject)
def export_stored(
    body: ExportStoredCompletions,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return stored_completions.export_file(
        ctx,
        principal,
        model=body.model,
        metadata=body.metadata,
        created_after=body.created_after,
        created_before=body.created_before,
        limit=body.limit,
        filename=body.filename,
    )


@router.get("/{completion_id}", response_model=m.StoredCompletion)
@database_read
def retrieve_stored(
    completion_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return stored_completions.get_completion(ctx, principal, completion_id)


@router.post("/{completion_id}", response_model=m.StoredCompletion)
def update_stored(
    completion_id: str,
    body: UpdateStoredCompletion,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return stored_completions.update_completion(ctx, principal, completion_id, body.metadata)


@router.delete("/{completion_id}", response_model=m.StoredCompletionDeleted)
def delete_stored(
    completion_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return stored_completions.delete_completion(ctx, principal, completion_id)


@router.get("/{completion_id}/messages", response_model=m.StoredMessageList)
@database_read
def list_stored_messages(
    completion_id: str,
    after: str | None = None,
    limit: int = limit_query(20, 100),
    order: str | None = enum_query("asc", ORDERS),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return stored_completions.list_messages(
        ctx, principal, completion_id, after=after, limit=check_limit(limit, 100), order=_order(order)
    )
