"""Typed API errors and the one place that maps them to OpenAI's error envelope."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.logs import scope_fields

log = logging.getLogger("hone.errors")


class ApiError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.extra = extra or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code, **self.extra}}


class InvalidRequest(ApiError):
    """400: the request is malformed or asks for something not allowed."""


class AuthenticationFailed(ApiError):
    status_code = 401


class PermissionDenied(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class PayloadTooLarge(ApiError):
    status_code = 413


class ServiceUnavailable(ApiError):
    status_code = 503
    error_type = "server_error"


class BadGateway(ApiError):
    status_code = 502
    error_type = "server_error"


def _response(request: Request, status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    response = JSONResponse(body, status_code=status, headers=headers)
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        response.headers["x-request-id"] = request_id
    return response


def _param_from_loc(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _response(request, exc.status_code, exc.body(), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # FastAPI answers 422 {"detail": ...}; OpenAI clients expect 400 + envelope.
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _param_from_loc(tuple(first.get("loc", ())))
        kind = first.get("type", "")
        if kind == "missing":
            code, message = "missing_required_parameter", f"Missing required parameter: '{param}'."
        elif kind == "json_invalid":
            code, message = "invalid_json", "We could not parse the JSON body of your request."
            param = None
        else:
            code = "invalid_value"
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid value')}."
        return _response(request, 400, {"error": {"message": message, "type": "invalid_request_error",
                                                  "param": param, "code": code}})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            code = "unknown_url"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return _response(request, exc.status_code, {"error": {"message": message, "type": "invalid_request_error",
                                                              "param": None, "code": code}},
                         headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # Runs outside the access-log middleware (Starlette handles Exception outermost): its context is gone.
        log.exception("unhandled error", extra={"path": request.url.path, **scope_fields(request.scope)})
        return _response(request, 500, {"error": {"message": "The server had an error while processing your request.",
                                                  "type": "server_error", "param": None, "code": "server_error"}})
