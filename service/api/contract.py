"""The OpenAPI document as a contract a machine can check: every route's error statuses with the envelope they
carry, no 422 (validation errors are 400s, service/errors.py), and the gateway's plain Starlette routes, which
FastAPI does not describe, added from their models (service/gateway_models.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api_models import ErrorEnvelope
from service.gateway_models import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, \
    CompletionRequest
from service.vertex.api_models import GoogleErrorEnvelope

_WHY = {400: "Invalid request: a malformed body or parameter, or something not allowed (the envelope names the "
             "parameter and a code).",
        401: "Missing or unknown API key.",
        403: "The key may not do this (e.g. the admin key on a project route).",
        404: "No such object in the caller's project (or no such route).",
        413: "The body is larger than allowed.",
        429: "The model's engine is overloaded; retry after Retry-After.",
        502: "The model's engine is unreachable or answered badly.",
        503: "The model is deploying, waking from idle, or its endpoint failed; retry shortly."}

# The statuses every route of a kind can answer besides its own.
PROJECT = (400, 401, 403, 404)  # 403: the admin key on a project route; 404: ids are looked up in the project
ADMIN = (400, 401, 404)


def _errors(model: type[BaseModel], statuses: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, "description": _WHY[status]} for status in sorted(set(statuses))}


def openai_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: these statuses, each with OpenAI's error envelope."""
    return _errors(ErrorEnvelope, statuses)


def google_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a Vertex route: these statuses, each with Google's error envelope."""
    return _errors(GoogleErrorEnvelope, statuses)


def _json(ref: str) -> dict:
    return {"schema": {"$ref": f"#/components/schemas/{ref}"}}


def _gateway_operation(summary: str, request: str, answer: str, chunk: str, doc: str) -> dict:
    errors = {str(s): {"description": _WHY[s], "content": {"application/json": _json("ErrorEnvelope")}}
              for s in (400, 401, 403, 404, 429, 502, 503)}
    return {"post": {
        "tags": ["gateway"], "summary": summary, "description": doc, "operationId": summary.lower().replace(" ", "_"),
        "security": [{"HTTPBearer": []}],
        "requestBody": {"required": True, "content": {"application/json": _json(request)}},
        "responses": {"200": {"description": f"The answer; with `stream: true`, server-sent events: `data: <{chunk}>` "
                                             "events, then `data: [DONE]`.",
                              "content": {"application/json": _json(answer), "text/event-stream": sse_events(chunk)}},
                      **errors}}}


def sse_events(ref: str) -> dict:
    """A text/event-stream media type whose events carry `ref` as JSON in `data` (OpenAPI 3.2's itemSchema)."""
    return {"itemSchema": {"type": "object", "required": ["data"], "properties": {"data": {
        "type": "string", "contentMediaType": "application/json", "contentSchema": _json(ref)["schema"]}}}}


def _add_gateway(document: dict) -> None:
    models = [ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, CompletionRequest, Completion]
    _, defs = models_json_schema([(m, "validation" if m.__name__.endswith("Request") else "serialization")
                                  for m in models], ref_template="#/components/schemas/{model}")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    doc = "Routed to the engine serving the model; the body is relayed as the engine (vLLM's API) reads it."
    document["paths"]["/v1/chat/completions"] = _gateway_operation(
        "Create chat completion", "ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", doc)
    document["paths"]["/v1/completions"] = _gateway_operation(
        "Create completion", "CompletionRequest", "Completion", "Completion", doc)


def _drop_422(document: dict) -> None:
    """FastAPI documents a 422 {"detail": [...]} on every route with parameters; Hone answers those 400s."""
    for operations in document["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def build_openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
        _drop_422(document)
        _add_gateway(document)
        app.openapi_schema = document
    return app.openapi_schema
