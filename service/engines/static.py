"""Engines someone else runs (HONE_ENDPOINT_BACKEND=static): a vLLM server per base model, started by the
operator (a compose service, a systemd unit) with runtime LoRA loading, at the URLs in HONE_STATIC_ENGINES.

Hone starts and stops nothing here. `ensure` hands back the configured server for the spec's base model once
it answers /health, and the deployer hot-loads adapters into it as on any backend: by path, so the server
must see Hone's adapter cache at the same path (compose mounts one volume at /var/lib/hone in both). Every
endpoint of a base model shares its server, whatever HONE_SHARED_ENGINES says. What such a server cannot do
is refused with a reason the endpoint shows: fully tuned weights (they need an engine of their own) and base
models with no configured server.

A restarted server has lost its runtime-loaded adapters: `get` watches the server's start time (vLLM's
`process_start_time_seconds` metric) and answers None once it changes, so the deployer loads them again."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import httpx

from inference.client import EngineClient, EngineUnavailable
from service.engines import EngineHandle, EngineSpec, EngineStartError, Replica
from service.settings import Settings

log = logging.getLogger("hone.engines")

_START_TIME = re.compile(r"^process_start_time_seconds\s+(\S+)", re.MULTILINE)


def _started_at(url: str, api_key: str | None) -> str | None:
    """The server's process start time from its /metrics (None when it does not say)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.get(f"{url}/metrics", headers=headers, timeout=5)
    except httpx.HTTPError:
        return None
    found = _START_TIME.search(reply.text) if reply.status_code == 200 else None
    return found.group(1) if found else None


class StaticEngines:
    def __init__(self, settings: Settings):
        self._urls = {name: url.rstrip("/") for name, url in settings.serving.static_engines.items()}
        self._api_key = settings.serving.static_engine_api_key or ""
        self._timeout = settings.serving.engine_start_timeout_s
        self._known: dict[str, tuple[EngineHandle, str | None]] = {}  # key -> (handle, server start time)
        self._lock = threading.Lock()

    def ensure(self, spec: EngineSpec) -> EngineHandle:
        if (spec.model_source or "").startswith("storage:"):
            raise EngineStartError(
                "fully tuned weights need an engine of their own, which "
                "HONE_ENDPOINT_BACKEND=static cannot start; serve LoRA adapters, or use the "
                "local or kubernetes backend"
            )
        url = self._urls.get(spec.served_name)
        if url is None:
            raise EngineStartError(
                f"no engine serves base model {spec.served_name!r}: add it to "
                f"HONE_STATIC_ENGINES (configured: {sorted(self._urls) or 'none'})"
            )
        try:
            with EngineClient(url, api_key=self._api_key or None) as client:
                client.wait_healthy(self._timeout)
        except EngineUnavailable as exc:
            raise EngineStartError(f"the engine for {spec.served_name!r} at {url} is not healthy: {exc}") from exc
        handle = EngineHandle(spec.key, url, self._api_key, spec)
        with self._lock:
            self._known[spec.key] = (handle, _started_at(url, self._api_key))
        return handle

    def get(self, key: str) -> EngineHandle | None:
        with self._lock:
            known = self._known.get(key)
        if known is None:
            return None
        handle, started = known
        with EngineClient(handle.url, api_key=self._api_key or None, timeout=5) as client:
            healthy = client.health()
        if healthy and _started_at(handle.url, self._api_key) == started:
            return handle
        with self._lock:
            if self._known.get(key) == known:
                del self._known[key]
        log.warning("engine down or restarted", extra={"engine": key, "url": handle.url})
        return None

    def stop(self, key: str) -> None:  # not ours to stop: forget it (the deployer has unloaded its adapters)
        with self._lock:
            self._known.pop(key, None)

    def suspend(self, key: str) -> None:  # the server is not ours to scale: forget it until ensure() again
        self.stop(key)

    def stage_weights(
        self, handle: EngineHandle, name: str, storage_prefix: str, local_copy: Path, replica: Replica | None = None
    ) -> str:
        return str(local_copy)  # engines here see this disk

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._known)

    def close(self) -> None:
        with self._lock:
            self._known.clear()
