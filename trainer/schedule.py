"""The learning-rate schedule: linear warmup, then cosine, linear or no decay, as a factor of the peak rate.

A pure function of the step, so LambdaLR's state (just the step) resumes it exactly."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant")
MIN_FACTOR = 0.1  # cosine and linear decay end at 10% of the peak rate rather than 0: the last steps still learn


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """At least one warmup step whenever a ratio is asked for: the first update is then never the largest."""
    return max(1, round(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "linear":
        return MIN_FACTOR + (1 - MIN_FACTOR) * (1 - progress)
    if schedule == "cosine":
        return MIN_FACTOR + (1 - MIN_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {SCHEDULES}")
