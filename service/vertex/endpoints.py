"""Vertex endpoints: Hone's endpoints by id, and generateContent / streamGenerateContent / countTokens on the
model an endpoint serves, through the gateway's path to its engine (routing, accounting, metrics)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import cast

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from service.context import AppContext
from service.db.tables import Endpoint
from service.endpoint_states import EndpointState
from service.gateway import Gateway
from service.vertex.generation import chat_messages, chat_request, engine_error, gemini_response, gemini_stream
from service.vertex.resources import VertexScope, check_id, rfc3339
from service.vertex.schemas import CountTokensRequest, GenerateContentRequest


def _endpoint(ctx: AppContext, scope: VertexScope, endpoint_id: str) -> Endpoint:
    check_id(endpoint_id, "Endpoint")
    with ctx.db.read() as session:
        ep = session.execute(
            select(Endpoint).where(
                Endpoint.id == endpoint_id,
                Endpoint.project_id == scope.principal.project_id,
                Endpoint.state != EndpointState.STOPPED.value,
            )
        ).scalar()
    if ep is None:  # a stopped endpoint is a deleted one
        raise scope.not_found("endpoints", endpoint_id)
    return ep


def get_endpoint(ctx: AppContext, scope: VertexScope, endpoint_id: str) -> dict:
    ep = _endpoint(ctx, scope, endpoint_id)
    deployed = {"id": ep.id, "displayName": ep.model, "createTime": rfc3339(ep.created_at)}
    if ep.job_id:
        deployed["model"] = scope.name("models", f"{ep.job_id}@1")
    if ep.checkpoint_id:
        deployed["checkpointId"] = ep.checkpoint_id
    return {
        "name": scope.name("endpoints", ep.id),
        "displayName": ep.model,
        "deployedModels": [deployed],
        "trafficSplit": {ep.id: 100},
        "createTime": rfc3339(ep.created_at),
        "updateTime": rfc3339(ep.updated_at),
    }


def _reads_images(ctx: AppContext, base_model: str) -> bool:
    base = ctx.base_models.get(base_model)
    return base is not None and base.vision


async def generate_content(
    ctx: AppContext,
    gateway: Gateway,
    scope: VertexScope,
    endpoint_id: str,
    body: GenerateContentRequest,
    *,
    stream: bool,
    sse: bool,
    request_id: str | None,
) -> Response:
    ep = await run_in_threadpool(_endpoint, ctx, scope, endpoint_id)
    project_id = scope.principal.project_id
    # Named as the caller's model: the gateway resolves it (and renames it for the engine) as for OpenAI's routes.
    chat = chat_request(body, ep.model, stream=stream, images=_reads_images(ctx, ep.base_model))
    reply = await gateway.relay(project_id, "/v1/chat/completions", json.dumps(chat).encode(), chat, request_id)
    if reply.status_code != 200:
        assert isinstance(reply.body, bytes)  # the engine's error, relayed whole
        raise engine_error(reply.status_code, reply.body, reply.headers.get("retry-after"))
    if isinstance(reply, StreamingResponse):
        events = cast(AsyncIterable[bytes], reply.body_iterator)  # the gateway streams the engine's bytes
        return StreamingResponse(
            gemini_stream(events, ep.model, sse=sse),
            media_type="text/event-stream" if sse else "application/json",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    assert isinstance(reply.body, bytes)  # the engine's answer, relayed whole
    return JSONResponse(gemini_response(json.loads(reply.body), ep.model))


async def count_tokens(
    ctx: AppContext,
    gateway: Gateway,
    scope: VertexScope,
    endpoint_id: str,
    body: CountTokensRequest,
    request_id: str | None,
) -> dict:
    ep = await run_in_threadpool(_endpoint, ctx, scope, endpoint_id)
    route = await gateway.resolve(scope.principal.project_id, ep.model)
    messages = chat_messages(body.contents, body.system_instruction, _reads_images(ctx, ep.base_model))
    return {"totalTokens": await gateway.count_prompt_tokens(route, messages, request_id)}
