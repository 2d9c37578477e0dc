"""Background loops with a clean start and stop, tied to the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from service import metrics
from service.errors import outage_code

log = logging.getLogger("hone.loops")
STALE_AFTER_S = 60.0  # a loop with no successful step for this long (or 10 intervals) is unhealthy


class BackgroundLoop:
    """Runs a blocking `step` in a worker thread every `interval` seconds, or sooner when woken, but never
    sooner than `min_gap` seconds after the previous step started: wakes that come meanwhile (one per request
    that created work) are served by one step, in one batch."""

    def __init__(self, name: str, step: Callable[[], object], interval: float, min_gap: float = 0.0):
        self.name, self._step, self._interval, self._min_gap = name, step, interval, min_gap
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at: float | None = None
        self.last_success: float | None = None  # monotonic time of the last step that did not raise
        self._outage: str | None = None  # the database's or storage's outage the last step failed on

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.started_at = time.monotonic()
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
        due = time.monotonic()
        while not self._stopping:
            # When the step itself began, in its thread: a busy pool can start it well after the dispatch, and the
            # gap counts from what the step saw, not from when it was queued.
            started = await run_in_threadpool(self._timed_step, due)
            waited_from = time.monotonic()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
                due = time.monotonic()  # woken: due at once, or once the gap has passed
                gap = started + self._min_gap - due
                if gap > 0 and not self._stopping:
                    await asyncio.sleep(gap)
            except TimeoutError:
                due = waited_from + self._interval
            self._wake.clear()

    def _timed_step(self, due: float) -> float:
        """One step, with how late it started (a busy thread pool or event loop shows here), how long it took
        and whether it failed. Returns when it started."""
        started = time.monotonic()
        metrics.LOOP_LAG.labels(self.name).set(max(0.0, started - due))
        try:
            self._step()
            self.last_success = time.monotonic()
            metrics.LOOP_LAST_SUCCESS.labels(self.name).set(time.time())
            if self._outage is not None:
                log.info("background loop recovered", extra={"loop": self.name, "after": self._outage})
                self._outage = None
        except Exception as exc:
            metrics.LOOP_ERRORS.labels(self.name).inc()
            outage = outage_code(exc)
            if outage is None:
                log.exception("background loop step failed", extra={"loop": self.name})
            elif self._outage is None:  # once per outage, without a traceback: every step fails alike until it ends
                log.warning(
                    "background loop step failed; retrying each interval",
                    extra={"loop": self.name, "code": outage, "error": str(exc).splitlines()[0][:500]},
                )
            self._outage = outage
        finally:
            metrics.LOOP_DURATION.labels(self.name).observe(time.monotonic() - started)
        return started

    def health(self) -> str:
        """'ok' while steps succeed on time; else why not (for /readyz)."""
        if self._task is None:
            return "not started"
        if self._task.done():
            return "stopped"
        assert self.started_at is not None  # set when the task was made
        reference = self.last_success if self.last_success is not None else self.started_at
        overdue = time.monotonic() - reference
        if overdue > max(STALE_AFTER_S, 10 * self._interval):
            return f"no successful step for {overdue:.0f}s"
        return "ok"


class Loops:
    def __init__(self) -> None:
        self._loops: dict[str, BackgroundLoop] = {}
        self._started = False

    def add(self, loop: BackgroundLoop) -> None:
        """Adds a loop; it starts now if the others already have."""
        self._loops[loop.name] = loop
        if self._started:
            loop.start()

    def wake(self, name: str) -> None:
        loop = self._loops.get(name)
        if loop is not None:
            loop.wake()

    def get(self, name: str) -> BackgroundLoop | None:
        return self._loops.get(name)

    def start(self) -> None:
        self._started = True
        for loop in self._loops.values():
            loop.start()

    def health(self) -> dict[str, str]:
        return {name: loop.health() for name, loop in self._loops.items()}

    async def stop(self) -> None:
        await asyncio.gather(*(loop.stop() for loop in self._loops.values()))
