"""The API's resources (`client.files`, `client.jobs`, ...), each written once for both clients: a method that
makes one request returns `client._request(...)`, a value for `Client` and an awaitable for `AsyncClient`.
Methods that make several requests (waiting, following) have a sync and an async subclass."""

from __future__ import annotations

import uuid
from typing import Any

from hone.types import HoneObject, Page


class Resource:
    def __init__(self, client: Any):
        self._client = client

    def _request(self, method: str, path: str, **options: Any) -> Any:
        return self._client._request(method, path, **options)

    def _create(self, path: str, *, idempotency_key: str | None = None, **options: Any) -> Any:
        """A POST that makes something. It carries an Idempotency-Key, the caller's or a new one, the same on every
        retry: a create retried after a lost answer makes one object where the server honours the key."""
        return self._request("POST", path, idempotency_key=idempotency_key or f"hone-{uuid.uuid4().hex}", **options)

    def _list(
        self, path: str, item: type[HoneObject], params: dict[str, Any] | None = None, *, admin: bool = False
    ) -> Any:
        """An auto-paging iterator (SyncPager or AsyncPager, after the client) over a cursor list."""
        page: Any = Page  # parametrized at run time with the item's class (a variable, which mypy reads as no type)

        def fetch(after: str | None):
            return self._client._request(
                "GET", path, params={**(params or {}), "after": after}, cast=page[item], admin=admin
            )

        return self._client._pager(fetch)
