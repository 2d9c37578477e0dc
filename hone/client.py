"""`hone.Client` and `hone.AsyncClient`, built on the `openai` client.

Each holds an `openai.OpenAI` (an `openai.AsyncOpenAI`) for the same server and key, `client.openai`, and every
request goes through it: its transport, retries (408, 429, 5xx and lost connections; `Retry-After`; backoff from
0.5 s), pagination, multipart uploads and server-sent events. What OpenAI's API defines (files, fine-tuning
jobs, events, checkpoints, models, chat completions) is called through openai's own resources and answered as
openai's types (`hone.types` subclasses them where Hone answers more); Hone's own routes (endpoints, projects
and keys, grants, model downloads and imports, trainer logs) through the same client's `get`/`post`/`delete`.
Errors are raised as Hone's (`hone.errors`), whichever route failed.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, overload

import openai
from openai.types.chat import ChatCompletionMessageParam

from hone.errors import from_openai
from hone.resources import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, ClientSettings  # noqa: F401 (public)
from hone.resources.admin import AsyncKeys, AsyncProjects, Keys, Projects
from hone.resources.chat import AsyncChatStream, ChatStream, chat_body
from hone.resources.endpoints import AsyncEndpoints, Endpoints
from hone.resources.files import AsyncFiles, Files
from hone.resources.jobs import AsyncJobs, Jobs
from hone.resources.models import AsyncModels, Models
from hone.types import ChatCompletion, ChatCompletionChunk

Messages = list[ChatCompletionMessageParam] | str


class _TranslatingOpenAI(openai.OpenAI):
    """openai's client, raising Hone's errors: every call (a resource's, a page's next fetch, `get`/`post`)
    passes through `request`."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().request(*args, **kwargs)
        except openai.OpenAIError as exc:
            raise (from_openai(exc) or exc) from exc


class _AsyncTranslatingOpenAI(openai.AsyncOpenAI):
    async def request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().request(*args, **kwargs)
        except openai.OpenAIError as exc:
            raise (from_openai(exc) or exc) from exc


class Client:
    """The Hone API, synchronously.

    client = hone.Client()          # HONE_BASE_URL / HONE_API_KEY, or pass base_url= and api_key=
    job = client.jobs.create("hone-tiny", client.files.create("train.jsonl").id)
    job = client.jobs.wait(job.id, on_progress=print)
    client.openai                   # the openai.OpenAI it calls, for the rest of OpenAI's API
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        admin_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self._settings = ClientSettings(base_url, api_key, admin_key, timeout, max_retries)
        self.base_url, self.api_key, self.admin_key = (
            self._settings.base_url,
            self._settings.api_key,
            self._settings.admin_key,
        )
        self.timeout, self.max_retries = timeout, max_retries
        self.openai: openai.OpenAI = _TranslatingOpenAI(**self._settings.openai_options())
        self.files = Files(self.openai, self._settings)
        self.jobs = Jobs(self.openai, self._settings, self.files)
        self.models = Models(self.openai, self._settings)
        self.endpoints = Endpoints(self.openai, self._settings)
        self.projects = Projects(self.openai, self._settings)
        self.keys = Keys(self.openai, self._settings)

    @overload
    def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: Literal[False] = False,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: object,
    ) -> ChatCompletion: ...

    @overload
    def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: Literal[True],
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: object,
    ) -> ChatStream: ...

    def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: bool = False,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: object,
    ) -> ChatCompletion | ChatStream:
        """A chat completion from a tuned, checkpoint or base model (`openai.chat.completions.create`);
        `stream=True` gives the chunks as they are generated. `messages` may be one string (the user's turn);
        `params` are the usual ones: temperature, max_tokens, stop, seed, ..."""
        body = chat_body(model, messages, stream, {"temperature": temperature, "max_tokens": max_tokens, **params})
        if not stream:
            return self.openai.post("/chat/completions", body=body, cast_to=ChatCompletion)
        chunks = self.openai.post(
            "/chat/completions",
            body=body,
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.Stream[ChatCompletionChunk],
        )
        return ChatStream(chunks)

    def close(self) -> None:
        self.openai.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient:
    """The Hone API for asyncio: the same methods as `Client`, awaited (lists, `jobs.watch` and `jobs.follow`
    are async iterators). `client.openai` is its openai.AsyncOpenAI."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        admin_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self._settings = ClientSettings(base_url, api_key, admin_key, timeout, max_retries)
        self.base_url, self.api_key, self.admin_key = (
            self._settings.base_url,
            self._settings.api_key,
            self._settings.admin_key,
        )
        self.timeout, self.max_retries = timeout, max_retries
        self.openai: openai.AsyncOpenAI = _AsyncTranslatingOpenAI(**self._settings.openai_options())
        self.files = AsyncFiles(self.openai, self._settings)
        self.jobs = AsyncJobs(self.openai, self._settings, self.files)
        self.models = AsyncModels(self.openai, self._settings)
        self.endpoints = AsyncEndpoints(self.openai, self._settings)
        self.projects = AsyncProjects(self.openai, self._settings)
        self.keys = AsyncKeys(self.openai, self._settings)

    @overload
    async def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: Literal[False] = False,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: object,
    ) -> ChatCompletion: ...

    @overload
    async def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: Literal[True],
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: object,
    ) -> AsyncChatStream: ...

    async def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: bool = False,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: object,
    ) -> ChatCompletion | AsyncChatStream:
        body = chat_body(model, messages, stream, {"temperature": temperature, "max_tokens": max_tokens, **params})
        if not stream:
            return await self.openai.post("/chat/completions", body=body, cast_to=ChatCompletion)
        chunks = await self.openai.post(
            "/chat/completions",
            body=body,
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )
        return AsyncChatStream(chunks)

    async def close(self) -> None:
        await self.openai.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
