"""`client.endpoints`: the served copies of tuned models, checkpoints and base models (a Hone resource)."""

from __future__ import annotations

import time

from hone.errors import WaitTimeoutError
from hone.resources import Resource
from hone.types import Deleted, Endpoint

ENDPOINTS = "/v1/endpoints"


class Endpoints(Resource):
    def create(self, model: str, *, idempotency_key: str | None = None):
        """Serves a tuned model (ft:...), a checkpoint (id or name) or a base model; it starts `deploying`."""
        return self._create(ENDPOINTS, json={"model": model}, cast=Endpoint, idempotency_key=idempotency_key)

    def list(self, *, model: str | None = None, limit: int = 100):
        return self._list(ENDPOINTS, Endpoint, {"model": model, "limit": limit})

    def retrieve(self, endpoint_id: str):
        return self._request("GET", f"{ENDPOINTS}/{endpoint_id}", cast=Endpoint)

    def delete(self, endpoint_id: str):
        return self._request("DELETE", f"{ENDPOINTS}/{endpoint_id}", cast=Deleted)


def _timed_out(endpoint: Endpoint, timeout: float) -> WaitTimeoutError:
    return WaitTimeoutError(f"Endpoint {endpoint.id} is still {endpoint.state} after {timeout:g}s.", last=endpoint)


class SyncEndpoints(Endpoints):
    def wait(self, endpoint_id: str, *, timeout: float = 300, poll_interval: float = 0.5) -> Endpoint:
        """Blocks while the endpoint is deploying; returns it ready, failed or stopped."""
        deadline = time.monotonic() + timeout
        while (endpoint := self.retrieve(endpoint_id)).state == "deploying":
            if time.monotonic() >= deadline:
                raise _timed_out(endpoint, timeout)
            self._client._sleep(poll_interval)
        return endpoint


class AsyncEndpoints(Endpoints):
    async def wait(self, endpoint_id: str, *, timeout: float = 300, poll_interval: float = 0.5) -> Endpoint:
        deadline = time.monotonic() + timeout
        while (endpoint := await self.retrieve(endpoint_id)).state == "deploying":
            if time.monotonic() >= deadline:
                raise _timed_out(endpoint, timeout)
            await self._client._sleep(poll_interval)
        return endpoint
