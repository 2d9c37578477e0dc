"""Projects and service accounts, shaped like OpenAI's Administration API."""

import logging

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from service import api_models as m
from service import projects
from service.api.contract import ADMIN, limit_query, openai_errors
from service.api.deps import admin_principal, get_ctx
from service.api.routing import JSONRoute
from service.context import AppContext
from service.pagination import check_limit
from service.schemas import CreateProject, CreateServiceAccount

log = logging.getLogger("hone.api")


class SetWandbKey(BaseModel):
    """Hone: the project's Weights & Biases key (and server), for its jobs with a `wandb` integration."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400 naming it, not silently dropped
    api_key: str = Field(min_length=1, max_length=512, description="A W&B API key; answered only redacted.")
    base_url: str | None = Field(None, max_length=512, description="A W&B server (default: W&B's cloud).")


router = APIRouter(
    route_class=JSONRoute,
    prefix="/v1/organization/projects",
    tags=["admin"],
    dependencies=[Depends(admin_principal)],
    responses=openai_errors(*ADMIN),
)


@router.post("", response_model=m.Project)
def create_project(body: CreateProject, ctx: AppContext = Depends(get_ctx)):
    project = projects.create_project(ctx, body.name)
    log.info("project created", extra={"project_id": project["id"]})
    return project


@router.get("", response_model=m.ProjectList)
def list_projects(
    after: str | None = None,
    limit: int = limit_query(20, 100),
    include_archived: bool = False,
    ctx: AppContext = Depends(get_ctx),
):
    return projects.list_projects(ctx, after=after, limit=check_limit(limit, 100), include_archived=include_archived)


@router.get("/{project_id}", response_model=m.Project)
def get_project(project_id: str, ctx: AppContext = Depends(get_ctx)):
    return projects.get_project(ctx, project_id)


@router.delete("/{project_id}", response_model=m.ProjectArchived)
def delete_project(project_id: str, ctx: AppContext = Depends(get_ctx)):
    archived = projects.archive_project(ctx, project_id)
    log.info("project archived")
    return archived


@router.post("/{project_id}/service_accounts", response_model=m.ServiceAccount)
def create_service_account(project_id: str, body: CreateServiceAccount, ctx: AppContext = Depends(get_ctx)):
    account = projects.create_service_account(ctx, project_id, body.name)
    log.info("service account created", extra={"account_id": account["id"]})
    return account


@router.get("/{project_id}/service_accounts", response_model=m.ServiceAccountList)
def list_service_accounts(
    project_id: str, after: str | None = None, limit: int = limit_query(20, 100), ctx: AppContext = Depends(get_ctx)
):
    return projects.list_service_accounts(ctx, project_id, after=after, limit=check_limit(limit, 100))


@router.get("/{project_id}/service_accounts/{account_id}", response_model=m.ServiceAccount)
def get_service_account(project_id: str, account_id: str, ctx: AppContext = Depends(get_ctx)):
    return projects.get_service_account(ctx, project_id, account_id)


@router.delete("/{project_id}/service_accounts/{account_id}", response_model=m.ServiceAccountDeleted)
def delete_service_account(project_id: str, account_id: str, ctx: AppContext = Depends(get_ctx)):
    deleted = projects.delete_service_account(ctx, project_id, account_id)
    log.info("service account deleted")
    return deleted


@router.put("/{project_id}/integrations/wandb", response_model=m.WandbKey)
def set_wandb_key(project_id: str, body: SetWandbKey, ctx: AppContext = Depends(get_ctx)):
    configured = projects.set_wandb_key(ctx, project_id, body.api_key, body.base_url)
    log.info("wandb key set")  # never the key itself
    return configured


@router.get("/{project_id}/integrations/wandb", response_model=m.WandbKey)
def get_wandb_key(project_id: str, ctx: AppContext = Depends(get_ctx)):
    return projects.get_wandb_key(ctx, project_id)


@router.delete("/{project_id}/integrations/wandb", response_model=m.WandbKeyDeleted)
def delete_wandb_key(project_id: str, ctx: AppContext = Depends(get_ctx)):
    deleted = projects.delete_wandb_key(ctx, project_id)
    log.info("wandb key deleted")
    return deleted
