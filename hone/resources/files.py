"""`client.files`: upload training data, list, download and delete files (openai's `files` resource)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Union, cast

from openai import omit
from openai._base_client import AsyncPaginator  # what openai's async lists return: awaitable and async-iterable
from openai.pagination import AsyncCursorPage, SyncCursorPage
from openai.types.file_create_params import ExpiresAfter

from hone.resources import AsyncResource, SyncResource
from hone.types import FileDeleted, FileObject

FileInput = Union[str, "os.PathLike[str]", bytes, IO[bytes]]
ProgressCallback = Callable[[int, int], None]  # (bytes sent, total bytes)


class _CountingReader:
    """A file wrapper that reports how many bytes the upload has read so far.

    The multipart body is streamed from it; a retried upload seeks to the start, and counts from zero again."""

    def __init__(self, raw: IO[bytes], total: int, on_progress: ProgressCallback):
        self._raw, self._total, self._on_progress = raw, total, on_progress
        self._sent = 0
        self.name = getattr(raw, "name", "upload.jsonl")

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        self._sent += len(chunk)
        self._on_progress(self._sent, self._total)
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self._raw.seek(offset, whence)
        if whence == io.SEEK_SET:
            self._sent = position
        return position

    def tell(self) -> int:
        return self._raw.tell()


def _open(file: FileInput, filename: str | None) -> tuple[IO[bytes], str, bool]:
    """(readable binary stream, file name, whether we opened it and must close it)."""
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        return path.open("rb"), filename or path.name, True
    if isinstance(file, bytes):
        return io.BytesIO(file), filename or "upload.jsonl", False
    return file, filename or Path(getattr(file, "name", "upload.jsonl")).name, False


def _size(stream: IO[bytes]) -> int:
    position = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(position)
    return end - position


class _Upload:
    """One upload's arguments for openai's files.create: streamed from disk, never read into memory whole."""

    def __init__(
        self,
        file: FileInput,
        filename: str | None,
        expires_after_seconds: int | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.stream, self.name, self.owned = _open(file, filename)
        self.body: Any = _CountingReader(self.stream, _size(self.stream), on_progress) if on_progress else self.stream
        self.expires_after: ExpiresAfter | None = (
            {"anchor": "created_at", "seconds": expires_after_seconds} if expires_after_seconds is not None else None
        )

    def close(self) -> None:
        if self.owned:
            self.stream.close()


def _list_params(purpose: str | None, order: str, limit: int) -> dict[str, object]:
    return {"purpose": purpose, "order": order, "limit": limit}


class Files(SyncResource):
    def create(
        self,
        file: FileInput,
        purpose: str = "fine-tune",
        *,
        filename: str | None = None,
        expires_after_seconds: int | None = None,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        """Uploads a file (a path, bytes or a binary file object), streamed from disk: it is never read into
        memory whole. `on_progress(sent, total)` is called as the body goes out. A fine-tune file's answer carries
        the server's verdict (`status`, `dataset`)."""
        upload = _Upload(file, filename, expires_after_seconds, on_progress)
        try:
            raw = self._api.files.with_raw_response.create(
                file=(upload.name, upload.body, "application/octet-stream"),
                purpose=cast(Any, purpose),
                expires_after=upload.expires_after or omit,
                extra_headers=self._settings.headers(create=True, idempotency_key=idempotency_key),
            )
            return raw.parse(to=FileObject)
        finally:
            upload.close()

    def list(self, *, purpose: str | None = None, order: str = "desc", limit: int = 100) -> SyncCursorPage[FileObject]:
        """The project's files, newest first: iterating fetches the next page as needed (`.iter_pages()`)."""
        return self._api.get_api_list(
            "/files",
            page=SyncCursorPage[FileObject],
            model=FileObject,
            options=self._settings.options(params=_list_params(purpose, order, limit)),
        )

    def retrieve(self, file_id: str) -> FileObject:
        return self._api.files.with_raw_response.retrieve(file_id).parse(to=FileObject)

    def content(self, file_id: str) -> bytes:
        """The file's bytes, as stored (result files come base64-encoded, as OpenAI serves them)."""
        return self._api.files.content(file_id).content

    def delete(self, file_id: str) -> FileDeleted:
        return self._api.files.delete(file_id)


class AsyncFiles(AsyncResource):
    async def create(
        self,
        file: FileInput,
        purpose: str = "fine-tune",
        *,
        filename: str | None = None,
        expires_after_seconds: int | None = None,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        upload = _Upload(file, filename, expires_after_seconds, on_progress)
        try:
            raw = await self._api.files.with_raw_response.create(
                file=(upload.name, upload.body, "application/octet-stream"),
                purpose=cast(Any, purpose),
                expires_after=upload.expires_after or omit,
                extra_headers=self._settings.headers(create=True, idempotency_key=idempotency_key),
            )
            return raw.parse(to=FileObject)
        finally:
            upload.close()

    def list(
        self, *, purpose: str | None = None, order: str = "desc", limit: int = 100
    ) -> AsyncPaginator[FileObject, AsyncCursorPage[FileObject]]:
        return self._api.get_api_list(
            "/files",
            page=AsyncCursorPage[FileObject],
            model=FileObject,
            options=self._settings.options(params=_list_params(purpose, order, limit)),
        )

    async def retrieve(self, file_id: str) -> FileObject:
        return (await self._api.files.with_raw_response.retrieve(file_id)).parse(to=FileObject)

    async def content(self, file_id: str) -> bytes:
        return (await self._api.files.content(file_id)).content

    async def delete(self, file_id: str) -> FileDeleted:
        return await self._api.files.delete(file_id)
