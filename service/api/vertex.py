"""Vertex AI–compatible routes under /v1/ and /v1beta1/ `projects/{project}/locations/{location}/`: tuningJobs
and endpoints, as google-genai (vertexai=True) calls them. Every success is 200 (the SDK treats any other status
as an error); errors are Google's envelope (service.errors chooses it by path)."""

import logging
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from service.api.contract import google_errors, sse_events
from service.api.deps import get_ctx, get_gateway
from service.api.routing import JSONRoute
from service.auth import authenticate_project, cached_principal
from service.context import AppContext
from service.errors import ErrorCode, InvalidRequest, excerpt
from service.gateway import Gateway
from service.vertex import api_models as m
from service.vertex import endpoints, tuning_jobs
from service.vertex.resources import VertexScope, scope_for
from service.vertex.schemas import CountTokensRequest, CreateTuningJob, GenerateContentRequest

log = logging.getLogger("hone.api")


class _ApiVersion(Convertor):
    """Vertex's API versions: one set of routes serves both (google-genai calls v1beta1 unless told v1)."""

    regex = "v1|v1beta1"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("vertex_api_version", _ApiVersion())

# Declared for the OpenAPI document (either one authenticates); vertex_scope reads the headers itself.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="VertexBearer",
    description="A project API key in the OAuth token's place (Authorization: Bearer)",
)
_api_key = APIKeyHeader(
    name="x-goog-api-key",
    auto_error=False,
    scheme_name="GoogleApiKey",
    description="A project API key (x-goog-api-key)",
)
_SERVING_ERRORS = google_errors(429, 502, 503)  # the engine serving the endpoint: overloaded, unreachable, waking

router = APIRouter(
    route_class=JSONRoute,
    tags=["vertex"],
    responses=google_errors(400, 401, 403, 404),
    prefix="/{api_version:vertex_api_version}/projects/{project}/locations/{location}",
)


async def vertex_scope(
    request: Request,
    api_version: Literal["v1", "v1beta1"],
    project: str,
    location: str,
    ctx: AppContext = Depends(get_ctx),
    _bearer_key=Security(_bearer),
    _header_key=Security(_api_key),
    response_format: str | None = Query(
        None,
        alias="$alt",
        description="Google's system parameter: `json` (what every route answers), as Google's client libraries "
        "send it (`json;enum-encoding=int`: those libraries read enum names too, which is what Hone writes).",
    ),
) -> VertexScope:
    """The caller: `Authorization: Bearer <Hone API key>` (the OAuth token slot) or `x-goog-api-key`.
    Both API versions answer alike: v1beta1's extra fields are in every answer, and clients drop what they
    do not know."""
    if response_format is not None and response_format.split(";")[0] != "json":
        raise InvalidRequest(
            f"Unsupported $alt {excerpt(response_format, 64)!r}: these routes answer JSON ($alt=json).",
            param="$alt",
            code=ErrorCode.UNSUPPORTED_PARAMETER,
        )
    api_key = request.headers.get("x-goog-api-key")
    header = request.headers.get("authorization") or (f"Bearer {api_key}" if api_key else None)
    principal = cached_principal(ctx, header)
    if principal is None:  # (not `or`: mypy would type it Optional)
        principal = await run_in_threadpool(authenticate_project, ctx, header)
    request.state.project_id = principal.project_id  # for the access log
    return scope_for(principal, project, location)


_STREAM_DOC = {
    **_SERVING_ERRORS,
    200: {
        "description": "GenerateContentResponse chunks: with alt=sse, server-sent events (`data: <chunk>`); otherwise "
        "one JSON array written as it goes.",
        "content": {
            "application/json": {
                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/GenerateContentResponse"}}
            },
            "text/event-stream": sse_events("GenerateContentResponse"),
        },
    },
}


@router.post("/tuningJobs", response_model=m.TuningJob)
def create_tuning_job(
    body: CreateTuningJob, scope: VertexScope = Depends(vertex_scope), ctx: AppContext = Depends(get_ctx)
):
    job = tuning_jobs.create_tuning_job(ctx, scope, body)
    source = job.get("baseModel") or job["preTunedModel"]["tunedModelName"]  # continuous tuning names no baseModel
    log.info("tuning job created", extra={"job_id": job["name"].rsplit("/", 1)[-1], "model": source})
    return job


@router.get("/tuningJobs", response_model=m.TuningJobList)
def list_tuning_jobs(
    pageSize: int = 0,
    pageToken: str | None = None,
    filter: str | None = None,  # noqa: N803
    scope: VertexScope = Depends(vertex_scope),
    ctx: AppContext = Depends(get_ctx),
):
    return tuning_jobs.list_tuning_jobs(ctx, scope, page_size=pageSize, page_token=pageToken, filter_text=filter)


@router.post("/tuningJobs/{job_id}:cancel", response_model=m.Empty)
def cancel_tuning_job(job_id: str, scope: VertexScope = Depends(vertex_scope), ctx: AppContext = Depends(get_ctx)):
    cancelled = tuning_jobs.cancel_tuning_job(ctx, scope, job_id)  # any request body is ignored
    log.info("tuning job cancelled", extra={"job_id": job_id})
    return cancelled


# After the `:verb` routes, so that a 405 there names their methods (a {job_id} also matches "j:cancel").
@router.get("/tuningJobs/{job_id}", response_model=m.TuningJob)
def get_tuning_job(job_id: str, scope: VertexScope = Depends(vertex_scope), ctx: AppContext = Depends(get_ctx)):
    return tuning_jobs.get_tuning_job(ctx, scope, job_id)


@router.post(
    "/endpoints/{endpoint_id}:generateContent", response_model=m.GenerateContentResponse, responses=_SERVING_ERRORS
)
async def generate_content(
    endpoint_id: str,
    body: GenerateContentRequest,
    request: Request,
    scope: VertexScope = Depends(vertex_scope),
    ctx: AppContext = Depends(get_ctx),
    gateway: Gateway = Depends(get_gateway),
):
    return await endpoints.generate_content(
        ctx,
        gateway,
        scope,
        endpoint_id,
        body,
        stream=False,
        sse=False,
        request_id=getattr(request.state, "request_id", None),
    )


@router.post("/endpoints/{endpoint_id}:streamGenerateContent", responses=_STREAM_DOC)
async def stream_generate_content(
    endpoint_id: str,
    body: GenerateContentRequest,
    request: Request,
    alt: str | None = None,
    scope: VertexScope = Depends(vertex_scope),
    ctx: AppContext = Depends(get_ctx),
    gateway: Gateway = Depends(get_gateway),
):
    # alt=sse: server-sent events (google-genai always asks for them); otherwise a streamed JSON array.
    return await endpoints.generate_content(
        ctx,
        gateway,
        scope,
        endpoint_id,
        body,
        stream=True,
        sse=alt == "sse",
        request_id=getattr(request.state, "request_id", None),
    )


@router.post("/endpoints/{endpoint_id}:countTokens", response_model=m.CountTokensResponse, responses=_SERVING_ERRORS)
async def count_tokens(
    endpoint_id: str,
    body: CountTokensRequest,
    request: Request,
    scope: VertexScope = Depends(vertex_scope),
    ctx: AppContext = Depends(get_ctx),
    gateway: Gateway = Depends(get_gateway),
):
    return await endpoints.count_tokens(
        ctx, gateway, scope, endpoint_id, body, getattr(request.state, "request_id", None)
    )


@router.get("/endpoints/{endpoint_id}", response_model=m.VertexEndpoint)
def get_endpoint(endpoint_id: str, scope: VertexScope = Depends(vertex_scope), ctx: AppContext = Depends(get_ctx)):
    return endpoints.get_endpoint(ctx, scope, endpoint_id)
