"""`client.jobs`: fine-tuning jobs, their events, checkpoints and metrics; waiting for and following a job."""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
from openai._base_client import AsyncPaginator  # what openai's async lists return: awaitable and async-iterable
from openai.pagination import AsyncCursorPage, SyncCursorPage

from hone.errors import WaitTimeoutError
from hone.progress import EventCursor, ProgressTracker, decode_result_file, step_metrics
from hone.resources import AsyncResource, ClientSettings, SyncResource
from hone.resources.files import AsyncFiles, Files
from hone.types import (
    Checkpoint,
    FineTuningJob,
    JobEvent,
    JobLog,
    JobProgress,
    JobStatus,
    JobUpdate,
    Preflight,
    StepMetrics,
)

JOBS = "/fine_tuning/jobs"
EVENTS_PAGE = 100
ProgressCallback = Callable[[JobProgress], None]


def job_body(
    model: str,
    training_file: str,
    *,
    validation_file: str | None,
    method: str | Mapping[str, object] | None,
    hyperparameters: Mapping[str, object] | None,
    suffix: str | None,
    seed: int | None,
    metadata: dict[str, str] | None,
    priority: int | None,
    auto_deploy: bool | None,
    extra: dict[str, object],
) -> dict[str, object]:
    """The create request. `method` is "supervised" or "dpo" (with `hyperparameters` for it), or OpenAI's full
    method object; Hone's own hyperparameters (lora_rank, tuning_mode, ...) go in `hyperparameters` too."""
    resolved: Mapping[str, object] | None
    if isinstance(method, Mapping):
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
    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + timeout

    def check(self, job: FineTuningJob) -> None:
        if self._at is not None and time.monotonic() >= self._at:
            raise WaitTimeoutError(f"Job {job.id} is still {job.status} after {self.timeout:g}s.", last=job)


def _list_params(
    limit: int, metadata: dict[str, str] | None, status: str | Sequence[str] | None, model: str | None
) -> dict[str, object]:
    params: dict[str, object] = {"limit": limit, "model": model}  # status and model: the server filters (Hone)
    statuses = [status] if isinstance(status, str) else list(status or ())
    if statuses:
        params["status"] = statuses  # sent as status[]=..., as the openai client sends lists
    return params | {f"metadata[{k}]": v for k, v in (metadata or {}).items()}


def _logs_params(attempt: int | None) -> dict[str, object]:
    return {"attempt": attempt}


def _job_log(response: httpx.Response) -> JobLog:
    headers = response.headers
    return JobLog(
        attempt=int(headers["x-hone-attempt"]),
        text=response.text,
        complete=headers.get("x-hone-log-complete") == "true",
    )


class _JobsBase:
    @staticmethod
    def _create_body(
        model: str,
        training_file: str,
        *,
        validation_file: str | None,
        method: str | Mapping[str, object] | None,
        hyperparameters: Mapping[str, object] | None,
        suffix: str | None,
        seed: int | None,
        metadata: dict[str, str] | None,
        priority: int | None,
        auto_deploy: bool | None,
        evaluation: Mapping[str, object] | None,
        extra: dict[str, object],
    ) -> dict[str, object]:
        """All but `model` and `training_file`, which openai's create takes itself: Hone's fields, its methods and
        hyperparameters ride in openai's `extra_body`."""
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
        return {k: v for k, v in body.items() if k not in ("model", "training_file")}


class Jobs(SyncResource, _JobsBase):
    """Fine-tuning jobs (openai's `fine_tuning.jobs`), and waiting for, watching and following one."""

    def __init__(self, api: Any, settings: ClientSettings, files: Files) -> None:
        super().__init__(api, settings)
        self._files = files

    def create(
        self,
        model: str,
        training_file: str,
        *,
        validation_file: str | None = None,
        method: str | Mapping[str, object] | None = None,
        hyperparameters: Mapping[str, object] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        auto_deploy: bool | None = None,
        evaluation: Mapping[str, object] | None = None,
        idempotency_key: str | None = None,
        **extra: object,
    ) -> FineTuningJob:
        """`method` is "supervised", "dpo", ... (with `hyperparameters` for it, Hone's own such as lora_rank
        included), or OpenAI's whole method object. `evaluation` (Hone): measure the tuned model against its base
        after training, e.g. `{}` for the defaults or `{"deploy_if_better": True}`. `extra` goes into the body."""
        body = self._create_body(
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
            evaluation=evaluation,
            extra=extra,
        )
        raw = self._api.fine_tuning.jobs.with_raw_response.create(
            model=model,
            training_file=training_file,
            extra_body=body,
            extra_headers=self._settings.headers(create=True, idempotency_key=idempotency_key),
        )
        return raw.parse(to=FineTuningJob)

    def preflight(
        self,
        model: str,
        training_file: str,
        *,
        validation_file: str | None = None,
        method: str | Mapping[str, object] | None = None,
        hyperparameters: Mapping[str, object] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        auto_deploy: bool | None = None,
        evaluation: Mapping[str, object] | None = None,
        **extra: object,
    ) -> Preflight:
        """Hone: what `create` with the same arguments would make, without making it: "auto" resolved, tokens and
        examples truncated, memory fit, a time estimate and the queue ahead. Refused as `create` would refuse it."""
        body = self._create_body(
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
            evaluation=evaluation,
            extra=extra,
        )
        return self._api.post(
            f"{JOBS}/preflight",
            body={"model": model, "training_file": training_file, **body},
            cast_to=Preflight,
            options=self._settings.options(),
        )

    def list(
        self,
        *,
        limit: int = 20,
        metadata: dict[str, str] | None = None,
        status: JobStatus | Sequence[JobStatus] | None = None,
        model: str | None = None,
    ) -> SyncCursorPage[FineTuningJob]:
        """Jobs, newest first (iterating fetches the next page as needed); `status` (one or several) and `model`
        narrow them on the server."""
        return self._api.get_api_list(
            JOBS,
            page=SyncCursorPage[FineTuningJob],
            model=FineTuningJob,
            options=self._settings.options(params=_list_params(limit, metadata, status, model)),
        )

    def retrieve(self, job_id: str) -> FineTuningJob:
        return self._api.fine_tuning.jobs.with_raw_response.retrieve(job_id).parse(to=FineTuningJob)

    def cancel(self, job_id: str) -> FineTuningJob:
        return self._api.fine_tuning.jobs.with_raw_response.cancel(job_id).parse(to=FineTuningJob)

    def pause(self, job_id: str) -> FineTuningJob:
        """Stops the job at a checkpoint (or holds it out of the queue) until `resume`."""
        return self._api.fine_tuning.jobs.with_raw_response.pause(job_id).parse(to=FineTuningJob)

    def resume(self, job_id: str) -> FineTuningJob:
        return self._api.fine_tuning.jobs.with_raw_response.resume(job_id).parse(to=FineTuningJob)

    def events(self, job_id: str, *, limit: int = EVENTS_PAGE) -> SyncCursorPage[JobEvent]:
        """The job's events, newest first."""
        return self._api.get_api_list(
            f"{JOBS}/{job_id}/events",
            page=SyncCursorPage[JobEvent],
            model=JobEvent,
            options=self._settings.options(params={"limit": limit}),
        )

    def checkpoints(self, job_id: str, *, limit: int = 100) -> SyncCursorPage[Checkpoint]:
        """The job's checkpoints, newest first (openai's `fine_tuning.jobs.checkpoints.list`)."""
        return self._api.fine_tuning.jobs.checkpoints.list(job_id, limit=limit)

    def logs(self, job_id: str, *, attempt: int | None = None) -> str:
        """Hone: what the trainer printed in one attempt (default the latest): while it runs, its log so far
        (copied every few seconds); once it ended, the whole log."""
        return self.log(job_id, attempt=attempt).text

    def log(self, job_id: str, *, attempt: int | None = None) -> JobLog:
        """As `logs`, with the attempt it is of and whether it is whole (the attempt has ended)."""
        response = self._api.get(
            f"{JOBS}/{job_id}/logs",
            cast_to=httpx.Response,
            options=self._settings.options(params=_logs_params(attempt)),
        )
        return _job_log(response)

    def metrics(self, job_id: str) -> builtins.list[StepMetrics]:
        """Each step's training metrics so far (from the job's metrics events), in step order."""
        return step_metrics(list(self.events(job_id, limit=1000)))

    def results(self, job_id: str) -> str:
        """The finished job's result file (per-step metrics) as CSV text."""
        return decode_result_file(self._files.content(_result_file(self.retrieve(job_id))))

    def _events_page(self, job_id: str, after: str | None) -> SyncCursorPage[JobEvent]:
        return self._api.get_api_list(
            f"{JOBS}/{job_id}/events",
            page=SyncCursorPage[JobEvent],
            model=JobEvent,
            options=self._settings.options(params={"limit": EVENTS_PAGE, "after": after}),
        )

    def _new_events(self, job_id: str, cursor: EventCursor) -> builtins.list[JobEvent]:
        page = self._events_page(job_id, None)
        while (after := cursor.feed(page.data, bool(page.has_more))) is not None:
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
            time.sleep(poll_interval)

    def follow(self, job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events as they arrive, oldest first, until it ends; metrics events carry `.metrics`."""
        for update in self.watch(job_id, poll_interval=poll_interval, timeout=timeout):
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
        job: FineTuningJob | None = None
        for update in self.watch(job_id, poll_interval=poll_interval, timeout=timeout, events=on_progress is not None):
            if on_progress is not None:
                on_progress(update.progress)
            job = update.job
        assert job is not None  # watch yields at least once
        return job


class AsyncJobs(AsyncResource, _JobsBase):
    def __init__(self, api: Any, settings: ClientSettings, files: AsyncFiles) -> None:
        super().__init__(api, settings)
        self._files = files

    async def create(
        self,
        model: str,
        training_file: str,
        *,
        validation_file: str | None = None,
        method: str | Mapping[str, object] | None = None,
        hyperparameters: Mapping[str, object] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        auto_deploy: bool | None = None,
        evaluation: Mapping[str, object] | None = None,
        idempotency_key: str | None = None,
        **extra: object,
    ) -> FineTuningJob:
        body = self._create_body(
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
            evaluation=evaluation,
            extra=extra,
        )
        raw = await self._api.fine_tuning.jobs.with_raw_response.create(
            model=model,
            training_file=training_file,
            extra_body=body,
            extra_headers=self._settings.headers(create=True, idempotency_key=idempotency_key),
        )
        return raw.parse(to=FineTuningJob)

    def list(
        self,
        *,
        limit: int = 20,
        metadata: dict[str, str] | None = None,
        status: JobStatus | Sequence[JobStatus] | None = None,
        model: str | None = None,
    ) -> AsyncPaginator[FineTuningJob, AsyncCursorPage[FineTuningJob]]:
        return self._api.get_api_list(
            JOBS,
            page=AsyncCursorPage[FineTuningJob],
            model=FineTuningJob,
            options=self._settings.options(params=_list_params(limit, metadata, status, model)),
        )

    async def retrieve(self, job_id: str) -> FineTuningJob:
        return (await self._api.fine_tuning.jobs.with_raw_response.retrieve(job_id)).parse(to=FineTuningJob)

    async def cancel(self, job_id: str) -> FineTuningJob:
        return (await self._api.fine_tuning.jobs.with_raw_response.cancel(job_id)).parse(to=FineTuningJob)

    async def pause(self, job_id: str) -> FineTuningJob:
        return (await self._api.fine_tuning.jobs.with_raw_response.pause(job_id)).parse(to=FineTuningJob)

    async def resume(self, job_id: str) -> FineTuningJob:
        return (await self._api.fine_tuning.jobs.with_raw_response.resume(job_id)).parse(to=FineTuningJob)

    def events(self, job_id: str, *, limit: int = EVENTS_PAGE) -> AsyncPaginator[JobEvent, AsyncCursorPage[JobEvent]]:
        return self._api.get_api_list(
            f"{JOBS}/{job_id}/events",
            page=AsyncCursorPage[JobEvent],
            model=JobEvent,
            options=self._settings.options(params={"limit": limit}),
        )

    def checkpoints(self, job_id: str, *, limit: int = 100) -> AsyncPaginator[Checkpoint, AsyncCursorPage[Checkpoint]]:
        return self._api.fine_tuning.jobs.checkpoints.list(job_id, limit=limit)

    async def logs(self, job_id: str, *, attempt: int | None = None) -> str:
        return (await self.log(job_id, attempt=attempt)).text

    async def log(self, job_id: str, *, attempt: int | None = None) -> JobLog:
        response = await self._api.get(
            f"{JOBS}/{job_id}/logs",
            cast_to=httpx.Response,
            options=self._settings.options(params=_logs_params(attempt)),
        )
        return _job_log(response)

    async def metrics(self, job_id: str) -> builtins.list[StepMetrics]:
        return step_metrics([event async for event in self.events(job_id, limit=1000)])

    async def results(self, job_id: str) -> str:
        return decode_result_file(await self._files.content(_result_file(await self.retrieve(job_id))))

    async def _events_page(self, job_id: str, after: str | None) -> AsyncCursorPage[JobEvent]:
        return await self._api.get_api_list(
            f"{JOBS}/{job_id}/events",
            page=AsyncCursorPage[JobEvent],
            model=JobEvent,
            options=self._settings.options(params={"limit": EVENTS_PAGE, "after": after}),
        )

    async def _new_events(self, job_id: str, cursor: EventCursor) -> builtins.list[JobEvent]:
        page = await self._events_page(job_id, None)
        while (after := cursor.feed(page.data, bool(page.has_more))) is not None:
            page = await self._events_page(job_id, after)
        return cursor.take()

    async def watch(
        self, job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None, events: bool = True
    ) -> AsyncIterator[JobUpdate]:
        import asyncio  # here, not at the top: `hone` commands never need it

        deadline, cursor, tracker = _Deadline(timeout), EventCursor(), ProgressTracker()
        while True:
            job = await self.retrieve(job_id)
            yield tracker.update(job, await self._new_events(job_id, cursor) if events else [])
            if job.done:
                return
            deadline.check(job)
            await asyncio.sleep(poll_interval)

    async def follow(
        self, job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None
    ) -> AsyncIterator[JobEvent]:
        async for update in self.watch(job_id, poll_interval=poll_interval, timeout=timeout):
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
        job: FineTuningJob | None = None
        async for update in self.watch(
            job_id, poll_interval=poll_interval, timeout=timeout, events=on_progress is not None
        ):
            if on_progress is not None:
                on_progress(update.progress)
            job = update.job
        assert job is not None
        return job
