"""Typed API errors, the error codes (one enum), and the rules for quoting input in them. The one place that maps
them to an envelope (OpenAI's, or Google's on the Vertex-compatible routes) is service/api/error_envelope.py."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.storage import StorageUnavailable


class ErrorCode(StrEnum):
    """Every error code Hone answers with, on both API surfaces (OpenAI's `error.code`, Google's ErrorInfo
    `reason` in capitals) and in a job's or endpoint's `error`."""

    ADAPTER_LOAD_FAILED = "adapter_load_failed"
    ADMIN_KEY_NOT_ALLOWED = "admin_key_not_allowed"
    BASE_MODEL_NOT_EDITABLE = "base_model_not_editable"
    CONCURRENT_UPDATE = "concurrent_update"
    DATABASE_UNAVAILABLE = "database_unavailable"
    DATASET_NOT_FOUND = "dataset_not_found"
    DATASET_UNREADABLE = "dataset_unreadable"
    DEPLOY_ERROR = "deploy_error"
    DUPLICATE_KEY = "duplicate_key"
    ENDPOINT_ERROR = "endpoint_error"
    ENDPOINT_FAILED = "endpoint_failed"
    ENDPOINT_UNREACHABLE = "endpoint_unreachable"
    ENGINE_RESTARTED = "engine_restarted"
    ENGINE_START_FAILED = "engine_start_failed"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    FILE_IN_USE = "file_in_use"
    FILE_TOO_LARGE = "file_too_large"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IMAGE_PULL_FAILED = "image_pull_failed"
    INCOMPLETE_UPLOAD = "incomplete_upload"
    INVALID_ADAPTER = "invalid_adapter"
    INVALID_API_KEY = "invalid_api_key"
    INVALID_ARCHIVE = "invalid_archive"
    INVALID_CONTENT_TYPE = "invalid_content_type"
    INVALID_CURSOR = "invalid_cursor"
    INVALID_DATASET = "invalid_dataset"
    INVALID_DATASET_URI = "invalid_dataset_uri"
    INVALID_EVAL_DATA = "invalid_eval_data"
    INVALID_FILE_FORMAT = "invalid_file_format"
    INVALID_FILENAME = "invalid_filename"
    INVALID_FILTER = "invalid_filter"
    INVALID_JOB = "invalid_job"
    INVALID_JOB_STATUS = "invalid_job_status"
    INVALID_JSON = "invalid_json"
    INVALID_LOCATION = "invalid_location"
    INVALID_MULTIPART = "invalid_multipart"
    INVALID_N_EXAMPLES = "invalid_n_examples"
    INVALID_PAGE_TOKEN = "invalid_page_token"
    INVALID_ROLE = "invalid_role"
    INVALID_RUN_STATUS = "invalid_run_status"
    INVALID_STORAGE_KEY = "invalid_storage_key"
    INVALID_STRING = "invalid_string"
    INVALID_TRAINER_TOKEN = "invalid_trainer_token"
    INVALID_TRAINING_FILE = "invalid_training_file"
    INVALID_TUNING_SPEC = "invalid_tuning_spec"
    INVALID_VALIDATION_FILE = "invalid_validation_file"
    INVALID_VALUE = "invalid_value"
    JOB_NOT_RUNNING = "job_not_running"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    MISSING_API_KEY = "missing_api_key"
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
    MODEL_DELETED = "model_deleted"
    MODEL_DEPLOYING = "model_deploying"
    MODEL_NOT_AVAILABLE = "model_not_available"
    MODEL_NOT_DELETABLE = "model_not_deletable"
    MODEL_NOT_DEPLOYED = "model_not_deployed"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_UNSHARED = "model_unshared"
    NO_GPU_CAPACITY = "no_gpu_capacity"
    NOT_FOUND = "not_found"
    OWN_STORAGE = "own_storage"
    PARITY_CHECK_FAILED = "parity_check_failed"
    PROJECT_ARCHIVED = "project_archived"
    PROJECT_NOT_FOUND = "project_not_found"
    REQUEST_TOO_LARGE = "request_too_large"
    SERVER_ERROR = "server_error"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    TRAINER_FAILED = "trainer_failed"
    TRAINER_STALLED = "trainer_stalled"
    UNKNOWN_PARAMETER = "unknown_parameter"
    UNKNOWN_URL = "unknown_url"
    UNSERVABLE_ADAPTER = "unservable_adapter"
    UNSUPPORTED_HYPERPARAMETER = "unsupported_hyperparameter"
    UNSUPPORTED_METHOD = "unsupported_method"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    UNSUPPORTED_MEDIA = "unsupported_media"
    UNSUPPORTED_PART = "unsupported_part"
    UNSUPPORTED_TUNING_SPEC = "unsupported_tuning_spec"
    WAKING = "waking"
    WEIGHTS_NOT_FOUND = "weights_not_found"


# Characters an error never echoes as they are: C0/C1 controls, line and paragraph separators, lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
EXCERPT_CHARS = 64  # what an error may quote of one value from a request
NAME_CHARS = 200  # of a model name or id, which is longer than that when valid (ft:{base}:{project}:{suffix}:{job})
_MESSAGE_CHARS, _PARAM_CHARS = 2000, 128  # the envelope's own bounds, whatever a message was built from


def _escape(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """What an error may quote of a value from a request: its first `limit` characters, escaped, and an
    ellipsis when there was more."""
    text = str(value)
    return _escape(text[:limit]) + ("…" if len(text) > limit else "")


def bounded(value: Any, limit: int = _MESSAGE_CHARS) -> Any:
    """Every string of an error body escaped and cut to its bound: a message built from a long input (a 1 MiB
    metadata key, a 100 kB id in a path) never comes back whole."""
    if isinstance(value, str):
        return excerpt(value, limit)
    if isinstance(value, dict):
        return {k: bounded(v, _PARAM_CHARS if k in ("param", "field") else limit) for k, v in value.items()}
    if isinstance(value, list):
        return [bounded(v, limit) for v in value]
    return value


class ApiError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.extra = extra or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
                **self.extra,
            }
        }


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


def outage_code(exc: BaseException) -> str | None:
    """`database_unavailable` or `storage_unavailable` when `exc` is the database's or the store's outage
    (refused or cut connections, timeouts, 5xx after retries), which passes and is answered 503; else None."""
    if isinstance(exc, StorageUnavailable):
        return ErrorCode.STORAGE_UNAVAILABLE
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return ErrorCode.DATABASE_UNAVAILABLE
    return None


def param_from_loc(loc: tuple) -> str | None:
    parts = [excerpt(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out
