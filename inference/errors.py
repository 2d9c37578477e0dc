"""Errors as vLLM reports them: a nested envelope `{"error": {message, type, param, code}}`, HTTP status = code."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class APIError(Exception):
    """An error the server turns into vLLM's error envelope."""

    def __init__(self, status: int, type: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.param = status, type, message, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None) -> APIError:
    """vLLM's VLLMValidationError / ValueError from request checks."""
    return APIError(400, "BadRequestError", message, param)


def invalid_user_input(message: str) -> APIError:
    """The LoRA routes' input errors (`InvalidUserInput` in 0.33)."""
    return APIError(400, "InvalidUserInput", message)


def not_found(message: str, param: str | None = None) -> APIError:
    return APIError(404, "NotFoundError", message, param)


def internal(message: str) -> APIError:
    return APIError(500, "InternalServerError", message)


def validation_error(errors: list[Any]) -> APIError:
    """Pydantic/FastAPI validation errors: 400 "Bad Request" (never 422), message shaped like
    `str(RequestValidationError)`, `param` = the dotted location of the first error."""
    count = len(errors)
    message = f"{count} validation error{'s' if count != 1 else ''}:\n" + "\n".join(f"  {e}" for e in errors)
    param = None
    first = errors[0] if errors else None
    if isinstance(first, dict):
        named = getattr((first.get("ctx") or {}).get("error"), "param", None)  # a validator naming its field
        if named:
            param = named
        elif first.get("loc"):
            param = ".".join(str(part) for part in first["loc"])
    return APIError(400, "Bad Request", message, param)


UNSUPPORTED_MEDIA_TYPE = "Unsupported Media Type: Only 'application/json' is allowed"
