"""A job's trainer logs (Hone extension): what the trainer printed in one attempt, kept in storage under
jobs/{id}/logs/attempt-N.log (service/scheduler.py writes them: while the attempt runs, its log so far every
HONE_LIVE_LOG_INTERVAL_S; once it ended, the whole log). Read only, and only for the job's own project."""

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
    running: bool  # the job's current attempt, still running: `text` is its log so far


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
    running = status == JobStatus.RUNNING.value and number == attempts
    try:
        return TrainerLog(number, ctx.storage.read_bytes(f"jobs/{job_id}/logs/attempt-{number}.log"), running)
    except BlobNotFound:
        when = (
            f"a running trainer's log is copied every {ctx.settings.training.live_log_interval_s:g} s"
            if running and ctx.settings.training.live_log_interval_s > 0
            else "a trainer's log is kept once its attempt ended"
        )
        raise NotFound(
            f"No log of attempt {number} of job {job_id} yet: {when}.", param="attempt", code=ErrorCode.NOT_FOUND
        ) from None
