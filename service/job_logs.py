"""A job's trainer logs (Hone extension): what the trainer printed in one attempt. service/scheduler.py keeps them
in storage: while the attempt runs, its log so far every HONE_LIVE_LOG_INTERVAL_S under `running_log_key`; once
the scheduler has reaped it, the whole log under `log_key` (and the copy goes). A job's status can say `succeeded`
before that (the trainer reports its end, then exits): only the whole log is `complete`. Read only, and only for the
job's own project."""

from __future__ import annotations

from dataclasses import dataclass

from service.auth import ProjectPrincipal
from service.context import AppContext
from service.errors import ErrorCode, NotFound
from service.job_states import JobStatus
from service.jobs import job_row
from service.storage import BlobNotFound


@dataclass(frozen=True)
class TrainerLog:
    attempt: int
    text: bytes
    complete: bool  # the whole log, kept once the attempt ended; else its log so far


def log_key(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/logs/attempt-{attempt}.log"


def running_log_key(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/logs/attempt-{attempt}.so-far.log"


def trainer_log(ctx: AppContext, principal: ProjectPrincipal, job_id: str, attempt: int | None) -> TrainerLog:
    """`attempt`'s log, or the job's latest. A job of another project, an attempt that never ran and a running
    one whose log was not copied yet are each a 404."""
    with ctx.db.read() as session:
        job = job_row(session, principal, job_id)  # 404 for another project's job, as every job route
        attempts, status = job.attempts, job.status
    number = attempt if attempt is not None else attempts
    if number < 1 or number > attempts:
        raise NotFound(
            f"Job {job_id} has no attempt {number}: its trainer ran {attempts} time(s).",
            param="attempt",
            code=ErrorCode.NOT_FOUND,
        )
    for key, complete in ((log_key(job_id, number), True), (running_log_key(job_id, number), False)):
        try:
            return TrainerLog(number, ctx.storage.read_bytes(key), complete)
        except BlobNotFound:
            pass
    running = status == JobStatus.RUNNING.value and number == attempts
    when = (
        f"a running trainer's log is copied every {ctx.settings.training.live_log_interval_s:g} s"
        if running and ctx.settings.training.live_log_interval_s > 0
        else "a trainer's log is kept once its attempt ended"
    )
    raise NotFound(
        f"No log of attempt {number} of job {job_id} yet: {when}.", param="attempt", code=ErrorCode.NOT_FOUND
    )
