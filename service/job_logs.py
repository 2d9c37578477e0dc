"""A job's trainer logs (Hone extension): what the trainer printed in one attempt, kept in storage under
jobs/{id}/logs/attempt-N.log once the attempt ended (service/scheduler.py writes them). Read only, and only for
the job's own project."""

from __future__ import annotations

from service.auth import ProjectPrincipal
from service.context import AppContext
from service.errors import ErrorCode, NotFound
from service.jobs import job_row
from service.storage import BlobNotFound


def trainer_log(ctx: AppContext, principal: ProjectPrincipal, job_id: str, attempt: int | None) -> tuple[int, bytes]:
    """(the attempt, its log): `attempt` or the job's latest. A job of another project, an attempt that never
    ran and one whose log is not kept yet (still running) are each a 404."""
    with ctx.db.read() as session:
        job = job_row(session, principal, job_id)  # 404 for another project's job, as every job route
        attempts = job.attempts
    number = attempt if attempt is not None else attempts
    if number < 1 or number > attempts:
        raise NotFound(
            f"Job {job_id} has no attempt {number}: its trainer ran {attempts} time(s).",
            param="attempt",
            code=ErrorCode.NOT_FOUND,
        )
    try:
        return number, ctx.storage.read_bytes(f"jobs/{job_id}/logs/attempt-{number}.log")
    except BlobNotFound:
        raise NotFound(
            f"No log of attempt {number} of job {job_id} yet: a trainer's log is kept once its attempt ended.",
            param="attempt",
            code=ErrorCode.NOT_FOUND,
        ) from None
