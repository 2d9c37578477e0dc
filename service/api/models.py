"""OpenAI Models API. Ids hold ':' and '/', hence the path converters."""

import logging

from fastapi import APIRouter, Depends

from service import models
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute
from service.auth import ProjectPrincipal
from service.context import AppContext

log = logging.getLogger("hone.api")

router = APIRouter(route_class=JSONRoute, prefix="/v1/models", tags=["models"])


@router.get("")
def list_models(principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)):
    return models.list_models(ctx, principal)


@router.get("/{model_id:path}")
def retrieve_model(model_id: str, principal: ProjectPrincipal = Depends(project_principal),
                   ctx: AppContext = Depends(get_ctx)):
    return models.get_model(ctx, principal, model_id)


@router.delete("/{model_id:path}")
def delete_model(model_id: str, principal: ProjectPrincipal = Depends(project_principal),
                 ctx: AppContext = Depends(get_ctx)):
    deleted = models.delete_model(ctx, principal, model_id)
    log.info("model deleted")
    return deleted
