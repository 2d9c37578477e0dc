"""Hone's external models: OpenAI-compatible endpoints outside Hone a project registers (service/external_models.py)."""

from fastapi import APIRouter, Depends

from service import api_models_evals as m
from service import external_models
from service.api.contract import PROJECT, openai_errors
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute, database_read
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.eval_schemas import CreateExternalModel

router = APIRouter(
    route_class=JSONRoute, prefix="/v1/external_models", tags=["external models"], responses=openai_errors(*PROJECT)
)


@router.post("", response_model=m.ExternalModelObject)
def create_external_model(
    body: CreateExternalModel,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return external_models.create(ctx, principal, body)


@router.get("", response_model=m.ExternalModelList)
@database_read
def list_external_models(principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)):
    return external_models.list_models(ctx, principal)


@router.get("/{model_id}", response_model=m.ExternalModelObject)
@database_read
def get_external_model(
    model_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return external_models.get(ctx, principal, model_id)


@router.delete("/{model_id}", response_model=m.ExternalModelDeleted)
def delete_external_model(
    model_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return external_models.delete(ctx, principal, model_id)
