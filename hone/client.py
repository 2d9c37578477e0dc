"""`hone.Client` and `hone.AsyncClient`: configuration, request building, retries and error mapping.

Both share everything but the I/O: `_BaseClient` builds each request, decides whether and when to retry, and
turns responses into typed objects; `Client` sends with httpx.Client and time.sleep, `AsyncClient` with
httpx.AsyncClient and asyncio.sleep. The resources (`client.files`, `client.jobs`, ...) are written once
against `_request`, which returns the result for a Client and an awaitable for an AsyncClient.
"""

from __future__ import annotations

import email.utils
import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import httpx

from hone import __version__
from hone.errors import APIConnectionError, APIError, APITimeoutError, status_error
from hone.pagination import AsyncPager, SyncPager
from hone.resources.admin import Keys, Projects
from hone.resources.chat import AsyncChatStream, ChatStream, chat_body
from hone.resources.endpoints import AsyncEndpoints, SyncEndpoints
from hone.resources.files import Files
from hone.resources.jobs import AsyncJobs, SyncJobs
from hone.resources.models import Models
from hone.types import BoundObject, ChatCompletion, Page

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2
# 408 and 429 say "later"; 5xx may be a restart or a deploy in progress. Hone answers 4xx for anything a
# retry cannot fix, and marks a 5xx that must not be retried with `x-should-retry: false`.
RETRY_STATUSES = frozenset({408, 429})
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 8.0
RETRY_AFTER_MAX_S = 60.0


@dataclass
class _Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    multipart: Callable[[], tuple[dict, dict]] | None = None  # -> (files, data), made again for each attempt
    admin: bool = False
    idempotency_key: str | None = None
    cast: Any = None  # a pydantic model class, `bytes` for the raw body, or None for parsed JSON
    stream: bool = False


def _backoff(attempt: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_START_S * 2**attempt) * (1 + random.uniform(0, 0.25))


def _retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After (seconds, or an HTTP date) or retry-after-ms, if it gave one."""
    if (ms := response.headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class _BaseClient:
    # What differs between the sync and the async client, besides sending and sleeping.
    _http_class: type
    _jobs_class: type
    _endpoints_class: type
    _pager: type

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        admin_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ):
        url = (base_url or os.environ.get("HONE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        # Accept the openai SDK's spelling too (…/v1): every path below starts with /v1.
        self.base_url = url[:-3] if url.endswith("/v1") else url
        self.api_key = api_key if api_key is not None else os.environ.get("HONE_API_KEY")
        # Projects and keys are managed with the admin key; the server reads HONE_ADMIN_API_KEY too.
        self.admin_key = admin_key if admin_key is not None else os.environ.get("HONE_ADMIN_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self._http = self._http_class(base_url=self.base_url, timeout=timeout)
        self.files = Files(self)
        self.models = Models(self)
        self.projects = Projects(self)
        self.keys = Keys(self)
        self.jobs = self._jobs_class(self)
        self.endpoints = self._endpoints_class(self)

    # --- building requests and reading responses (no I/O) -----------------------------------------------

    def _headers(self, call: _Call, attempt: int) -> dict[str, str]:
        key = (self.admin_key or self.api_key) if call.admin else (self.api_key or self.admin_key)
        headers = {"User-Agent": f"hone-python/{__version__}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if call.idempotency_key:
            headers["Idempotency-Key"] = call.idempotency_key
        if attempt:
            headers["X-Hone-Retry-Count"] = str(attempt)
        return headers

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: _Call, attempt: int) -> httpx.Request:
        files, data = call.multipart() if call.multipart else (None, None)
        params = {k: v for k, v in (call.params or {}).items() if v is not None}
        return http.build_request(
            call.method,
            call.path,
            params=params,
            json=call.json,
            files=files,
            data=data,
            headers=self._headers(call, attempt),
        )

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now. `response` is None when the
        request got no answer (connection refused or reset, timeout)."""
        if attempt >= self.max_retries:
            return None
        if response is None:
            return _backoff(attempt)
        should = response.headers.get("x-should-retry")
        if should == "false" or (
            should != "true" and response.status_code not in RETRY_STATUSES and response.status_code < 500
        ):
            return None
        server_says = _retry_after(response)
        if server_says is not None and 0 <= server_says <= RETRY_AFTER_MAX_S:
            return server_says
        return _backoff(attempt)

    def _delay_or_raise(self, attempt: int, response: httpx.Response | None, error: APIError) -> float:
        """After a failed attempt: how long to wait before the next one, or raise `error` if there is none."""
        delay = self._retry_delay(attempt, response)
        if delay is None:
            raise error
        return delay

    @staticmethod
    def _error(response: httpx.Response) -> APIError:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return status_error(response.status_code, body, response.headers.get("x-request-id"))

    def _transport_error(self, exc: httpx.TransportError) -> APIError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"Request to {self.base_url} timed out.")
        return APIConnectionError(f"Could not reach {self.base_url}: {exc}")

    @staticmethod
    def _chat_call(model: str, messages: list[dict] | str, stream: bool, params: dict[str, Any]) -> _Call:
        return _Call(
            "POST",
            "/v1/chat/completions",
            json=chat_body(model, messages, stream, params),
            cast=ChatCompletion,
            stream=stream,
        )

    def _parse(self, response: httpx.Response, cast: Any) -> Any:
        if cast is bytes:
            return response.content
        body = response.json()
        if cast is None:
            return body
        result = cast.model_validate(body)
        for item in result.data if isinstance(result, Page) else [result]:
            if isinstance(item, BoundObject):
                item._client = self
        return result


class Client(_BaseClient):
    """The Hone API, synchronously.

    client = hone.Client()          # HONE_BASE_URL / HONE_API_KEY, or pass base_url= and api_key=
    job = client.jobs.create(model="hone-tiny", training_file=client.files.create("train.jsonl").id)
    job.wait(on_progress=print)
    """

    _http_class, _jobs_class, _endpoints_class, _pager = httpx.Client, SyncJobs, SyncEndpoints, SyncPager

    def _send(self, call: _Call) -> httpx.Response:
        for attempt in itertools.count():
            request = self._build(self._http, call, attempt)
            try:
                response = self._http.send(request, stream=call.stream)
            except httpx.TransportError as exc:
                response, error = None, self._transport_error(exc)
            else:
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                error = self._error(response)
            self._sleep(self._delay_or_raise(attempt, response, error))
        raise AssertionError("unreachable: itertools.count() never ends")

    def _request(self, method: str, path: str, **options: Any) -> Any:
        call = _Call(method, path, **options)
        return self._parse(self._send(call), call.cast)

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    @overload
    def chat(
        self, model: str, messages: list[dict] | str, *, stream: Literal[False] = False, **params: Any
    ) -> ChatCompletion: ...

    @overload
    def chat(self, model: str, messages: list[dict] | str, *, stream: Literal[True], **params: Any) -> ChatStream: ...

    def chat(
        self, model: str, messages: list[dict] | str, *, stream: bool = False, **params: Any
    ) -> ChatCompletion | ChatStream:
        """A chat completion from a tuned, checkpoint or base model; `stream=True` gives the chunks as they are
        generated. `params` are the usual ones: temperature, max_tokens, stop, seed, ..."""
        call = self._chat_call(model, messages, stream, params)
        if not stream:
            return self._parse(self._send(call), call.cast)
        return ChatStream(self._send(call))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """The Hone API for asyncio: the same methods as `Client`, awaited (lists and follow are async iterators)."""

    _http_class, _jobs_class, _endpoints_class, _pager = httpx.AsyncClient, AsyncJobs, AsyncEndpoints, AsyncPager

    async def _send(self, call: _Call) -> httpx.Response:
        for attempt in itertools.count():
            request = self._build(self._http, call, attempt)
            try:
                response = await self._http.send(request, stream=call.stream)
            except httpx.TransportError as exc:
                response, error = None, self._transport_error(exc)
            else:
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                error = self._error(response)
            await self._sleep(self._delay_or_raise(attempt, response, error))
        raise AssertionError("unreachable: itertools.count() never ends")

    async def _request(self, method: str, path: str, **options: Any) -> Any:
        call = _Call(method, path, **options)
        return self._parse(await self._send(call), call.cast)

    async def _sleep(self, seconds: float) -> None:
        import asyncio  # here, not at the top: it costs a tenth of a second, and `hone` commands never need it

        await asyncio.sleep(seconds)

    @overload
    async def chat(
        self, model: str, messages: list[dict] | str, *, stream: Literal[False] = False, **params: Any
    ) -> ChatCompletion: ...

    @overload
    async def chat(
        self, model: str, messages: list[dict] | str, *, stream: Literal[True], **params: Any
    ) -> AsyncChatStream: ...

    async def chat(
        self, model: str, messages: list[dict] | str, *, stream: bool = False, **params: Any
    ) -> ChatCompletion | AsyncChatStream:
        call = self._chat_call(model, messages, stream, params)
        if not stream:
            return self._parse(await self._send(call), call.cast)
        return AsyncChatStream(await self._send(call))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
