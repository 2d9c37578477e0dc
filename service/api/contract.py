"""The OpenAPI document as a contract a machine can check: every route's error statuses with the envelope they
carry, no 422 (validation errors are 400s, service/errors.py), and the gateway's plain Starlette routes, which
FastAPI does not describe, added from their models (service/gateway_models.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api_models import ErrorEnvelope
from service.gateway_models import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
)
from service.vertex.api_models import GoogleErrorEnvelope

_WHY = {
    400: "Invalid request: a malformed body or parameter, or something not allowed (the envelope names the "
    "parameter and a code).",
    401: "Missing or unknown API key.",
    403: "The key may not do this (e.g. the admin key on a project route).",
    404: "No such object in the caller's project (or no such route).",
    413: "The body is larger than allowed.",
    429: "The model's engine is overloaded; retry after Retry-After.",
    502: "The model's engine is unreachable or answered badly.",
    503: "The model is deploying, waking from idle, or its endpoint failed; retry shortly.",
}

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
    errors = {
        str(s): {"description": _WHY[s], "content": {"application/json": _json("ErrorEnvelope")}}
        for s in (400, 401, 403, 404, 429, 502, 503)
    }
    return {
        "post": {
            "tags": ["gateway"],
            "summary": summary,
            "description": doc,
            "operationId": summary.lower().replace(" ", "_"),
            "security": [{"HTTPBearer": []}],
            "requestBody": {"required": True, "content": {"application/json": _json(request)}},
            "responses": {
                "200": {
                    "description": f"The answer; with `stream: true`, server-sent events: `data: <{chunk}>` "
                    "events, then `data: [DONE]`.",
                    "content": {"application/json": _json(answer), "text/event-stream": sse_events(chunk)},
                },
                **errors,
            },
        }
    }


def sse_events(ref: str) -> dict:
    """A text/event-stream media type whose events carry `ref` as JSON in `data` (OpenAPI 3.2's itemSchema)."""
    return {
        "itemSchema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": _json(ref)["schema"],
                }
            },
        }
    }


def _add_gateway(document: dict) -> None:
    models: list[type[BaseModel]] = [
        ChatCompletionRequest,
        ChatCompletion,
        ChatCompletionChunk,
        CompletionRequest,
        Completion,
    ]
    _, defs = models_json_schema(
        [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    doc = "Routed to the engine serving the model; the body is relayed as the engine (vLLM's API) reads it."
    # Merged: GET on the same URL is the stored completions' list (service/api/stored_completions.py).
    document["paths"].setdefault("/v1/chat/completions", {}).update(
        _gateway_operation(
            "Create chat completion", "ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", doc
        )
    )
    document["paths"]["/v1/completions"] = _gateway_operation(
        "Create completion", "CompletionRequest", "Completion", "Completion", doc
    )


def _drop_422(document: dict) -> None:
    """FastAPI documents a 422 {"detail": [...]} on every route with parameters; Hone answers those 400s."""
    for operations in document["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


# What a create answers -> the operations that take its id: OpenAPI links, so that a client generator (or a
# stateful test) knows that POST /v1/files' `id` is GET /v1/files/{file_id}'s `file_id`.
_JOB = "/v1/fine_tuning/jobs/{job_id}"
_ACCOUNT = "/v1/organization/projects/{project_id}/service_accounts"
LINKS = {
    ("post", "/v1/files"): (
        "file_id",
        [("get", "/v1/files/{file_id}"), ("get", "/v1/files/{file_id}/content"), ("delete", "/v1/files/{file_id}")],
    ),
    ("post", "/v1/fine_tuning/jobs"): (
        "job_id",
        [
            ("get", _JOB),
            ("post", _JOB + "/cancel"),
            ("post", _JOB + "/pause"),
            ("post", _JOB + "/resume"),
            ("get", _JOB + "/events"),
            ("get", _JOB + "/checkpoints"),
        ],
    ),
    ("post", "/v1/endpoints"): (
        "endpoint_id",
        [("get", "/v1/endpoints/{endpoint_id}"), ("delete", "/v1/endpoints/{endpoint_id}")],
    ),
    ("post", "/v1/organization/projects"): (
        "project_id",
        [
            ("get", "/v1/organization/projects/{project_id}"),
            ("delete", "/v1/organization/projects/{project_id}"),
            ("get", _ACCOUNT),
            ("post", _ACCOUNT),
        ],
    ),
    ("post", _ACCOUNT): ("account_id", [("get", _ACCOUNT + "/{account_id}"), ("delete", _ACCOUNT + "/{account_id}")]),
    ("post", "/v1/organization/projects/{project_id}/dataset_grants"): (
        "grant_id",
        [("delete", "/v1/organization/projects/{project_id}/dataset_grants/{grant_id}")],
    ),
}


def _add_links(document: dict) -> None:
    paths = document["paths"]
    for (method, path), (id_param, targets) in LINKS.items():
        links = {}
        for target_method, target_path in targets:
            target = paths[target_path][target_method]
            names = [p["name"] for p in target.get("parameters", []) if p["in"] == "path"]
            # The new object's id from the answer; the parent's ids (project_id) from the request's own path.
            parameters = {name: "$response.body#/id" if name == id_param else f"$request.path.{name}" for name in names}
            links[target["operationId"]] = {"operationId": target["operationId"], "parameters": parameters}
        paths[path][method]["responses"]["200"]["links"] = links


def build_openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _drop_422(document)
        _add_gateway(document)
        _add_links(document)
        app.openapi_schema = document
    return app.openapi_schema


def limit_query(default: int, maximum: int) -> Any:
    """A page size parameter: its bounds are in the document, while service.pagination.check_limit checks them
    (with OpenAI's message) instead of FastAPI's validation."""
    return Query(
        default, json_schema_extra={"minimum": 1, "maximum": maximum}, description=f"Items per page, 1 to {maximum}."
    )


def enum_query(default: str | None, values: tuple[str, ...]) -> Any:
    """A string parameter whose allowed values are documented; the domain checks them with its own message."""
    return Query(default, json_schema_extra={"enum": list(values)})
