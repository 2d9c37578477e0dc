"""`client.files`: upload training data, list, download and delete files."""

from __future__ import annotations

import inspect
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Union

from hone.resources import Resource
from hone.types import Deleted, FileObject

FileInput = Union[str, "os.PathLike[str]", bytes, IO[bytes]]
ProgressCallback = Callable[[int, int], None]  # (bytes sent, total bytes)


class _CountingReader:
    """A file wrapper that reports how many bytes the upload has read so far.

    httpx seeks to the start before it streams a multipart body, so a retried upload counts from zero again."""

    def __init__(self, raw: IO[bytes], total: int, on_progress: ProgressCallback):
        self._raw, self._total, self._on_progress = raw, total, on_progress
        self._sent = 0

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


class Files(Resource):
    def create(
        self,
        file: FileInput,
        purpose: str = "fine-tune",
        *,
        filename: str | None = None,
        expires_after_seconds: int | None = None,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Uploads a file (a path, bytes or a binary file object), streamed from disk: it is never read into
        memory whole. `on_progress(sent, total)` is called as the body goes out."""
        stream, name, owned = _open(file, filename)
        body: _CountingReader | IO[bytes] = (
            _CountingReader(stream, _size(stream), on_progress) if on_progress else stream
        )
        data = {"purpose": purpose}
        if expires_after_seconds is not None:
            data |= {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(expires_after_seconds)}
        try:
            result = self._create(
                "/v1/files",
                multipart=lambda: ({"file": (name, body, "application/octet-stream")}, data),
                cast=FileObject,
                idempotency_key=idempotency_key,
            )
        except BaseException:
            if owned:
                stream.close()
            raise
        if owned and inspect.isawaitable(result):
            return _closing_after(result, stream)  # AsyncClient: the upload happens when awaited
        if owned:
            stream.close()
        return result

    def list(self, *, purpose: str | None = None, order: str = "desc", limit: int = 100):
        return self._list("/v1/files", FileObject, {"purpose": purpose, "order": order, "limit": limit})

    def retrieve(self, file_id: str):
        return self._request("GET", f"/v1/files/{file_id}", cast=FileObject)

    def content(self, file_id: str):
        """The file's bytes, as stored (result files come base64-encoded, as OpenAI serves them)."""
        return self._request("GET", f"/v1/files/{file_id}/content", cast=bytes)

    def delete(self, file_id: str):
        return self._request("DELETE", f"/v1/files/{file_id}", cast=Deleted)


async def _closing_after(pending: Any, stream: IO[bytes]) -> Any:
    try:
        return await pending
    finally:
        stream.close()
