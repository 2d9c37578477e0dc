"""A synchronous client for the control plane to drive an inference engine, real vLLM or the built-in one.

It follows reference §5: plain-text 200 on load; "already been loaded" is success when the registered path
is the same; 404 = adapter files missing; any other failure (500 in vLLM >= 0.33, 400 in <= 0.11) = a bad
adapter. Both error envelopes are read: nested `{"error": {...}}` (>= 0.10.1) and flat `{"object": "error", ...}`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import httpx


class EngineError(Exception):
    """The engine answered with an error status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class EngineUnavailable(EngineError):
    """The engine cannot be reached, is not healthy, or its process is gone."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(status, message)


class AdapterNotFound(EngineError):
    """The engine found no adapter at the given path (404)."""


class AdapterLoadError(EngineError):
    """The engine refused the adapter (bad config, rank above --max-lora-rank, ...)."""


def error_message(response: httpx.Response) -> str:
    """The message of any error shape vLLM has used, or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str):
            return error
        if isinstance(error, dict):
            message = error.get("message", error.get("detail"))
            if message is not None:
                return message if isinstance(message, str) else str(message)
    return response.text


@functools.cache
def _tls() -> Any:
    """httpx's default TLS context, made once: each httpx.Client made its own, loading the CA bundle (20-60 ms on a
    busy 2-core VM), and a deploy makes several clients between a job's success and its endpoint's readiness."""
    return httpx.create_ssl_context()


class EngineClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, verify=_tls())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise EngineUnavailable(f"{method} {path}: {type(e).__name__}: {e}") from e

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise EngineError(response.status_code, error_message(response))
        return response.json()

    # --- health ---------------------------------------------------------------------------------------

    def health(self) -> bool:
        try:
            return self._http.get("/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float, alive: Callable[[], bool] | None = None) -> None:
        """Polls /health until 200. Raises EngineUnavailable on timeout, or as soon as `alive()` says the
        engine process has gone (no point waiting out a crash at startup)."""
        deadline = time.monotonic() + timeout
        while True:
            if alive is not None and not alive():
                raise EngineUnavailable("the engine process exited before it became healthy")
            if self.health():
                return
            if time.monotonic() >= deadline:
                raise EngineUnavailable(f"the engine was not healthy within {timeout:g}s")
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    # --- models and adapters --------------------------------------------------------------------------

    def models(self) -> list[dict]:
        return self._json("GET", "/v1/models")["data"]

    def load_adapter(self, name: str, path: str) -> None:
        response = self._request("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if response.status_code == 200:
            return  # plain-text body: nothing to parse
        message = error_message(response)
        if response.status_code == 404:
            raise AdapterNotFound(404, message)
        if response.status_code == 400 and "already been loaded" in message:
            card = next((m for m in self.models() if m.get("id") == name), None)
            if card is not None and _same_path(card.get("root"), path):
                return  # idempotent: that name already serves that path
        raise AdapterLoadError(response.status_code, message)

    def unload_adapter(self, name: str) -> bool:
        """True if the engine unloaded it, False if it was not loaded."""
        response = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise EngineError(response.status_code, error_message(response))

    # --- tokenizer and generation ---------------------------------------------------------------------

    def tokenize(
        self,
        model: str,
        *,
        messages: list[dict] | None = None,
        prompt: str | None = None,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        add_special_tokens: bool | None = None,
    ) -> list[int]:
        """Token ids exactly as the engine would feed them to `model` (its pinned chat template included)."""
        return self.tokenize_full(
            model,
            messages=messages,
            prompt=prompt,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            add_special_tokens=add_special_tokens,
        )["tokens"]

    def tokenize_full(
        self,
        model: str,
        *,
        messages: list[dict] | None = None,
        prompt: str | None = None,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        add_special_tokens: bool | None = None,
        return_pixel_digest: bool = False,
    ) -> dict:
        """/tokenize's whole answer; `return_pixel_digest` (Hone's engine) adds the digest of the prompt's pixels."""
        if (messages is None) == (prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        body: dict[str, Any] = {"model": model}
        if messages is not None:
            body |= {"messages": messages, "add_generation_prompt": add_generation_prompt}
            if tools:
                body["tools"] = tools
        else:
            body["prompt"] = prompt
        if add_special_tokens is not None:
            body["add_special_tokens"] = add_special_tokens
        if return_pixel_digest:
            body["return_pixel_digest"] = True
        return self._json("POST", "/tokenize", json=body)

    def chat(self, model: str, messages: list[dict], **params) -> dict:
        """A non-streamed chat completion; `params` are any other request fields."""
        return self._json(
            "POST", "/v1/chat/completions", json={**params, "model": model, "messages": messages, "stream": False}
        )

    def complete(self, model: str, prompt: str | list[int], **params) -> dict:
        """A non-streamed text completion; `params` are any other request fields."""
        return self._json("POST", "/v1/completions", json={**params, "model": model, "prompt": prompt, "stream": False})


def _same_path(a: str | None, b: str) -> bool:
    if a is None:
        return False
    return a == b or os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))
