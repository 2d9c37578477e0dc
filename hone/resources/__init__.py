"""The API's resources (`client.files`, `client.jobs`, ...), a sync and an async class each, over the client's
openai client: openai's own resources for what OpenAI's API defines, its `get`/`post`/`delete`/`get_api_list`
for Hone's routes. `ClientSettings` is what both clients read from their arguments and the environment."""

from __future__ import annotations

import os
import uuid
from typing import Any

import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2


class ClientSettings:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        admin_key: str | None,
        timeout: float,
        max_retries: int,
    ) -> None:
        url = (base_url or os.environ.get("HONE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        # Accept the openai SDK's spelling too (…/v1).
        self.base_url = url[:-3] if url.endswith("/v1") else url
        self.api_key = api_key if api_key is not None else os.environ.get("HONE_API_KEY")
        # Projects and keys are managed with the admin key; the server reads HONE_ADMIN_API_KEY too.
        self.admin_key = admin_key if admin_key is not None else os.environ.get("HONE_ADMIN_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries

    def openai_options(self) -> dict[str, Any]:
        """The openai client's arguments: Hone's API under /v1, the project key (or the admin key)."""
        from hone import __version__

        key = self.api_key or self.admin_key
        headers = {"User-Agent": f"hone-python/{__version__}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"  # on every route, whichever openai's version thinks needs it
        return {
            "base_url": self.base_url + "/v1",
            "api_key": key or "",
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "default_headers": headers,
        }

    def options(
        self,
        *,
        params: dict[str, object] | None = None,
        admin: bool = False,
        create: bool = False,
        idempotency_key: str | None = None,
        multipart: bool = False,
    ) -> openai.RequestOptions:
        """One request's options: query parameters (None dropped), the admin key, and for a create an
        Idempotency-Key (the caller's or a new one), the same on every retry: a create retried after a lost answer
        makes one object where the server honours the key."""
        headers: dict[str, str] = {}
        if admin and (key := self.admin_key or self.api_key):
            headers["Authorization"] = f"Bearer {key}"
        headers |= self.headers(create=create, idempotency_key=idempotency_key)
        if multipart:
            headers["Content-Type"] = "multipart/form-data"  # openai encodes `files` as a form only with this
        options: openai.RequestOptions = {"headers": headers}
        if params:
            options["params"] = {k: v for k, v in params.items() if v is not None}
        return options

    @staticmethod
    def headers(*, create: bool = False, idempotency_key: str | None = None) -> dict[str, str]:
        """Extra headers for a call of one of openai's resources: a create's Idempotency-Key."""
        return {"Idempotency-Key": idempotency_key or f"hone-{uuid.uuid4().hex}"} if create else {}


class SyncResource:
    def __init__(self, api: openai.OpenAI, settings: ClientSettings) -> None:
        self._api = api
        self._settings = settings


class AsyncResource:
    def __init__(self, api: openai.AsyncOpenAI, settings: ClientSettings) -> None:
        self._api = api
        self._settings = settings
