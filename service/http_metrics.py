"""HTTP request counts and latency by route template, method and status (pure ASGI: streams pass through)."""

from __future__ import annotations

import re
import time

from service.metrics import HTTP_DURATION, HTTP_REQUESTS

UNMATCHED = "unmatched"  # no route: its raw path would be an unbounded label
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONVERTER = re.compile(r"\{(\w+):\w+\}")  # "{model_id:path}" is labelled "{model_id}"


class HttpMetricsMiddleware:
    def __init__(self, app) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple] = {}  # label lookups cost more than the updates

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            key = (scope["method"], getattr(scope.get("route"), "path", None) or UNMATCHED, status)
            children = self._children.get(key) or self._label(key)
            children[0].inc()
            children[1].observe(time.perf_counter() - start)

    def _label(self, key: tuple[str, str, int]) -> tuple:
        method, template, status = key
        method = method if method in _METHODS else "OTHER"
        template = _CONVERTER.sub(r"{\1}", template)
        children = (
            HTTP_REQUESTS.labels(method=method, route=template, status=str(status)),
            HTTP_DURATION.labels(method=method, route=template),
        )
        if key[0] in _METHODS:  # a made-up method must not grow the cache
            self._children[key] = children
        return children
