"""OpenAI chat and text completions for tuned, checkpoint and base models, through the gateway."""

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from service.api.deps import project_principal
from service.auth import ProjectPrincipal
from service.gateway import parse_body

router = APIRouter(prefix="/v1", tags=["inference"])


async def _forward(request: Request, principal: ProjectPrincipal, path: str):
    gateway = request.app.state.gateway
    raw = await request.body()
    body = parse_body(raw)
    model = body["model"]
    route = gateway.cached_route(principal.project_id, model) or \
        await run_in_threadpool(gateway.route, principal.project_id, model)
    return await gateway.forward(principal.project_id, path, raw, body, route,
                                 getattr(request.state, "request_id", None))


@router.post("/chat/completions", summary="Create a chat completion with a tuned or base model")
async def chat_completions(request: Request, principal: ProjectPrincipal = Depends(project_principal)):
    return await _forward(request, principal, "/v1/chat/completions")


@router.post("/completions", summary="Create a text completion with a tuned or base model")
async def completions(request: Request, principal: ProjectPrincipal = Depends(project_principal)):
    return await _forward(request, principal, "/v1/completions")
