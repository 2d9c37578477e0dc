"""The trainer's view of blob storage: file:// folders and s3:// buckets, keyed like the control plane's.

Kept separate from `service.storage` on purpose: the trainer runs in its own image and imports nothing
from the control plane; the two agree only on URLs and key layout (see docs/architecture.md, storage layout)."""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from hone_kernel.dataset_lines import dataset_lines

CHUNK_BYTES = 1 << 20


class Blobs(abc.ABC):
    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes: ...
    @abc.abstractmethod
    def iter_chunks(self, key: str) -> Iterator[bytes]: ...
    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...
    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...
    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """A dataset's lines, cut by the rule validation used (hone_kernel.dataset_lines) whatever the backend."""
        return dataset_lines(self.iter_chunks(key))

    def upload_dir(self, local: Path, prefix: str, *, last: str | None = None) -> None:
        """Uploads every file under `local`; `last` (a file name) goes up after the rest, as a commit marker."""
        files = sorted(p for p in Path(local).rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == last)
        for path in files:
            self.put_file(prefix + path.relative_to(local).as_posix(), path)

    def download_prefix(self, prefix: str, local: Path) -> None:
        for key in self.list(prefix):
            target = Path(local) / key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(key))


class FolderBlobs(Blobs):
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} escapes the storage root")
        return path

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix.endswith("/") else (self.root / prefix).parent
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith(".tmp-"))


class StorageError(OSError):
    """A storage call failed after the S3 client's own retries; the attempt ends (ExitCode.STORAGE) and is retried."""


@contextlib.contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError, S3UploadFailedError) as err:
        raise StorageError(f"storage failed {what}: {err}") from err


class S3Blobs(Blobs):
    def __init__(
        self, bucket: str, prefix: str, endpoint_url: str | None, *, max_attempts: int = 5, timeout_s: float = 30.0
    ):
        import boto3
        from botocore.config import Config

        # Bounded like the control plane's (HONE_S3_MAX_ATTEMPTS, HONE_S3_TIMEOUT_S): retries with backoff on 5xx,
        # throttling, resets and timeouts, and no attempt waits on a stalled store for longer than the timeout.
        config = Config(
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self.bucket, self.prefix = bucket, prefix

    def read_bytes(self, key: str) -> bytes:
        with _storage_errors(f"reading {key}"):
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        with _storage_errors(f"reading {key}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]
            yield from body.iter_chunks(CHUNK_BYTES)

    def put_file(self, key: str, path: Path) -> None:
        # Objects appear whole or not at all: one PUT, or a multipart upload that boto3 aborts when it fails.
        with _storage_errors(f"writing {key}"):
            self.client.upload_file(str(path), self.bucket, self.prefix + key)

    def put_bytes(self, key: str, data: bytes) -> None:
        with _storage_errors(f"writing {key}"):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with _storage_errors(f"listing {prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            ):
                keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        return sorted(keys)


def open_blobs(
    url: str, s3_endpoint_url: str | None = None, *, s3_max_attempts: int = 5, s3_timeout_s: float = 30.0
) -> Blobs:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FolderBlobs(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        prefix = parsed.path.lstrip("/")
        return S3Blobs(
            parsed.netloc,
            prefix + "/" if prefix and not prefix.endswith("/") else prefix,
            s3_endpoint_url,
            max_attempts=s3_max_attempts,
            timeout_s=s3_timeout_s,
        )
    raise ValueError(f"unsupported storage URL {url!r} (use file:// or s3://)")


def split_url(url: str) -> tuple[str, str]:
    """Splits a full object URL into (storage root URL, key) at `/jobs/`, the layout's job folder."""
    head, sep, tail = url.rpartition("/jobs/")
    if not sep:
        raise ValueError(f"spec URL {url!r} is not under a jobs/ folder")
    return head, "jobs/" + tail
