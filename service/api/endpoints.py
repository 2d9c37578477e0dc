"""Hone endpoints: a served model per tuned model, checkpoint or base model (a Hone resource; OpenAI has none)."""

import logging

from fastapi import APIRouter, Depends

from service import api_models as m
from service import endpoints
from service.api.contract import PROJECT, limit_query, openai_errors
from service.api.deps import get_ctx, get_pending_usage, project_principal
from service.api.routing import JSONRoute
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.pagination import check_limit
from service.schemas import CreateEndpoint

log = logging.getLogger("hone.api")

router = APIRouter(route_class=JSONRoute, prefix="/v1/endpoints", tags=["endpoints"], responses=openai_errors(*PROJECT))


@router.post("", response_model=m.EndpointObject)
def create_endpoint(
    body: CreateEndpoint,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
    pending_usage=Depends(get_pending_usage),
):
    endpoint = endpoints.create_endpoint(ctx, principal, body.model, pending_usage, body.idle_timeout_s, body.replicas)
    log.info(
        "endpoint created",
        extra={"endpoint_id": endpoint["id"], "model": endpoint["model"], "state": endpoint["state"]},
    )
    return endpoint


@router.get("", response_model=m.EndpointList)
def list_endpoints(
    after: str | None = None,
    limit: int = limit_query(20, 100),
    model: str | None = None,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
    pending_usage=Depends(get_pending_usage),
):
    return endpoints.list_endpoints(
        ctx, principal, after=after, limit=check_limit(limit, 100), model=model, pending_usage=pending_usage
    )


@router.get("/{endpoint_id}", response_model=m.EndpointObject)
def retrieve_endpoint(
    endpoint_id: str,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
    pending_usage=Depends(get_pending_usage),
):
    return endpoints.get_endpoint(ctx, principal, endpoint_id, pending_usage)


@router.delete("/{endpoint_id}", response_model=m.EndpointDeleted)
def delete_endpoint(
    endpoint_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    deleted = endpoints.delete_endpoint(ctx, principal, endpoint_id)
    log.info("endpoint deleted")
    return deleted
