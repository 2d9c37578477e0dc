"""Chat with a tuned model: the request body, and the streamed answer (openai's Stream of server-sent events),
raising Hone's errors for an error that arrives after the answer began."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from hone.errors import from_openai
from hone.types import ChatCompletionChunk


def chat_body(
    model: str, messages: list[ChatCompletionMessageParam] | str, stream: bool, params: Mapping[str, object]
) -> dict[str, Any]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return {
        "model": model,
        "messages": messages,
        **({"stream": True} if stream else {}),
        **{k: v for k, v in params.items() if v is not None},
    }


class ChatStream:
    """The chunks of a streamed chat completion, as they arrive. Iterate once; closes itself at the end
    (or use it as a context manager to stop early). `.stream` is openai's Stream."""

    def __init__(self, stream: openai.Stream[ChatCompletionChunk]) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        try:
            yield from self.stream
        except openai.OpenAIError as exc:
            raise (from_openai(exc) or exc) from exc
        finally:
            self.stream.close()

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stream.close()


class AsyncChatStream:
    def __init__(self, stream: openai.AsyncStream[ChatCompletionChunk]) -> None:
        self.stream = stream

    async def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for chunk in self.stream:
                yield chunk
        except openai.OpenAIError as exc:
            raise (from_openai(exc) or exc) from exc
        finally:
            await self.stream.close()

    async def close(self) -> None:
        await self.stream.close()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stream.close()
