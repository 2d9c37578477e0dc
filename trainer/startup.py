"""Where a trainer's start-up goes: the time from its process starting to its first training step, by phase.

`begin()` at the top of `main()`, `mark(phase)` as each phase ends; `durations_ms()` is what the run reports (the
plan event's `startup_ms`, and the "first training step" log line with `first_step` added). Operators read it to
tell a slow import from a slow model load or a slow first step; benchmarks/start_latency.py adds up the rest.

Module state, one clock per process: a trainer process runs one job. A warm-started trainer imports this module
in the warm interpreter, before its fork, so `begin()` resets the clock the preload left."""

from __future__ import annotations

import os
import time
from pathlib import Path

_marks: list[tuple[str, float]] = []


def process_started_at() -> float | None:
    """When this process started (a fork's or an exec's), in epoch seconds to the clock tick (10 ms), from
    Linux's /proc; None elsewhere."""
    try:
        # the fields after the command, which may hold spaces and parentheses; starttime is field 22 of stat(5),
        # in clock ticks since boot (on the boot-time clock, which counts suspended time too)
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, AttributeError):
        return None
    return time.time() - max(0.0, age)


def begin() -> None:
    """Starts the clock: `process` (interpreter start-up, or the fork, up to `main()`) is measured from the
    process's start, or is left out where that is unknown."""
    started, now = process_started_at(), time.time()
    _marks.clear()
    _marks.append(("start", started if started is not None else now))
    if started is not None:
        _marks.append(("process", now))


def mark(phase: str) -> None:
    """`phase` ended now (a phase marked twice, e.g. a validation file's tokenization after the training
    file's, adds up)."""
    if _marks:
        _marks.append((phase, time.time()))


def started_at() -> float | None:
    """The epoch second the clock counts from (the process's start where known)."""
    return _marks[0][1] if _marks else None


def durations_ms() -> dict[str, int]:
    """Each phase's milliseconds, in the order they ended, and `total` since the start."""
    out: dict[str, int] = {}
    for (_, before), (phase, at) in zip(_marks, _marks[1:]):
        out[phase] = out.get(phase, 0) + round((at - before) * 1000)
    if len(_marks) > 1:
        out["total"] = round((_marks[-1][1] - _marks[0][1]) * 1000)
    return out
