"""Blob storage on any S3-compatible store through boto3, with multipart uploads.

Every call retries (botocore's "standard" mode: 5xx, throttling, resets and timeouts, with backoff) up to
`max_attempts` in all, each attempt bounded by `timeout_s` to connect and per read, so a failing or stalled store
ends a call with `StorageUnavailable` in bounded time instead of a hang or a bare traceback."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError

from service.storage import BlobNotFound, StorageUnavailable

log = logging.getLogger("hone.storage")
PART_SIZE = 8 * 1024 * 1024  # S3 needs >= 5 MiB for every part but the last
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded"}


def bounded_client(endpoint_url: str | None, max_attempts: int, timeout_s: float, max_pool_connections: int = 10):
    """A boto3 S3 client whose every call retries (botocore's "standard" mode) up to `max_attempts` in all, each
    attempt bounded by `timeout_s` to connect and per read (HONE_S3_MAX_ATTEMPTS, HONE_S3_TIMEOUT_S).
    endpoint_url=None lets boto3 honour AWS_ENDPOINT_URL and the other AWS_* variables."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            max_pool_connections=max_pool_connections,
        ),
    )


# Clients are built once per store (a boto3 client takes tens of ms to make): for reads of objects outside Hone's
# own storage (dataset URIs, images named by reference), retries and timeouts bounded as Hone's storage bounds its own.
shared_client = functools.lru_cache(maxsize=4)(bounded_client)


def is_missing(err: ClientError) -> bool:
    """The error says the object (or its bucket) does not exist."""
    return err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """The store's own failures (5xx, throttling, connection errors, timeouts: what retries could not fix)
    become StorageUnavailable; answers about the request itself (a missing key, access denied) stay as they are."""
    try:
        yield
    except ClientError as err:
        meta, error = err.response.get("ResponseMetadata", {}), err.response.get("Error", {})
        status = meta.get("HTTPStatusCode") or 0
        if status < 500 and error.get("Code") not in _THROTTLED:
            raise
        attempts = meta.get("RetryAttempts", 0) + 1
        raise StorageUnavailable(
            f"storage unavailable: {what} failed after {attempts} attempt(s): {status} {error.get('Code', '')}".rstrip()
        ) from err
    except HTTPClientError as err:  # connection refused or reset, connect or read timeout
        raise StorageUnavailable(f"storage unavailable: {what} failed: {err}") from err


class _MultipartWriter:
    """Buffers at most one part in memory; small objects become a single PUT. Nothing is visible under the key
    until `commit()` returns: S3 shows a multipart upload only once it is completed, and a PUT whole or not at all."""

    def __init__(self, storage: S3Storage, key: str):
        self._s3, self._bucket, self._key = storage.client, storage.bucket, storage.full_key(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._size = 0
        self._committing = False  # a commit began and did not return: the object may exist

    def write(self, data: bytes) -> None:
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= PART_SIZE:
            self._upload_part(bytes(self._buffer[:PART_SIZE]))
            del self._buffer[:PART_SIZE]

    def _upload_part(self, body: bytes) -> None:
        if self._upload_id is None:
            with _unavailable(f"starting the upload of {self._key}"):
                self._upload_id = self._s3.create_multipart_upload(Bucket=self._bucket, Key=self._key)["UploadId"]
        number = len(self._parts) + 1
        with _unavailable(f"uploading part {number} of {self._key}"):
            resp = self._s3.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
            )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def commit(self) -> int:
        self._committing = True
        if self._upload_id is None:
            with _unavailable(f"writing {self._key}"):
                self._s3.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
            with _unavailable(f"completing the upload of {self._key}"):
                self._s3.complete_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
                )
            self._upload_id = None  # completed: nothing left for abort() to cancel
        self._committing = False
        self._buffer.clear()
        return self._size

    def abort(self) -> None:
        """Best effort, and never raises: it runs while another error is on its way to the caller. A commit that
        failed may still have landed (the reply was lost), so its object goes too; the key is this writer's own.
        A multipart upload S3 cannot cancel now is left to the bucket's AbortIncompleteMultipartUpload rule."""
        self._buffer.clear()
        try:
            if self._upload_id is not None:
                self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
                self._upload_id = None
            if self._committing:
                self._s3.delete_object(Bucket=self._bucket, Key=self._key)
                self._committing = False
        except (ClientError, HTTPClientError) as err:
            log.warning("could not clean up a failed upload", extra={"key": self._key, "error": str(err)})


class S3Storage:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 5,
        timeout_s: float = 30.0,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = bounded_client(endpoint_url, max_attempts, timeout_s, max_pool_connections=32)
        self._ensure_bucket()

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None, **options) -> S3Storage:
        parsed = urlparse(url)
        return cls(parsed.netloc, parsed.path, endpoint_url, **options)

    def _ensure_bucket(self) -> None:
        with _unavailable(f"checking bucket {self.bucket}"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as err:
                if not is_missing(err):
                    raise
                self.client.create_bucket(Bucket=self.bucket)

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def writer(self, key: str) -> _MultipartWriter:
        return _MultipartWriter(self, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        with _unavailable(f"writing {key}"):
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with _unavailable(f"reading {key}"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"]
            except ClientError as err:
                if is_missing(err):
                    raise BlobNotFound(key) from None
                raise
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def size(self, key: str) -> int:
        with _unavailable(f"looking up {key}"):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))["ContentLength"]
            except ClientError as err:
                if is_missing(err):
                    raise BlobNotFound(key) from None
                raise

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except BlobNotFound:
            return False

    def delete(self, key: str) -> None:
        with _unavailable(f"deleting {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        with _unavailable(f"deleting under {prefix}"):
            for start in range(0, len(keys), 1000):
                batch = [{"Key": self.full_key(k)} for k in keys[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        with _unavailable(f"listing {prefix}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                out.extend(self._strip(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(out)

    def ping(self) -> None:
        with _unavailable(f"checking bucket {self.bucket}"):
            self.client.head_bucket(Bucket=self.bucket)
