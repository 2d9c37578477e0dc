"""`client.endpoints`: the served copies of tuned models, checkpoints and base models (a Hone resource)."""

from __future__ import annotations

import time

from openai._base_client import AsyncPaginator  # what openai's async lists return: awaitable and async-iterable
from openai.pagination import AsyncCursorPage, SyncCursorPage

from hone.errors import WaitTimeoutError
from hone.resources import AsyncResource, SyncResource
from hone.types import Deleted, Endpoint

ENDPOINTS = "/endpoints"


def _timed_out(endpoint: Endpoint, timeout: float) -> WaitTimeoutError:
    return WaitTimeoutError(f"Endpoint {endpoint.id} is still {endpoint.state} after {timeout:g}s.", last=endpoint)


class Endpoints(SyncResource):
    def create(self, model: str, *, idempotency_key: str | None = None) -> Endpoint:
        """Serves a tuned model (ft:...), a checkpoint (id or name) or a base model; it starts `deploying`."""
        options = self._settings.options(create=True, idempotency_key=idempotency_key)
        return self._api.post(ENDPOINTS, body={"model": model}, cast_to=Endpoint, options=options)

    def list(self, *, model: str | None = None, limit: int = 100) -> SyncCursorPage[Endpoint]:
        options = self._settings.options(params={"model": model, "limit": limit})
        return self._api.get_api_list(ENDPOINTS, page=SyncCursorPage[Endpoint], model=Endpoint, options=options)

    def retrieve(self, endpoint_id: str) -> Endpoint:
        return self._api.get(f"{ENDPOINTS}/{endpoint_id}", cast_to=Endpoint)

    def delete(self, endpoint_id: str) -> Deleted:
        return self._api.delete(f"{ENDPOINTS}/{endpoint_id}", cast_to=Deleted)

    def wait(self, endpoint_id: str, *, timeout: float = 300, poll_interval: float = 0.5) -> Endpoint:
        """Blocks while the endpoint is deploying; returns it ready, failed or stopped."""
        deadline = time.monotonic() + timeout
        while (endpoint := self.retrieve(endpoint_id)).state == "deploying":
            if time.monotonic() >= deadline:
                raise _timed_out(endpoint, timeout)
            time.sleep(poll_interval)
        return endpoint


class AsyncEndpoints(AsyncResource):
    async def create(self, model: str, *, idempotency_key: str | None = None) -> Endpoint:
        options = self._settings.options(create=True, idempotency_key=idempotency_key)
        return await self._api.post(ENDPOINTS, body={"model": model}, cast_to=Endpoint, options=options)

    def list(
        self, *, model: str | None = None, limit: int = 100
    ) -> AsyncPaginator[Endpoint, AsyncCursorPage[Endpoint]]:
        options = self._settings.options(params={"model": model, "limit": limit})
        return self._api.get_api_list(ENDPOINTS, page=AsyncCursorPage[Endpoint], model=Endpoint, options=options)

    async def retrieve(self, endpoint_id: str) -> Endpoint:
        return await self._api.get(f"{ENDPOINTS}/{endpoint_id}", cast_to=Endpoint)

    async def delete(self, endpoint_id: str) -> Deleted:
        return await self._api.delete(f"{ENDPOINTS}/{endpoint_id}", cast_to=Deleted)

    async def wait(self, endpoint_id: str, *, timeout: float = 300, poll_interval: float = 0.5) -> Endpoint:
        import asyncio

        deadline = time.monotonic() + timeout
        while (endpoint := await self.retrieve(endpoint_id)).state == "deploying":
            if time.monotonic() >= deadline:
                raise _timed_out(endpoint, timeout)
            await asyncio.sleep(poll_interval)
        return endpoint
