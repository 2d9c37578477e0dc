"""Routes of vLLM 0.33's OpenAI-compatible server (reference §1.1, §1.10, §2), kept thin: bodies are parsed
here, the work is in `handlers` and `models`."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from inference import VLLM_PROTOCOL_VERSION
from inference.errors import UNSUPPORTED_MEDIA_TYPE, APIError, internal, validation_error
from inference.handlers import OpenAIHandlers, new_request_id
from inference.logs import AccessLogMiddleware
from inference.metrics import CONTENT_TYPE
from inference.models import ServingModels
from inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    LoadLoRAAdapterRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    UnloadLoRAAdapterRequest,
)

log = logging.getLogger("inference.server")


async def parse_json(request: Request, model: type[BaseModel]) -> Any:
    """vLLM's `validate_json_request` then Pydantic validation, both answered as 400 "Bad Request"."""
    media_type = request.headers.get("content-type", "").lower().split(";", 1)[0].strip()
    if media_type != "application/json":
        raise validation_error([UNSUPPORTED_MEDIA_TYPE])
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise validation_error(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", getattr(e, "pos", 0)),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(e)},
                }
            ]
        ) from e
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise validation_error(errors) from e


class APIKeyMiddleware:
    """vLLM's --api-key: every /v1 path needs `Authorization: Bearer <key>`; else 401 {"error": "Unauthorized"}."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}"

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"].startswith("/v1"):
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"").decode("latin-1") != self.expected:
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(models: ServingModels, *, api_key: str | None = None, allow_runtime_lora: bool = False) -> FastAPI:
    engine = models.engine
    handlers = OpenAIHandlers(models)
    app = FastAPI(title="Hone inference engine (vLLM protocol)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return internal(f"{type(exc).__name__}: {exc}").response()

    def health_response() -> Response:
        return Response(status_code=200 if engine.alive else 503)

    @app.get("/health")
    async def health():
        return health_response()

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping():
        return health_response()

    @app.get("/version")
    async def version():
        return {"version": VLLM_PROTOCOL_VERSION}

    @app.get("/metrics")
    async def metrics():
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def list_models():
        return JSONResponse({"object": "list", "data": models.cards()})

    if allow_runtime_lora:

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: Request):
            body = await parse_json(request, LoadLoRAAdapterRequest)
            return Response(content=await models.load(body), status_code=200)  # plain string, no media type

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(request: Request):
            body = await parse_json(request, UnloadLoRAAdapterRequest)
            return Response(content=await models.unload(body), status_code=200)

    def check_alive() -> None:
        if not engine.alive:
            raise internal("The engine is dead.")

    async def respond(result):
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(result, media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse_json(request, ChatCompletionRequest)
        check_alive()
        return await respond(await handlers.chat(body, new_request_id(request.headers.get("x-request-id"))))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse_json(request, CompletionRequest)
        check_alive()
        return await respond(await handlers.completion(body, new_request_id(request.headers.get("x-request-id"))))

    @app.post("/tokenize")
    async def tokenize(request: Request):
        media_type = request.headers.get("content-type", "").lower().split(";", 1)[0].strip()
        shape: type[TokenizeCompletionRequest | TokenizeChatRequest] = TokenizeCompletionRequest
        if media_type == "application/json":
            try:
                if "messages" in json.loads(await request.body()):
                    shape = TokenizeChatRequest
            except (ValueError, TypeError):
                pass  # parse_json reports it
        return JSONResponse(handlers.tokenize(await parse_json(request, shape)))

    @app.post("/detokenize")
    async def detokenize(request: Request):
        return JSONResponse(handlers.detokenize(await parse_json(request, DetokenizeRequest)))

    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(AccessLogMiddleware)  # outermost: refused requests are logged too
    return app
