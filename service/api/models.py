"""OpenAI Models API. Ids hold ':' and '/', hence the path converters."""

import logging

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from service import api_models as m
from service import model_download, models
from service.api.contract import PROJECT, openai_errors
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute, database_read
from service.auth import ProjectPrincipal
from service.context import AppContext

log = logging.getLogger("hone.api")

router = APIRouter(route_class=JSONRoute, prefix="/v1/models", tags=["models"], responses=openai_errors(*PROJECT))


@router.get("", response_model=m.ModelList)
@database_read
def list_models(principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)):
    return models.list_models(ctx, principal)


@router.get(
    "/{model_id:path}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Hone: the weights as a tar stream (its last member SHA256SUMS lists each file's SHA-256).",
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def download_model(
    model_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    """Hone extension: a tuned model's or checkpoint's weights (adapter or full), tokenizer and serving files."""
    archive = model_download.archive(ctx, principal, model_id)
    disposition = f'attachment; filename="{archive.filename}"'
    return StreamingResponse(
        archive.chunks, media_type="application/x-tar", headers={"content-disposition": disposition}
    )


@router.get("/{model_id:path}", response_model=m.ModelObject)
@database_read
def retrieve_model(
    model_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return models.get_model(ctx, principal, model_id)


@router.delete("/{model_id:path}", response_model=m.ModelDeleted)
def delete_model(
    model_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    deleted = models.delete_model(ctx, principal, model_id)
    log.info("model deleted")
    return deleted
