"""Gemini's generateContent shapes <-> the OpenAI chat shapes the gateway and engines speak."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from hone_kernel.dataset_messages import gemini_image_part
from service.errors import ApiError, BadGateway, ErrorCode, InvalidRequest, NotFound, ServiceUnavailable
from service.vertex import response_schema
from service.vertex.resources import rfc3339
from service.vertex.schemas import Content, GenerateContentRequest, GenerationConfig

ROLES = {"user": "user", "model": "assistant"}
FINISH_REASONS = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",
    "function_call": "STOP",
}


# --- requests ---------------------------------------------------------------------------------------


def _content(content: Content, where: str, images: bool) -> str | list[dict]:
    """A turn's parts as an OpenAI message's content: its text, or for a model that reads images (`images`) text and
    image_url parts (from inlineData) in order; any other part is a 400 naming it."""
    parts: list[dict] = []
    for j, part in enumerate(content.parts):
        blob = (part.model_extra or {}).get("inlineData", (part.model_extra or {}).get("inline_data"))
        if (
            images
            and part.text is None
            and isinstance(blob, dict)
            and str(blob.get("mimeType", blob.get("mime_type", ""))).startswith("image/")
        ):
            parts.append(gemini_image_part(blob))
            continue
        if part.text is None:
            if part.thought:
                continue
            kinds = ", ".join(sorted(part.model_extra or {})) or "nothing"
            takes = "text parts and inlineData images" if images else "text parts only"
            raise InvalidRequest(
                f"{where}.parts[{j}] holds {kinds}; this model takes {takes}.",
                param=f"{where}.parts[{j}]",
                code=ErrorCode.UNSUPPORTED_PART,
            )
        parts.append({"type": "text", "text": part.text})
    if any(p["type"] == "image_url" for p in parts):
        return parts
    return "".join(p["text"] for p in parts)


def _text(content: Content, where: str) -> str:
    text = _content(content, where, images=False)
    if not isinstance(text, str):
        raise InvalidRequest(
            f"{where} holds an image; a system instruction takes text only.",
            param=f"{where}.parts",
            code=ErrorCode.UNSUPPORTED_PART,
        )
    return text


def chat_messages(contents: list[Content], system_instruction: Content | None, images: bool = False) -> list[dict]:
    """The OpenAI messages of a Gemini request; `images`: the model reads images (inlineData parts become image_url)."""
    messages: list[dict[str, Any]] = []
    if system_instruction is not None:  # its role is ignored, as Vertex ignores it
        messages.append({"role": "system", "content": _text(system_instruction, "systemInstruction")})
    for i, content in enumerate(contents):
        role = ROLES.get(content.role or "user")
        if role is None:
            raise InvalidRequest(
                f"contents[{i}].role must be 'user' or 'model', got '{content.role}'.",
                param=f"contents[{i}].role",
                code=ErrorCode.INVALID_ROLE,
            )
        messages.append({"role": role, "content": _content(content, f"contents[{i}]", images)})
    return messages


def chat_request(body: GenerateContentRequest, model: str, *, stream: bool, images: bool = False) -> dict:
    config = body.generation_config or GenerationConfig()
    messages = chat_messages(body.contents, body.system_instruction, images)
    request: dict[str, Any] = {"model": model, "messages": messages}
    sampling = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": int(config.top_k) if config.top_k is not None else None,
        "n": config.candidate_count,
        "max_tokens": config.max_output_tokens,
        "stop": config.stop_sequences,
        "seed": config.seed,
        "presence_penalty": config.presence_penalty,
        "frequency_penalty": config.frequency_penalty,
    }
    request |= {k: v for k, v in sampling.items() if v is not None}
    fmt = response_schema.response_format(
        config.response_mime_type, config.response_schema, config.response_json_schema
    )
    if fmt is not None:
        request["response_format"] = fmt
    if stream:
        request |= {"stream": True, "stream_options": {"include_usage": True}}  # usage ends Gemini's last chunk
    return request


# --- responses --------------------------------------------------------------------------------------


def _usage(usage: dict | None) -> dict | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion,
        "trafficType": "ON_DEMAND",
    }


def _candidate(index: int, text: str, finish_reason: str | None) -> dict:
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": index}
    if finish_reason:
        candidate["finishReason"] = FINISH_REASONS.get(finish_reason, "OTHER")
    return candidate


def _response(chat: dict, candidates: list[dict], model_version: str, usage: dict | None) -> dict:
    body = {
        "candidates": candidates,
        "usageMetadata": _usage(usage),
        "modelVersion": model_version,
        "createTime": rfc3339(chat.get("created")) if isinstance(chat.get("created"), int) else None,
        "responseId": chat.get("id"),
    }
    return {k: v for k, v in body.items() if v is not None}


def gemini_response(chat: dict, model_version: str) -> dict:
    candidates = [
        _candidate(c.get("index", i), (c.get("message") or {}).get("content") or "", c.get("finish_reason"))
        for i, c in enumerate(chat.get("choices") or [])
    ]
    return _response(chat, candidates, model_version, chat.get("usage"))


def engine_error(status: int, content: bytes, retry_after: str | None) -> ApiError:
    """An error the gateway relayed (OpenAI's envelope), as a typed error for Google's envelope."""
    try:
        error = json.loads(content).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    kind = {400: InvalidRequest, 404: NotFound, 503: ServiceUnavailable}.get(status) or (
        BadGateway if status >= 500 else InvalidRequest
    )
    exc = kind(
        error.get("message") or f"The endpoint answered HTTP {status}.",
        code=error.get("code"),
        headers={"Retry-After": retry_after} if retry_after else None,
    )
    exc.status_code = status  # the engine's own status (429 stays 429)
    return exc


async def gemini_stream(events: AsyncIterable[bytes], model_version: str, *, sse: bool) -> AsyncIterator[bytes]:
    """OpenAI chat chunks (SSE events) -> GenerateContentResponse chunks: SSE `data:` events, or one JSON array
    written as it goes. The finishing chunk is held until the usage that follows it, and carries both."""
    separator, first, held, chat = (b"\r\n\r\n" if sse else b",\r\n"), True, None, {}

    def frame(body: dict) -> bytes:
        nonlocal first
        data = json.dumps(body, separators=(",", ":")).encode()
        out = (b"data: " + data + separator) if sse else ((b"[" if first else separator) + data)
        first = False
        return out

    pending = b""
    try:
        async for chunk in events:
            pending += chunk
            while (end := pending.find(b"\n\n")) >= 0:
                event, pending = pending[:end].strip(), pending[end + 2 :]
                if not event.startswith(b"data:") or event == b"data: [DONE]":
                    continue
                chat = json.loads(event[5:])
                if "error" in chat:
                    error = chat["error"] or {}
                    yield frame(
                        {
                            "error": {
                                "code": 500,
                                "message": error.get("message") or "The endpoint failed.",
                                "status": "INTERNAL",
                            }
                        }
                    )
                    continue
                if held is not None and chat.get("usage") and not chat.get("choices"):
                    held["usageMetadata"] = _usage(chat["usage"])
                    continue
                for i, choice in enumerate(chat.get("choices") or []):
                    text = (choice.get("delta") or {}).get("content") or ""
                    body = _response(
                        chat,
                        [_candidate(choice.get("index", i), text, choice.get("finish_reason"))],
                        model_version,
                        None,
                    )
                    if choice.get("finish_reason"):
                        if held is not None:
                            yield frame(held)
                        held = body
                    elif text:
                        yield frame(body)
        if held is not None:
            yield frame(held)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()  # the gateway accounts for the request when its relay ends
    if not sse:
        yield b"]" if not first else b"[]"
