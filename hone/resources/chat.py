"""Chat with a tuned model: the request body and the streamed answer (server-sent events, as OpenAI sends
them: `data: {chunk}` lines, then `data: [DONE]`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from hone.errors import APIError
from hone.types import ChatCompletionChunk


def chat_body(model: str, messages: list[dict] | str, stream: bool, params: dict[str, Any]) -> dict[str, Any]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return {
        "model": model,
        "messages": messages,
        **({"stream": True} if stream else {}),
        **{k: v for k, v in params.items() if v is not None},
    }


_DONE = object()


def _parse_line(line: str) -> Any:
    """A chunk dict, _DONE, or None for lines that carry no data (comments, blank separators)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data.startswith("[DONE]"):
        return _DONE
    payload = json.loads(data)
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]  # an error after the answer began: the status was already 200
        raise APIError(
            str(error.get("message") or "stream failed"),
            type=error.get("type"),
            param=error.get("param"),
            code=error.get("code"),
            body=payload,
        )
    return payload


class ChatStream:
    """The chunks of a streamed chat completion, as they arrive. Iterate once; closes itself at the end
    (or use it as a context manager to stop early)."""

    def __init__(self, response: httpx.Response):
        self.response = response

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        try:
            for line in self.response.iter_lines():
                parsed = _parse_line(line)
                if parsed is _DONE:
                    return
                if parsed is not None:
                    yield ChatCompletionChunk.model_validate(parsed)
        finally:
            self.response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.response.close()


class AsyncChatStream:
    def __init__(self, response: httpx.Response):
        self.response = response

    async def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for line in self.response.aiter_lines():
                parsed = _parse_line(line)
                if parsed is _DONE:
                    return
                if parsed is not None:
                    yield ChatCompletionChunk.model_validate(parsed)
        finally:
            await self.response.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.response.aclose()
