"""Blob storage in a local folder. Writes go to a temp file and are renamed into place.

The blobs are every project's datasets and weights: folders are made 0700 and files 0600 (mkstemp's mode, kept
by the rename), whatever the process umask."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from service.storage import BlobNotFound


def _make_folders(path: Path) -> None:
    """`path` and its missing parents, each 0700 (mkdir's `mode` would cover only the last one)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


class _FileWriter:
    def __init__(self, final: Path):
        _make_folders(final.parent)
        self._final = final
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        self._size = 0

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._size += len(data)

    def commit(self) -> int:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._final)
        return self._size

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


class FilesystemStorage:
    def __init__(self, root: Path):
        self.root = root
        _make_folders(self.root)

    @classmethod
    def from_url(cls, url: str) -> FilesystemStorage:
        return cls(Path(unquote(urlparse(url).path)))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def writer(self, key: str) -> _FileWriter:
        return _FileWriter(self._path(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        w = self.writer(key)
        w.write(data)
        w.commit()

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        with fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)
        folder = self.root / prefix
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def list(self, prefix: str) -> list[str]:
        out = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"storage folder {self.root} is not writable")
