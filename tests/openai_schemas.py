"""Checks every JSON body the openai SDK receives in tests against OpenAI's own JSON Schemas."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import httpx
from jsonschema import Draft202012Validator

# A verbatim copy of shared/reference/openai-schemas.json, so a fresh clone tests on its own.
SCHEMAS_PATH = Path(__file__).with_name("openai-schemas.json")

# (method, path regex) -> schema name; the first match wins.
ROUTES = [
    ("POST", r"/v1/files", "OpenAIFile"),
    ("GET", r"/v1/files", "ListFilesResponse"),
    ("GET", r"/v1/files/.+/content", None),
    ("GET", r"/v1/files/.+", "OpenAIFile"),
    ("DELETE", r"/v1/files/.+", "DeleteFileResponse"),
    ("POST", r"/v1/fine_tuning/jobs", "FineTuningJob"),
    ("GET", r"/v1/fine_tuning/jobs", "ListPaginatedFineTuningJobsResponse"),
    ("GET", r"/v1/fine_tuning/jobs/[^/]+/events", "ListFineTuningJobEventsResponse"),
    ("GET", r"/v1/fine_tuning/jobs/[^/]+/checkpoints", "ListFineTuningJobCheckpointsResponse"),
    ("GET", r"/v1/fine_tuning/jobs/[^/]+", "FineTuningJob"),
    ("POST", r"/v1/fine_tuning/jobs/[^/]+/(cancel|pause|resume)", "FineTuningJob"),
    ("GET", r"/v1/models", "ListModelsResponse"),
    ("GET", r"/v1/models/.+", "Model"),
    ("DELETE", r"/v1/models/.+", "DeleteModelResponse"),
    ("POST", r"/v1/chat/completions/export", None),  # Hone's: answers a file, checked as files are by its test
    ("POST", r"/v1/chat/completions", "CreateChatCompletionResponse"),
    # Stored completions: the openai SDK's models (the reference file has none), pages in OpenAI's list shape
    ("GET", r"/v1/chat/completions", "sdk-list:chat.ChatCompletion"),
    ("GET", r"/v1/chat/completions/[^/]+/messages", "sdk-list:chat.ChatCompletionStoreMessage"),
    ("GET", r"/v1/chat/completions/[^/]+", "sdk:chat.ChatCompletion"),
    ("POST", r"/v1/chat/completions/[^/]+", "sdk:chat.ChatCompletion"),
    ("DELETE", r"/v1/chat/completions/[^/]+", "sdk:chat.ChatCompletionDeleted"),
    ("POST", r"/v1/completions", "CreateCompletionResponse"),
    # Not in the reference file: the schemas of the openai SDK's own models for them (see _SDK_MODELS)
    ("POST", r"/v1/fine_tuning/alpha/graders/run", "sdk:GraderRunResponse"),
    ("POST", r"/v1/fine_tuning/alpha/graders/validate", "sdk:GraderValidateResponse"),
    # Not in the reference file either, and the SDK's eval models require fields OpenAI answers null (a run's
    # `error` before it fails): checked against Hone's openapi.json by tests/test_schemathesis.py instead.
    # Webhook endpoints: the openai SDK's models (the reference file has none); the delivery log is Hone's, checked
    # against Hone's openapi.json by tests/test_schemathesis.py
    ("POST", r"/v1/webhook_endpoints", "sdk:webhooks.WebhookEndpointWithSecret"),
    ("GET", r"/v1/webhook_endpoints", "sdk-list:webhooks.WebhookEndpoint"),
    ("GET", r"/v1/webhook_endpoints/[^/]+/deliveries", None),
    ("GET", r"/v1/webhook_endpoints/[^/]+", "sdk:webhooks.WebhookEndpoint"),
    ("POST", r"/v1/webhook_endpoints/[^/]+/rotate_secret", "sdk:webhooks.WebhookEndpointWithSecret"),
    ("POST", r"/v1/webhook_endpoints/[^/]+", "sdk:webhooks.WebhookEndpoint"),
    ("DELETE", r"/v1/webhook_endpoints/[^/]+", "sdk:webhooks.DeletedWebhookEndpoint"),
    ("POST", r"/v1/evals.*", None),
    ("GET", r"/v1/evals.*", None),
    ("DELETE", r"/v1/evals.*", None),
]

CHECKED: list[str] = []  # schema names seen, so tests can assert coverage


@lru_cache
def schemas() -> dict:
    return json.loads(SCHEMAS_PATH.read_text())


def _sdk_schema(name: str) -> dict:
    """The JSON Schema of an openai SDK response model (generated from OpenAI's OpenAPI document), with every
    field it declares required as the SDK declares it; aliases are the wire names. `chat.X` is openai.types.chat.X,
    a bare name openai.types.fine_tuning.alpha's; `list:` wraps it in OpenAI's cursor page."""
    import importlib

    listed = name.startswith("list:")
    module, _, model = name.removeprefix("list:").rpartition(".")
    found = importlib.import_module(f"openai.types.{module or 'fine_tuning.alpha'}")
    schema = getattr(found, model).model_json_schema(by_alias=True)
    if model == "ChatCompletionStoreMessage":
        # The SDK reuses its assistant message model, whose role is "assistant" only; stored messages are the
        # request's too (user, system, tool), as OpenAI answers them.
        schema["properties"]["role"] = {"type": "string"}
    if not listed:
        return schema
    return {
        "type": "object",
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {k: v for k, v in schema.items() if k != "$defs"}},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
        },
        "$defs": schema.get("$defs", {}),
    }


@lru_cache
def validator(name: str) -> Draft202012Validator:
    if name.startswith("sdk"):
        return Draft202012Validator(_sdk_schema(name.removeprefix("sdk:").removeprefix("sdk-")))
    return Draft202012Validator(schemas()[name])


def schema_for(method: str, path: str, status: int) -> str | None:
    if status >= 400:
        return "ErrorResponse"
    for route_method, pattern, name in ROUTES:
        if method == route_method and re.fullmatch(pattern, path):
            return name
    raise AssertionError(f"no schema mapped for {method} {path}")


def check_response(response: httpx.Response) -> None:
    name = schema_for(response.request.method, response.request.url.path, response.status_code)
    if name is None:
        return
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return  # streams are checked chunk by chunk by the tests that read them; reading here would buffer
    response.read()
    body = response.json()
    errors = sorted(validator(name).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        raise AssertionError(
            f"{response.request.method} {response.request.url.path} does not match {name}: "
            + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
        )
    CHECKED.append(name)


def schema_checking_http_client() -> httpx.Client:
    return httpx.Client(event_hooks={"response": [check_response]}, timeout=60)
