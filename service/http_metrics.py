"""HTTP request counts and latency by route template, method and status (pure ASGI: streams pass through)."""

from __future__ import annotations

import time

from service.metrics import HTTP_DURATION, HTTP_REQUESTS

UNMATCHED = "unmatched"  # no route: its raw path would be an unbounded label
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetricsMiddleware:
    def __init__(self, app):
        self.app = app

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
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            HTTP_REQUESTS.labels(method=method, route=template, status=str(status)).inc()
            HTTP_DURATION.labels(method=method, route=template).observe(time.perf_counter() - start)
