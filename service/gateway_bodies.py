"""The gateway's request and response bodies: what it checks of a request, and engine answers in OpenAI's shape
(vLLM's error envelope, nulls OpenAI leaves out)."""

from __future__ import annotations

import json
from typing import Any

from inference.protocol import ChatCompletionRequest, CompletionRequest
from service.errors import ErrorCode, InvalidRequest, excerpt

# vLLM writes every field of its response models, unset ones as null; OpenAI's schema types these as objects
# or arrays that are absent when unused, so typed clients would choke on the nulls.
_ABSENT_WHEN_NULL = {
    "message": {"annotations", "function_call", "audio", "tool_calls", "reasoning", "reasoning_content"},
    "usage": {"prompt_tokens_details", "completion_tokens_details"},
}


def openai_shape(body: dict) -> dict:
    for choice in body.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            for key in _ABSENT_WHEN_NULL["message"] & {k for k, v in message.items() if v is None}:
                del message[key]
    usage = body.get("usage")
    if isinstance(usage, dict):
        for key in _ABSENT_WHEN_NULL["usage"] & {k for k, v in usage.items() if v is None}:
            del usage[key]
    return body


def openai_error(content: bytes, status: int) -> bytes:
    """Engines answer errors in vLLM's envelope (an integer `code`, exception names as `type`); callers of
    Hone get OpenAI's, which the openai SDK and its users expect."""
    try:
        body = json.loads(content)
        error = body.get("error", body) if isinstance(body, dict) else {}
    except ValueError:
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    return json.dumps(
        {
            "error": {
                "message": message
                or (content.decode(errors="replace")[:500] or f"The endpoint answered HTTP {status}."),
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": error.get("param")
                if isinstance(error, dict) and isinstance(error.get("param"), str)
                else None,
                "code": ErrorCode.MODEL_NOT_FOUND if status == 404 else None,
            }
        }
    ).encode()


# OpenAI's request fields that no engine of Hone's honours: refused by name, never passed on to be ignored (vLLM,
# and the built-in engine with it, ignore fields they do not know).
NOT_HONOURED = {
    "audio": "audio output",
    "modalities": "output modalities other than text",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning effort",
    "verbosity": "verbosity",
    "functions": "the deprecated functions (use tools)",
    "function_call": "the deprecated function_call (use tool_choice)",
    "logit_bias": "logit_bias",
    "service_tier": "service tiers",
    "prompt_cache_key": "prompt cache keys",
    "safety_identifier": "safety identifiers",
    "user": "per-user identifiers",
    "echo": "echo",
    "best_of": "best_of",
    "suffix": "suffix",
}
GATEWAY_FIELDS = {"/v1/chat/completions": frozenset({"store", "metadata"}), "/v1/completions": frozenset()}
ENGINE_FIELDS = {
    "/v1/chat/completions": frozenset(ChatCompletionRequest.model_fields),
    "/v1/completions": frozenset(CompletionRequest.model_fields),
}


def check_fields(body: dict, path: str) -> None:
    """Every field of a request is one both engines honour (inference/protocol.py's, with vLLM's extensions) or the
    gateway's own; anything else is a 400 naming it, as OpenAI answers an argument it does not know."""
    known = ENGINE_FIELDS[path] | GATEWAY_FIELDS[path]
    for name in body:
        if name in known:
            continue
        if name in NOT_HONOURED:
            raise InvalidRequest(
                f"Unsupported parameter: '{name}' ({NOT_HONOURED[name]}) is not supported by Hone's models.",
                param=name,
                code=ErrorCode.UNSUPPORTED_PARAMETER,
            )
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {excerpt(name, 64)}",
            param=excerpt(name, 64),
            code=ErrorCode.UNKNOWN_PARAMETER,
        )


def check_body(body: Any, path: str) -> dict:
    """The parsed request body (service/api/json_body.py), as the gateway needs it: an object naming a model, of
    fields the engines honour."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code=ErrorCode.INVALID_JSON)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "Missing required parameter: 'model'.", param="model", code=ErrorCode.MISSING_REQUIRED_PARAMETER
        )
    check_fields(body, path)
    return body
