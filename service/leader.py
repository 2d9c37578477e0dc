"""Which server process runs the background loops.

With several workers on one machine, only one may schedule trainers and run engines: each worker tries an
exclusive lock on a file in the data dir, the holder leads, the others serve requests and retry the lock,
so a leader that dies is replaced within seconds (the kernel drops a dead process's lock)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LeaderLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
