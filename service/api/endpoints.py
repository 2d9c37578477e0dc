"""Hone endpoints: a served model per tuned model, checkpoint or base model (a Hone resource; OpenAI has none)."""

import logging

from fastapi import APIRouter, Depends, Request

from service import api_models as m
from service import endpoints
from service.api.contract import PROJECT, limit_query, openai_errors
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.pagination import check_limit
from service.schemas import CreateEndpoint

log = logging.getLogger("hone.api")

router = APIRouter(route_class=JSONRoute, prefix="/v1/endpoints", tags=["endpoints"], responses=openai_errors(*PROJECT))


@router.post("", response_model=m.EndpointObject)
def create_endpoint(body: CreateEndpoint, request: Request, principal: ProjectPrincipal = Depends(project_principal),
                    ctx: AppContext = Depends(get_ctx)):
    endpoint = endpoints.create_endpoint(ctx, principal, body.model, request.app.state.usage.pending,
                                         body.idle_timeout_s)
    log.info("endpoint created", extra={"endpoint_id": endpoint["id"], "model": endpoint["model"],
                                        "state": endpoint["state"]})
    request.app.state.loops.wake("endpoints")
    return endpoint


@router.get("", response_model=m.EndpointList)
def list_endpoints(request: Request, after: str | None = None, limit: int = limit_query(20, 100), model: str | None = None,
                   principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)):
    return endpoints.list_endpoints(ctx, principal, after=after, limit=check_limit(limit, 100), model=model,
                                    pending_usage=request.app.state.usage.pending)


@router.get("/{endpoint_id}", response_model=m.EndpointObject)
def retrieve_endpoint(endpoint_id: str, request: Request, principal: ProjectPrincipal = Depends(project_principal),
                      ctx: AppContext = Depends(get_ctx)):
    return endpoints.get_endpoint(ctx, principal, endpoint_id, request.app.state.usage.pending)


@router.delete("/{endpoint_id}", response_model=m.EndpointDeleted)
def delete_endpoint(endpoint_id: str, request: Request, principal: ProjectPrincipal = Depends(project_principal),
                    ctx: AppContext = Depends(get_ctx)):
    deleted = endpoints.delete_endpoint(ctx, principal, endpoint_id)
    log.info("endpoint deleted")
    request.app.state.gateway.forget(principal.project_id)
    request.app.state.loops.wake("endpoints")
    return deleted
