"""OpenAI Models API. Ids hold ':' and '/', hence the path converters."""

import logging

from fastapi import APIRouter, Depends

from service import api_models as m
from service import models
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
