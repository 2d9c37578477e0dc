"""Blob storage: one small Protocol, backends chosen from the storage URL's scheme."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol
from urllib.parse import urlparse


class BlobWriter(Protocol):
    """Streams one object. Nothing is visible under the key until `commit()`."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> int: ...  # returns the object's size
    def abort(self) -> None: ...


class BlobStorage(Protocol):
    def writer(self, key: str) -> BlobWriter: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...
    def read_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def ping(self) -> None: ...


class BlobNotFound(KeyError):
    pass


class StorageUnavailable(Exception):
    """The store failed or did not answer, after the backend's own retries: the API answers 503
    (`storage_unavailable`), and the caller may try again later."""


def open_storage(
    url: str, *, s3_endpoint_url: str | None = None, s3_max_attempts: int = 5, s3_timeout_s: float = 30.0
) -> BlobStorage:
    scheme = urlparse(url).scheme
    if scheme == "file":
        from service.storage.filesystem import FilesystemStorage

        return FilesystemStorage.from_url(url)
    if scheme == "s3":
        from service.storage.s3 import S3Storage

        return S3Storage.from_url(
            url, endpoint_url=s3_endpoint_url, max_attempts=s3_max_attempts, timeout_s=s3_timeout_s
        )
    raise ValueError(f"unsupported storage URL scheme {scheme!r} in {url!r} (use file:// or s3://)")
