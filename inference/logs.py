"""The built-in engine's logs: JSON lines on stderr, in the control plane's shape (`ts`, `level`, `logger`, `msg`,
then fields), each carrying the engine's identity, and one access line per request with its x-request-id.

The control plane names the engine in its environment: `HONE_ENDPOINT_ENGINE` (its engine key: an endpoint id,
`base:<model>` or `spare:<model>`) and, for an engine of one endpoint's own, `HONE_ENDPOINT_ID`. Those become
the `engine` and `endpoint_id` fields of every line. A request's lines (its access line included) carry its
`request_id`: the x-request-id header the gateway forwards (none without it)."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from hone_kernel.jsonlog import JsonFormatter

# Polled by the control plane and by monitoring: logged at DEBUG only, so they do not drown the log.
_QUIET_PATHS = frozenset({"/health", "/ping", "/metrics", "/version"})

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("engine_request_id", default=None)


def identity_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    fields = {}
    if environ.get("HONE_ENDPOINT_ENGINE"):
        fields["engine"] = environ["HONE_ENDPOINT_ENGINE"]
    if environ.get("HONE_ENDPOINT_ID"):
        fields["endpoint_id"] = environ["HONE_ENDPOINT_ID"]
    return fields


class ContextFilter(logging.Filter):
    """Adds the engine's identity and the current request's id, unless the call passed them with `extra=`."""

    def __init__(self, identity: dict[str, Any]):
        super().__init__()
        self.identity = identity

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.identity.items():
            if key not in record.__dict__:
                setattr(record, key, value)
        request_id = _request_id.get()
        if request_id is not None and "request_id" not in record.__dict__:
            record.request_id = request_id
        return True


def configure_logging(level: int = logging.INFO, identity: dict[str, Any] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter(identity_from_env() if identity is None else identity))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # replaced by AccessLogMiddleware
    logging.captureWarnings(True)  # warnings.warn(...) as JSON lines too
    log = logging.getLogger("inference")

    def log_uncaught(kind, value, tb):  # a model that cannot load, say: one JSON line with the traceback
        log.critical("engine crashed: %s: %s", kind.__name__, value, exc_info=(kind, value, tb))

    sys.excepthook = log_uncaught


class AccessLogMiddleware:
    """Pure ASGI (streamed completions pass through untouched): one line per request when it ends, and the
    request's id on every line logged while it runs."""

    def __init__(self, app):
        self.app = app
        self.log = logging.getLogger("inference.access")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:128] or None
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, send_status)
        finally:
            try:
                level = logging.DEBUG if scope["path"] in _QUIET_PATHS and status < 500 else logging.INFO
                self.log.log(
                    level,
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    },
                )
            finally:
                _request_id.reset(token)
