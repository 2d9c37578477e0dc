"""Any BlobStorage, timed: operation latency and failures go to hone_storage_* metrics.

Streams are timed to their end (a download's latency is its whole transfer); a missing key is an answer,
not an error."""

from __future__ import annotations

import time
from collections.abc import Iterator

from service.metrics import STORAGE_DURATION, STORAGE_ERRORS
from service.storage import BlobNotFound, BlobStorage

_TIMED = ("put_bytes", "read_bytes", "exists", "size", "delete", "delete_prefix", "list", "ping")


class _Timer:
    def __init__(self, backend: str, operation: str):
        self.backend, self.operation = backend, operation

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, kind, exc, _tb):
        STORAGE_DURATION.labels(self.backend, self.operation).observe(time.perf_counter() - self.start)
        if exc is not None and not isinstance(exc, (BlobNotFound, GeneratorExit)):
            STORAGE_ERRORS.labels(self.backend, self.operation).inc()


class _MeteredWriter:
    def __init__(self, inner, backend: str):
        self._inner, self._backend = inner, backend

    def write(self, data: bytes) -> None:
        with _Timer(self._backend, "write"):
            self._inner.write(data)

    def commit(self) -> int:
        with _Timer(self._backend, "commit"):
            return self._inner.commit()

    def abort(self) -> None:
        self._inner.abort()


class MeteredStorage:
    def __init__(self, inner: BlobStorage, backend: str):
        self._inner, self.backend = inner, backend
        for name in _TIMED:
            setattr(self, name, self._timed(name, getattr(inner, name)))

    def _timed(self, operation: str, call):
        def timed(*args, **kwargs):
            with _Timer(self.backend, operation):
                return call(*args, **kwargs)

        return timed

    def writer(self, key: str) -> _MeteredWriter:
        return _MeteredWriter(self._inner.writer(key), self.backend)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with _Timer(self.backend, "read_stream"):
            yield from self._inner.iter_chunks(key, chunk_size)

    def __getattr__(self, name):  # backend extras (e.g. S3Storage.full_key) pass through
        return getattr(self._inner, name)
