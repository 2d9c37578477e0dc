"""Prometheus: the control plane's metrics, and the engines to scrape (HTTP service discovery)."""

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service import api_models as m
from service.api.contract import openai_errors
from service.api.deps import admin_principal, get_ctx, get_metrics_exporter, metrics_scraper
from service.api.routing import JSONRoute
from service.context import AppContext
from service.metrics_export import scrape_targets

router = APIRouter(route_class=JSONRoute, tags=["observability"])


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_scraper)])
async def metrics(exporter=Depends(get_metrics_exporter)):
    body = await run_in_threadpool(exporter.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/admin/prometheus/targets",
    dependencies=[Depends(admin_principal)],
    response_model=list[m.ScrapeTargetGroup],
    responses=openai_errors(401),
)
def prometheus_targets(ctx: AppContext = Depends(get_ctx)):
    """Prometheus `http_sd_configs` targets: one group per running engine, labelled with what it serves."""
    return scrape_targets(ctx)
