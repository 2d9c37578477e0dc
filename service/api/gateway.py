"""OpenAI chat and text completions for tuned, checkpoint and base models, through the gateway.

Plain Starlette routes, not FastAPI ones: on the gateway's hot path FastAPI's per-request dependency solving
cost a measurable share of the latency it adds. Auth is the same cached project-key check the routers use,
and errors go through the same envelope handlers."""

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Match, Route

from service import stored_completions
from service.api import json_body
from service.api.deps import get_ctx, get_gateway
from service.auth import authenticate_project, cached_principal
from service.errors import ApiError
from service.gateway_bodies import check_body

CHAT = "/v1/chat/completions"


async def _forward(request: Request, path: str):
    ctx, gateway = await get_ctx(request), await get_gateway(request)
    try:
        header = request.headers.get("authorization")
        principal = cached_principal(ctx, header)
        if principal is None:  # (not `or`: mypy would type it Optional)
            principal = await run_in_threadpool(authenticate_project, ctx, header)
        request.state.project_id = principal.project_id  # for the access log
        raw = await json_body.read(request, ctx.settings.server.max_json_body_bytes)
        body = check_body(json_body.parse(raw), path)
        keep = None
        if path == CHAT and ("store" in body or "metadata" in body):  # the gateway's fields, not the engine's
            store, metadata = stored_completions.gateway_fields(body)
            keep = stored_completions.Keep(metadata) if store else None
            body = {k: v for k, v in body.items() if k not in ("store", "metadata")}
            raw = json.dumps(body).encode()
    except ApiError as exc:
        gateway.count_rejected(None, exc)
        raise
    return await gateway.relay(
        principal.project_id, path, raw, body, getattr(request.state, "request_id", None), keep=keep, sent=True
    )


async def chat_completions(request: Request):
    return await _forward(request, CHAT)


async def completions(request: Request):
    return await _forward(request, "/v1/completions")


class _GatewayRoute(Route):
    """Names itself in scope["route"], as FastAPI's routes do, so metrics label requests by this template."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope


routes = [
    _GatewayRoute("/v1/chat/completions", chat_completions, methods=["POST"]),
    _GatewayRoute("/v1/completions", completions, methods=["POST"]),
]
