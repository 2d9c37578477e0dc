"""The one place that maps errors to an HTTP answer: typed API errors (service/errors.py), FastAPI's and Starlette's
own, and database or storage outages, each in the envelope its route's clients read: OpenAI's, or Google's
(google.rpc.Status) on the Vertex-compatible routes."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from hone_kernel.strict import without_union_tags
from service.errors import ApiError, ErrorCode, bounded, outage_code, param_from_loc
from service.logs import scope_fields
from service.storage import StorageUnavailable

log = logging.getLogger("hone.errors")

OUTAGE_RETRY_AFTER_S = "5"  # what a 503 for a database or storage outage tells clients to wait

# Routes under these paths are Vertex's shape, whose clients (google-genai) read `error.status` and `.message`; any
# API version, so that a Vertex-shaped URL of an unknown version is answered (404) in the envelope its route declares.
_GOOGLE_PATHS = re.compile(r"^/[^/]+/projects/")
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Hone's codes that Google names more precisely than by the HTTP status.
_GOOGLE_STATUS_BY_CODE = {"invalid_job_status": "FAILED_PRECONDITION"}
_TYPE = "type.googleapis.com/google.rpc."


def google_error(
    status: int, message: str, *, code: str | None = None, param: str | None = None, extra: dict[str, Any] | None = None
) -> dict:
    """Google's envelope: on a 400, `param` becomes a BadRequest field violation (one per bad dataset line when
    `extra` lists them, as dataset errors do); Hone's `code` becomes the ErrorInfo reason."""
    extra = extra or {}
    details: list[dict] = []
    if param and status == 400:
        lines = [e for e in extra.get("errors") or [] if isinstance(e, dict) and "line" in e]
        violations = [
            {"field": param, "description": f"line {e['line']}, field {e.get('field', '$')}: {e.get('message', '')}"}
            for e in lines
        ]
        details.append(
            {"@type": _TYPE + "BadRequest", "fieldViolations": violations or [{"field": param, "description": message}]}
        )
    if code:
        metadata = {k: str(v) for k, v in extra.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
        details.append(
            {"@type": _TYPE + "ErrorInfo", "reason": code.upper(), "domain": "hone.dev", "metadata": metadata}
        )
    return {
        "error": {
            "code": status,
            "message": message,
            "status": _GOOGLE_STATUS_BY_CODE.get(code or "") or _GOOGLE_STATUS.get(status, "UNKNOWN"),
            "details": details,
        }
    }


def _camel(path: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), path)


def _is_google(request: Request) -> bool:
    return bool(_GOOGLE_PATHS.match(request.url.path))


def _error(
    request: Request,
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    """An error without typed extras, in the envelope the route's clients expect."""
    if _is_google(request):
        return _response(request, status, google_error(status, message, code=code, param=param), headers)
    return _response(
        request, status, {"error": {"message": message, "type": error_type, "param": param, "code": code}}, headers
    )


def _response(request: Request, status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    response = JSONResponse(bounded(body), status_code=status, headers=headers)
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        response.headers["x-request-id"] = request_id
    return response


@functools.lru_cache(maxsize=256)
def _path_regex(template: str) -> re.Pattern:
    return compile_path(template)[0]


def _allowed_methods(request: Request) -> str:
    """The methods of the URL's resource: every route with the template of the first route whose path matches (the
    one Starlette's 405 names, alone: GET and DELETE of one URL are separate routes)."""
    path = request.scope.get("path", request.url.path)
    routes = [(r.path, r.methods) for r in iter_route_contexts(request.app.router.routes) if r.path and r.methods]
    template = next((t for t, _ in routes if _path_regex(t).match(path)), None)
    return ", ".join(sorted({m for t, methods in routes if t == template for m in methods}))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        if _is_google(request):
            body = google_error(exc.status_code, exc.message, code=exc.code, param=exc.param, extra=exc.extra)
            return _response(request, exc.status_code, body, headers=exc.headers)
        return _response(request, exc.status_code, exc.body(), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # FastAPI answers 422 {"detail": ...}; OpenAI clients expect 400 + envelope.
        errors = exc.errors()
        first = errors[0] if errors else {}
        kind, ctx = first.get("type", ""), first.get("ctx") or {}
        loc = tuple(first.get("loc", ()))
        if kind in ("unknown_field", "unsupported_field"):  # raised by the model that holds the key: name the key
            loc += (ctx.get("field"),)
        elif kind in ("union_tag_invalid", "union_tag_not_found"):  # a tagged union's tag: name it (`grader.type`)
            loc += (str(ctx.get("discriminator", "type")).strip("'"),)
        loc = without_union_tags(loc)
        param = param_from_loc(loc)
        if kind == "unknown_field":
            code = ErrorCode.UNKNOWN_PARAMETER
            message = f"Unrecognized request argument supplied: '{param}'{ctx.get('hint', '')}"
        elif kind == "unsupported_field":
            code = ErrorCode.UNSUPPORTED_PARAMETER
            message = f"'{param}' is not supported by Hone: {ctx.get('reason')}"
        elif kind == "missing":
            code, message = ErrorCode.MISSING_REQUIRED_PARAMETER, f"Missing required parameter: '{param}'."
        elif kind == "json_invalid":
            code, message = ErrorCode.INVALID_JSON, "We could not parse the JSON body of your request."
            param = None
        else:
            code = ErrorCode.INVALID_VALUE
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid value')}."
        if param and _is_google(request):  # Vertex's fields are camelCase, whichever spelling the request used
            message = message.replace(f"'{param}'", f"'{_camel(param)}'")
            param = _camel(param)
        return _error(request, 400, message, param=param, code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            code = ErrorCode.UNKNOWN_URL
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            code = ErrorCode.METHOD_NOT_ALLOWED
            return _error(request, 405, message, code=code, headers={"Allow": _allowed_methods(request)})
        else:
            message, code = str(exc.detail), None
        return _error(request, exc.status_code, message, code=code, headers=getattr(exc, "headers", None))

    def _outage(request: Request, exc: Exception, what: str, code: str) -> JSONResponse:
        # The store's or the database's outage, after their own retries: the client may try again; no traceback.
        log.warning(
            "%s unavailable",
            what,
            extra={"path": request.url.path, "error": str(exc).splitlines()[0][:500], **scope_fields(request.scope)},
        )
        return _error(
            request,
            503,
            f"The {what} is unavailable; try again shortly.",
            error_type="server_error",
            code=code,
            headers={"Retry-After": OUTAGE_RETRY_AFTER_S},
        )

    @app.exception_handler(StorageUnavailable)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def _unavailable(request: Request, exc: Exception):
        code = outage_code(exc)
        if code is None:  # a DBAPIError that is no outage: a bug, or a constraint the code did not expect
            return _server_error(request)
        return _outage(request, exc, code.split("_")[0], code)

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError):
        # PostgreSQL refuses what SQLite takes: a NUL character in any string compared or stored (a path id, a
        # query, a name), a string longer than its column. The request is at fault, not the server.
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else ""
        log.warning("request data refused by the database", extra={"path": request.url.path, "reason": reason[:200]})
        if "NUL" in reason:
            message = "Invalid value in the request: text must not contain NUL (\\u0000) characters."
        elif "too long" in reason:
            message = "Invalid value in the request: a value is longer than allowed."
        else:
            message = "Invalid value in the request."
        return _error(request, 400, message, code=ErrorCode.INVALID_VALUE)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return _server_error(request)

    def _server_error(request: Request) -> JSONResponse:
        # Runs outside the access-log middleware (Starlette handles Exception outermost): its context is gone.
        log.exception("unhandled error", extra={"path": request.url.path, **scope_fields(request.scope)})
        return _error(
            request,
            500,
            "The server had an error while processing your request.",
            error_type="server_error",
            code=ErrorCode.SERVER_ERROR,
        )
