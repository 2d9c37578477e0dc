"""Hone's client side: the SDK (`hone.Client`, `hone.AsyncClient`) and the `hone` command line.
Light dependencies only (httpx and pydantic; the CLI adds typer and rich).

    import hone
    client = hone.Client()                               # HONE_BASE_URL and HONE_API_KEY
    file = client.files.create("train.jsonl")
    job = client.jobs.create("hone-tiny", file.id)
    job = client.jobs.wait(job.id, on_progress=print)
    print(client.chat(job.fine_tuned_model, "Hello!").text)

The clients are built on the `openai` client (`client.openai`), which is imported when a client is first named:
`hone --version`, `hone completion` and `hone files validate` never load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hone.client import AsyncClient, Client

from hone.errors import (  # noqa: E402
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    HoneError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    WaitTimeoutError,
)

__all__ = [
    "AsyncClient",
    "Client",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "HoneError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnprocessableEntityError",
    "WaitTimeoutError",
]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient", "types"):
        import importlib

        module = importlib.import_module("hone.types" if name == "types" else "hone.client")
        return module if name == "types" else getattr(module, name)
    raise AttributeError(f"module 'hone' has no attribute {name!r}")
