"""JSON logs on stderr, a per-request log context, and an access-log middleware that stamps every response
with x-request-id.

Every record logged while a request is handled carries `request_id`, `project_id` once auth has resolved it
(`request.state.project_id`), and the ids its path names (`job_id`, `endpoint_id`, `file_id`, `model_id`,
`project_id`, `account_id`). Outside requests, `log_context(job_id=...)` adds fields to every record logged
inside it. Fields passed explicitly with `extra=` win over the context's."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from hone_kernel.jsonlog import JsonFormatter

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request ids need to be unique, not secret: 128 bits from a generator seeded once from os.urandom (and again in
# a forked child) instead of uuid4, whose urandom read took ~20 us a request, a tenth of a /healthz.
_request_ids = random.Random()
os.register_at_fork(after_in_child=_request_ids.seed)


def new_request_id() -> str:
    return f"req_{_request_ids.getrandbits(128):032x}"


# Path parameters that name a resource, logged under their own names.
_PATH_IDS = ("job_id", "endpoint_id", "file_id", "model_id", "project_id", "account_id")
_SCOPE = "_scope"  # the request's ASGI scope, read when a record is logged (routing and auth fill it in later)

# A fresh dict per request (or `log_context` block): contexts copied into tasks and worker threads share it,
# so what is bound in a threadpool handler shows in the access line; other requests never see it.
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("hone_log_context", default=None)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Adds `fields` to every record logged inside the block (in this task or thread, and those it starts)."""
    context = {**(_context.get() or {}), **fields}
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Adds `fields` to the current context (the request's, inside one) for the rest of it. Outside any context
    it does nothing: a worker thread's context outlives its task, so fields set there would stick to the
    thread's later work; use `log_context` there."""
    current = _context.get()
    if current is not None:
        current.update(fields)


def scope_fields(scope: Mapping[str, Any]) -> dict[str, Any]:
    """What a request's scope says about it: its id, the ids its path names, the authenticated project."""
    fields: dict[str, Any] = {}
    state = scope.get("state") or {}
    if state.get("request_id"):
        fields["request_id"] = state["request_id"]
    params = scope.get("path_params") or {}
    fields.update({name: params[name] for name in _PATH_IDS if params.get(name)})
    if state.get("project_id"):
        fields["project_id"] = state["project_id"]
    return fields


def context_fields() -> dict[str, Any]:
    """The fields the current context adds to a record."""
    current = _context.get()
    if not current:
        return {}
    scope = current.get(_SCOPE)
    fields = scope_fields(scope) if scope is not None else {}
    fields.update((k, v) for k, v in current.items() if k != _SCOPE)
    return fields


class ContextFilter(logging.Filter):
    """Puts the context's fields on each record, unless the call passed them with `extra=`."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in context_fields().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # replaced by AccessLogMiddleware
    # httpx logs every request at INFO: engine health polls would drown the log (errors still surface).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # What no line of ours shows, and every record paid for: the caller's file and line (a walk up the stack), the
    # thread's and the process's names (the logging module's own switches): an access line took 30 us, now 24.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # "set to None to avoid ... fetching caller information"


class AccessLogMiddleware:
    """Pure ASGI, so streaming bodies pass through untouched. Sets the request's log context for everything
    inside it, and logs one line per request when it ends; `observers` (`observe(scope, status, seconds)`, e.g.
    service.http_metrics.HttpMetrics) see each request end too."""

    def __init__(self, app, observers: tuple = ()):
        self.app = app
        self.log = logging.getLogger("hone.access")
        self.observers = observers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        token = _context.set({_SCOPE: scope})  # a fresh context: nothing from an earlier request
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            try:
                for observer in self.observers:
                    observer.observe(scope, status, seconds)
                self.log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                        "project_id": scope["state"].get("project_id"),
                    },
                )
            finally:
                _context.reset(token)
