"""OpenAI's webhook endpoints API (`client.webhooks`), and Hone's delivery log beside it (service/webhooks.py)."""

from fastapi import APIRouter, Depends

from service import api_models_webhooks as m
from service import webhooks
from service.api.contract import PROJECT, limit_query, openai_errors
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute, database_read
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.pagination import check_limit
from service.webhook_schemas import CreateWebhookEndpoint, UpdateWebhookEndpoint

router = APIRouter(
    route_class=JSONRoute, prefix="/v1/webhook_endpoints", tags=["webhooks"], responses=openai_errors(*PROJECT)
)


@router.post("", response_model=m.WebhookEndpointWithSecret)
def create_webhook_endpoint(
    body: CreateWebhookEndpoint,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return webhooks.create(ctx, principal, body)


@router.get("", response_model=m.WebhookEndpointList)
@database_read
def list_webhook_endpoints(
    after: str | None = None,
    limit: int = limit_query(20, 100),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return webhooks.list_endpoints(ctx, principal, after=after, limit=check_limit(limit, 100))


@router.get("/{webhook_endpoint_id}", response_model=m.WebhookEndpointObject)
@database_read
def retrieve_webhook_endpoint(
    webhook_endpoint_id: str,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return webhooks.get(ctx, principal, webhook_endpoint_id)


@router.post("/{webhook_endpoint_id}", response_model=m.WebhookEndpointObject)
def update_webhook_endpoint(
    webhook_endpoint_id: str,
    body: UpdateWebhookEndpoint,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return webhooks.update(ctx, principal, webhook_endpoint_id, body)


@router.delete("/{webhook_endpoint_id}", response_model=m.WebhookEndpointDeleted)
def delete_webhook_endpoint(
    webhook_endpoint_id: str,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return webhooks.delete(ctx, principal, webhook_endpoint_id)


@router.post("/{webhook_endpoint_id}/rotate_secret", response_model=m.WebhookEndpointWithSecret)
def rotate_webhook_secret(
    webhook_endpoint_id: str,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return webhooks.rotate_secret(ctx, principal, webhook_endpoint_id)


@router.get("/{webhook_endpoint_id}/deliveries", response_model=m.WebhookDeliveryList)
@database_read
def list_webhook_deliveries(
    webhook_endpoint_id: str,
    after: str | None = None,
    limit: int = limit_query(20, 100),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    """Hone: the endpoint's delivery log, newest first: each event's status and every attempt (time, status code,
    error)."""
    return webhooks.list_deliveries(ctx, principal, webhook_endpoint_id, after=after, limit=check_limit(limit, 100))
