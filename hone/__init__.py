"""Hone's client side: the SDK (`hone.Client`, `hone.AsyncClient`) and the `hone` command line.
Light dependencies only (httpx and pydantic; the CLI adds typer and rich).

    import hone
    client = hone.Client()                               # HONE_BASE_URL and HONE_API_KEY
    file = client.files.create("train.jsonl")
    job = client.jobs.create(model="hone-tiny", training_file=file.id)
    job = job.wait(on_progress=print)
    print(client.chat(job.fine_tuned_model, "Hello!").text)
"""

__version__ = "0.1.0"

from hone.client import AsyncClient, Client  # noqa: E402 (the client reads __version__)
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
