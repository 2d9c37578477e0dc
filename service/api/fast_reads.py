"""The two hottest reads, list and retrieve fine-tuning jobs, as plain Starlette routes ahead of FastAPI's.

Under benchmarks/api_latency.py, once the domain's own work was cut, FastAPI's per-request work around it
(dependency solving, parameter validation, its response path) was the largest share left of these requests'
CPU (py-spy). These routes do what the FastAPI routes in fine_tuning.py do, with the same auth, the same checks
and the same errors (through the app's handlers), and the same bodies; those routes stay for the OpenAPI
document and are never reached for these two paths. tests/test_fast_reads.py holds the two to each other.
"""

from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request

from service import jobs
from service.api.deps import get_ctx, project_principal
from service.api.routing import FiniteJSONResponse, PlainRoute, refuse_nul
from service.errors import ErrorCode, InvalidRequest
from service.pagination import check_limit

_METADATA_KEY = re.compile(r"^metadata\[(.+)\]$")


def _limit(query: QueryParams, default: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:  # FastAPI's words, as the validation handler renders them
        raise InvalidRequest("Invalid value for 'limit': Input should be a valid integer, unable to parse string as "
                             "an integer.", param="limit", code=ErrorCode.INVALID_VALUE) from None


async def list_jobs(request: Request) -> FiniteJSONResponse:
    refuse_nul(request)
    ctx = await get_ctx(request)
    principal = await project_principal(request)
    query = request.query_params
    # `metadata[key]=value` pairs, as the openai SDK sends them; `metadata=null` means "without metadata".
    metadata = {m.group(1): v for k, v in query.multi_items() if (m := _METADATA_KEY.match(k))}
    limit = check_limit(_limit(query, 20), 100)
    body = await run_in_threadpool(jobs.list_jobs, ctx, principal, after=query.get("after"), limit=limit,
                                   metadata=metadata, without_metadata=query.get("metadata") == "null")
    return FiniteJSONResponse(body)


async def retrieve_job(request: Request) -> FiniteJSONResponse:
    refuse_nul(request)
    ctx = await get_ctx(request)
    principal = await project_principal(request)
    body = await run_in_threadpool(jobs.get_job, ctx, principal, request.path_params["job_id"])
    return FiniteJSONResponse(body)


routes = [PlainRoute("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
          PlainRoute("/v1/fine_tuning/jobs/{job_id}", retrieve_job, methods=["GET"])]
