"""Hone's extension of the Administration API: the buckets and prefixes a project's Vertex dataset URIs may read."""

import logging

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from service import api_models as m
from service import dataset_grants
from service.api.contract import ADMIN, limit_query, openai_errors
from service.api.deps import admin_principal, get_ctx
from service.api.routing import JSONRoute
from service.context import AppContext
from service.pagination import check_limit

log = logging.getLogger("hone.api")


class CreateDatasetGrant(BaseModel):
    """Hone: lets the project's tuning jobs read dataset objects under a bucket or prefix."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400 naming it, not silently dropped
    uri: str = Field(
        min_length=1,
        max_length=1024,
        description="s3://bucket/prefix/ or gs://bucket/prefix/ (a whole "
        "bucket: s3://bucket/); matched on path-segment boundaries, a gs:// grant only for gs:// URIs.",
    )


router = APIRouter(
    route_class=JSONRoute,
    prefix="/v1/organization/projects/{project_id}/dataset_grants",
    tags=["admin"],
    dependencies=[Depends(admin_principal)],
    responses=openai_errors(*ADMIN),
)


@router.post("", response_model=m.DatasetGrant)
def create_dataset_grant(project_id: str, body: CreateDatasetGrant, ctx: AppContext = Depends(get_ctx)):
    grant = dataset_grants.create_grant(ctx, project_id, body.uri)
    log.info("dataset grant created", extra={"grant_id": grant["id"], "uri": grant["uri"]})
    return grant


@router.get("", response_model=m.DatasetGrantList)
def list_dataset_grants(
    project_id: str, after: str | None = None, limit: int = limit_query(20, 100), ctx: AppContext = Depends(get_ctx)
):
    return dataset_grants.list_grants(ctx, project_id, after=after, limit=check_limit(limit, 100))


@router.delete("/{grant_id}", response_model=m.DatasetGrantDeleted)
def delete_dataset_grant(project_id: str, grant_id: str, ctx: AppContext = Depends(get_ctx)):
    deleted = dataset_grants.delete_grant(ctx, project_id, grant_id)
    log.info("dataset grant deleted", extra={"grant_id": grant_id})
    return deleted
