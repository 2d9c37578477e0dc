"""`client.jobs`: fine-tuning jobs, their events, checkpoints and metrics; waiting for and following a job."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from hone.errors import WaitTimeoutError
from hone.progress import EventCursor, ProgressTracker, decode_result_file, step_metrics
from hone.resources import Resource
from hone.types import Checkpoint, FineTuningJob, JobEvent, JobProgress, JobUpdate, Page, StepMetrics

JOBS = "/v1/fine_tuning/jobs"
EVENTS_PAGE = 100
ProgressCallback = Callable[[JobProgress], None]


def job_body(
    model: str,
    training_file: str,
    *,
    validation_file: str | None,
    method: str | dict | None,
    hyperparameters: dict | None,
    suffix: str | None,
    seed: int | None,
    metadata: dict | None,
    priority: int | None,
    auto_deploy: bool | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The create request. `method` is "supervised" or "dpo" (with `hyperparameters` for it), or OpenAI's full
    method object; Hone's own hyperparameters (lora_rank, tuning_mode, ...) go in `hyperparameters` too."""
    if isinstance(method, dict):
        resolved = method
    elif method or hyperparameters:
        kind = method or "supervised"
        resolved = {"type": kind, kind: {"hyperparameters": dict(hyperparameters or {})}}
    else:
        resolved = None
    body = {
        "model": model,
        "training_file": training_file,
        "validation_file": validation_file,
        "method": resolved,
        "suffix": suffix,
        "seed": seed,
        "metadata": metadata,
        "priority": priority,
        "auto_deploy": auto_deploy,
    }
    return {k: v for k, v in body.items() if v is not None} | extra


def _result_file(job: FineTuningJob) -> str:
    if not job.result_files:
        raise ValueError(f"Job {job.id} has no result file (it is {job.status}).")
    return job.result_files[0]


class _Deadline:
    def __init__(self, timeout: float | None):
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + timeout

    def check(self, job: FineTuningJob) -> None:
        if self._at is not None and time.monotonic() >= self._at:
            raise WaitTimeoutError(f"Job {job.id} is still {job.status} after {self.timeout:g}s.", last=job)


class Jobs(Resource):
    def create(
        self,
        model: str,
        training_file: str,
        *,
        validation_file: str | None = None,
        method: str | dict | None = None,
        hyperparameters: dict | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        auto_deploy: bool | None = None,
        evaluation: dict | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ):
        """`evaluation` (Hone): measure the tuned model against its base after training, e.g. `{}` for the
        defaults (the validation file or a 10% held-out slice, exact match), or `{"deploy_if_better": True}`."""
        if evaluation is not None:
            extra = {**extra, "evaluation": evaluation}
        body = job_body(
            model,
            training_file,
            validation_file=validation_file,
            method=method,
            hyperparameters=hyperparameters,
            suffix=suffix,
            seed=seed,
            metadata=metadata,
            priority=priority,
            auto_deploy=auto_deploy,
            extra=extra,
        )
        return self._create(JOBS, json=body, cast=FineTuningJob, idempotency_key=idempotency_key)

    def list(self, *, limit: int = 20, metadata: dict[str, str] | None = None):
        """Jobs, newest first."""
        params: dict[str, Any] = {"limit": limit}
        params |= {f"metadata[{k}]": v for k, v in (metadata or {}).items()}
        return self._list(JOBS, FineTuningJob, params)

    def retrieve(self, job_id: str):
        return self._request("GET", f"{JOBS}/{job_id}", cast=FineTuningJob)

    def cancel(self, job_id: str):
        return self._request("POST", f"{JOBS}/{job_id}/cancel", cast=FineTuningJob)

    def pause(self, job_id: str):
        """Stops the job at a checkpoint (or holds it out of the queue) until `resume`."""
        return self._request("POST", f"{JOBS}/{job_id}/pause", cast=FineTuningJob)

    def resume(self, job_id: str):
        return self._request("POST", f"{JOBS}/{job_id}/resume", cast=FineTuningJob)

    def events(self, job_id: str, *, limit: int = EVENTS_PAGE):
        """The job's events, newest first."""
        return self._list(f"{JOBS}/{job_id}/events", JobEvent, {"limit": limit})

    def checkpoints(self, job_id: str, *, limit: int = 100):
        return self._list(f"{JOBS}/{job_id}/checkpoints", Checkpoint, {"limit": limit})

    def _events_page(self, job_id: str, after: str | None):
        return self._request(
            "GET", f"{JOBS}/{job_id}/events", params={"limit": EVENTS_PAGE, "after": after}, cast=Page[JobEvent]
        )


class SyncJobs(Jobs):
    def metrics(self, job_id: str) -> list[StepMetrics]:
        """Each step's training metrics so far (from the job's metrics events), in step order."""
        return step_metrics(list(self.events(job_id, limit=1000)))

    def results(self, job_id: str) -> str:
        """The finished job's result file (per-step metrics) as CSV text."""
        return decode_result_file(self._client.files.content(_result_file(self.retrieve(job_id))))

    def _new_events(self, job_id: str, cursor: EventCursor) -> list[JobEvent]:
        page = self._events_page(job_id, None)
        while (after := cursor.feed(page)) is not None:
            page = self._events_page(job_id, after)
        return cursor.take()

    def watch(
        self, job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None, events: bool = True
    ) -> Iterator[JobUpdate]:
        """Looks at the job every `poll_interval` seconds until it ends: each look yields the job, the events new
        since the last look (all of them the first time) and its progress. Raises WaitTimeoutError after
        `timeout` seconds."""
        deadline, cursor, tracker = _Deadline(timeout), EventCursor(), ProgressTracker()
        while True:
            job = self.retrieve(job_id)
            yield tracker.update(job, self._new_events(job_id, cursor) if events else [])
            if job.done:
                return
            deadline.check(job)
            self._client._sleep(poll_interval)

    def follow(self, job_id: str, **watch: Any) -> Iterator[JobEvent]:
        """The job's events as they arrive, oldest first, until it ends; metrics events carry `.metrics`."""
        for update in self.watch(job_id, **watch):
            yield from update.events

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        on_progress: ProgressCallback | None = None,
    ) -> FineTuningJob:
        """Blocks until the job has ended and returns it (check `.status`); `on_progress(JobProgress)` is
        called at each look. Raises WaitTimeoutError after `timeout` seconds."""
        for update in self.watch(job_id, poll_interval=poll_interval, timeout=timeout, events=on_progress is not None):
            if on_progress is not None:
                on_progress(update.progress)
        return update.job


class AsyncJobs(Jobs):
    async def metrics(self, job_id: str) -> list[StepMetrics]:
        return step_metrics(await self.events(job_id, limit=1000).to_list())

    async def results(self, job_id: str) -> str:
        return decode_result_file(await self._client.files.content(_result_file(await self.retrieve(job_id))))

    async def _new_events(self, job_id: str, cursor: EventCursor) -> list[JobEvent]:
        page = await self._events_page(job_id, None)
        while (after := cursor.feed(page)) is not None:
            page = await self._events_page(job_id, after)
        return cursor.take()

    async def watch(
        self, job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None, events: bool = True
    ) -> AsyncIterator[JobUpdate]:
        deadline, cursor, tracker = _Deadline(timeout), EventCursor(), ProgressTracker()
        while True:
            job = await self.retrieve(job_id)
            yield tracker.update(job, await self._new_events(job_id, cursor) if events else [])
            if job.done:
                return
            deadline.check(job)
            await self._client._sleep(poll_interval)

    async def follow(self, job_id: str, **watch: Any) -> AsyncIterator[JobEvent]:
        async for update in self.watch(job_id, **watch):
            for event in update.events:
                yield event

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        on_progress: ProgressCallback | None = None,
    ) -> FineTuningJob:
        async for update in self.watch(
            job_id, poll_interval=poll_interval, timeout=timeout, events=on_progress is not None
        ):
            if on_progress is not None:
                on_progress(update.progress)
        return update.job
