"""Watching a job, without I/O: which events are new, and where the job stands (step, epoch, losses,
throughput, ETA). The clients fetch; these decide what the fetched pages mean."""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections import deque

from hone.types import FineTuningJob, JobEvent, JobProgress, JobUpdate, StepMetrics

THROUGHPUT_WINDOW_S = 30.0


class EventCursor:
    """Turns the events list (newest first) into the events not seen yet, oldest first.

    page = first page; while (after := cursor.feed(page.data, page.has_more)): page = the page after `after`
    new_events = cursor.take()
    """

    def __init__(self) -> None:
        self._seen_id: str | None = None
        self._pending: list[JobEvent] = []

    def feed(self, events: list[JobEvent], has_more: bool) -> str | None:
        """Takes a page's events; returns the cursor of the next page to fetch, or None once caught up."""
        for event in events:
            if event.id == self._seen_id:
                return None
            self._pending.append(event)
        return events[-1].id if has_more and events else None

    def take(self) -> list[JobEvent]:
        events, self._pending = self._pending[::-1], []
        if events:
            self._seen_id = events[-1].id
        return events


class ProgressTracker:
    """Keeps the latest step metrics and recent token counts of one job across looks at it."""

    def __init__(self) -> None:
        self.metrics: StepMetrics | None = None
        self.valid_loss: float | None = None
        self._tokens: deque[tuple[float, int]] = deque()  # (monotonic time, trained tokens) when they changed

    def update(self, job: FineTuningJob, events: list[JobEvent]) -> JobUpdate:
        for event in events:
            if (metrics := event.metrics) is not None:
                self.metrics = metrics
                if metrics.valid_loss is not None:
                    self.valid_loss = metrics.valid_loss
        self._sample_tokens(job.trained_tokens)
        return JobUpdate(job=job, events=events, progress=self._progress(job))

    def _sample_tokens(self, trained_tokens: int | None) -> None:
        if trained_tokens is None or (self._tokens and self._tokens[-1][1] == trained_tokens):
            return
        now = time.monotonic()
        self._tokens.append((now, trained_tokens))
        while len(self._tokens) > 2 and now - self._tokens[0][0] > THROUGHPUT_WINDOW_S:
            self._tokens.popleft()

    def _tokens_per_second(self) -> float | None:
        """Measured here, from the job's trained-token count between looks (the trainer reports it live)."""
        if len(self._tokens) < 2:
            return None
        (t0, n0), (t1, n1) = self._tokens[0], self._tokens[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 and n1 >= n0 else None

    def _progress(self, job: FineTuningJob) -> JobProgress:
        m = self.metrics
        step, total = (m.step, m.total_steps) if m else (None, None)
        n_epochs = job.hyperparameters.n_epochs if isinstance(job.hyperparameters.n_epochs, int) else None
        epoch = None
        if step and total and n_epochs:
            epoch = min(n_epochs, math.ceil(step / (total / n_epochs)))
        eta = None
        if job.status == "running" and job.estimated_finish:
            eta = max(0.0, job.estimated_finish - time.time())
        elif job.status == "succeeded":
            eta = 0.0
        running = job.status == "running"
        return JobProgress(
            status=job.status,
            step=step,
            total_steps=total,
            epoch=epoch,
            n_epochs=n_epochs,
            train_loss=m.train_loss if m else None,
            valid_loss=self.valid_loss,
            trained_tokens=job.trained_tokens,
            tokens_per_second=self._tokens_per_second() if running else None,
            eta_seconds=eta,
            queue_position=job.queue_position,
        )


def step_metrics(events_newest_first: list[JobEvent]) -> list[StepMetrics]:
    """Each step's metrics once (a resumed trainer may report a step again), in step order."""
    by_step: dict[int, StepMetrics] = {}
    for event in reversed(events_newest_first):
        if (metrics := event.metrics) is not None:
            by_step[metrics.step] = metrics
    return [by_step[step] for step in sorted(by_step)]


def decode_result_file(raw: bytes) -> str:
    """A result CSV as text. Hone, like OpenAI, serves it base64-encoded unless told not to: a CSV is never
    valid base64 (commas, newlines), so whichever arrived decodes right."""
    try:
        raw = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        pass
    return raw.decode("utf-8")
