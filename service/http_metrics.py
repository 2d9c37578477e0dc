"""HTTP request counts and latency by route template, method and status. Observed when a request ends by
service.logs.AccessLogMiddleware, which already times each request and notes its status: a middleware of its own
was one more layer around every request and every message of every response."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from service.metrics import HTTP_DURATION, HTTP_REQUESTS

UNMATCHED = "unmatched"  # no route: its raw path would be an unbounded label
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONVERTER = re.compile(r"\{(\w+):\w+\}")  # "{model_id:path}" is labelled "{model_id}"


class HttpMetrics:
    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple] = {}  # label lookups cost more than the updates

    def observe(self, scope: Mapping[str, Any], status: int, seconds: float) -> None:
        key = (scope["method"], getattr(scope.get("route"), "path", None) or UNMATCHED, status)
        children = self._children.get(key) or self._label(key)
        children[0].inc()
        children[1].observe(seconds)

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
