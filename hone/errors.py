"""The SDK's exceptions. They mirror the API's errors: one class per HTTP status the server answers with,
each carrying the fields of its error envelope `{"error": {"message", "type", "param", "code"}}`.

    HoneError
    ├── APIError                      anything that went wrong talking to the API
    │   ├── APIStatusError            the server answered with an error status
    │   │   ├── BadRequestError           400 (and UnprocessableEntityError, 422)
    │   │   ├── AuthenticationError       401
    │   │   ├── PermissionDeniedError     403
    │   │   ├── NotFoundError             404
    │   │   ├── ConflictError             409
    │   │   ├── PayloadTooLargeError      413
    │   │   ├── RateLimitError            429
    │   │   └── InternalServerError       5xx
    │   └── APIConnectionError        no answer: refused, reset, DNS (and APITimeoutError)
    └── WaitTimeoutError              a wait ran past its timeout (also a TimeoutError)
"""

from __future__ import annotations

from typing import Any


class HoneError(Exception):
    """Base class of every error the SDK raises."""


class APIError(HoneError):
    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ):
        super().__init__(message)
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.request_id = request_id
        self.body = body


class APIStatusError(APIError):
    status_code: int = 0

    def __init__(self, message: str, *, status_code: int, **fields: Any):
        super().__init__(message, **fields)
        self.status_code = status_code

    def __str__(self) -> str:
        return f"{self.status_code} {self.code or self.type or 'error'}: {self.message}"


class BadRequestError(APIStatusError):
    status_code = 400


class UnprocessableEntityError(BadRequestError):
    status_code = 422


class AuthenticationError(APIStatusError):
    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    status_code = 404


class ConflictError(APIStatusError):
    status_code = 409


class PayloadTooLargeError(APIStatusError):
    status_code = 413


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    status_code = 500


class APIConnectionError(APIError):
    def __init__(self, message: str = "Could not connect to the Hone API.", **fields: Any):
        super().__init__(message, **fields)


class APITimeoutError(APIConnectionError):
    def __init__(self, message: str = "The request to the Hone API timed out.", **fields: Any):
        super().__init__(message, **fields)


class WaitTimeoutError(HoneError, TimeoutError):
    """`wait()` gave up: the awaited object is still where it was. `last` holds what was seen last."""

    def __init__(self, message: str, last: Any = None):
        super().__init__(message)
        self.last = last


_BY_STATUS: dict[int, type[APIStatusError]] = {
    cls.status_code: cls
    for cls in (
        BadRequestError,
        UnprocessableEntityError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        RateLimitError,
    )
}


def status_error(status_code: int, body: Any, request_id: str | None = None) -> APIStatusError:
    """The exception for an error response, from its status and (parsed) body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": body if isinstance(body, str) and body else f"HTTP {status_code}"}
    cls: type[APIStatusError]
    if status_code >= 500:
        cls = InternalServerError
    else:
        cls = _BY_STATUS.get(status_code, APIStatusError)
    return cls(
        str(error.get("message") or f"HTTP {status_code}"),
        status_code=status_code,
        type=error.get("type"),
        param=error.get("param"),
        code=error.get("code"),
        request_id=request_id,
        body=body,
    )


def from_openai(exc: Exception) -> HoneError | None:
    """Hone's exception for one the openai client raised (None for one that is not about the API): the SDK's
    resources call openai's, and raise Hone's errors, as they always have."""
    import openai  # loaded already: only the openai client raises these

    if isinstance(exc, openai.APIStatusError):
        response = exc.response
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return status_error(response.status_code, body, response.headers.get("x-request-id"))
    if isinstance(exc, openai.APITimeoutError):
        return APITimeoutError(f"Request to {exc.request.url} timed out.")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return APIConnectionError(f"Could not reach {exc.request.url.copy_with(path='/', query=None)}: {cause}")
    if isinstance(exc, openai.APIError):  # an error event in a stream that began well
        body = exc.body if isinstance(exc.body, dict) else {}
        return APIError(exc.message, type=exc.type, param=exc.param, code=exc.code, body=body)
    return None
