"""Background loops with a clean start and stop, tied to the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from starlette.concurrency import run_in_threadpool

log = logging.getLogger("hone.loops")


class BackgroundLoop:
    """Runs a blocking `step` in a worker thread every `interval` seconds, or sooner when woken."""

    def __init__(self, name: str, step: Callable[[], object], interval: float):
        self.name, self._step, self._interval = name, step, interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"loop:{self.name}")

    def wake(self) -> None:
        """Safe from any thread: sync routes and loop steps run in worker threads."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task  # lets a step in progress finish its transaction

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await run_in_threadpool(self._step)
            except Exception:
                log.exception("background loop step failed", extra={"loop": self.name})
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()


class Loops:
    def __init__(self):
        self._loops: dict[str, BackgroundLoop] = {}

    def add(self, loop: BackgroundLoop) -> None:
        self._loops[loop.name] = loop

    def wake(self, name: str) -> None:
        loop = self._loops.get(name)
        if loop is not None:
            loop.wake()

    def start(self) -> None:
        for loop in self._loops.values():
            loop.start()

    async def stop(self) -> None:
        await asyncio.gather(*(loop.stop() for loop in self._loops.values()))
