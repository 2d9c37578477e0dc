"""BackgroundLoop: woken loops run their step at once, but wakes within `min_gap` of a step share the next one."""

from __future__ import annotations

import asyncio
import time

from service.loops import BackgroundLoop


def _run(min_gap: float, wakes: int) -> list[float]:
    steps: list[float] = []

    async def main():
        loop = BackgroundLoop("test", lambda: steps.append(time.monotonic()), interval=60, min_gap=min_gap)
        loop.start()
        await asyncio.sleep(0.05)  # the first step, at start
        for _ in range(wakes):
            loop.wake()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)
        await loop.stop()

    asyncio.run(main())
    return steps


def test_without_a_gap_every_wake_is_a_step():
    assert len(_run(0.0, 10)) >= 9  # the first, and about one a wake (two wakes may land in one step)


def test_wakes_within_the_gap_are_served_by_one_step_after_it():
    steps = _run(0.3, 10)  # ten wakes within 0.1 s, right after the first step
    assert len(steps) == 2  # the first at start, and one for all ten wakes
    assert steps[1] - steps[0] >= 0.29  # not sooner than the gap after the step before
