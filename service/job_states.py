"""The fine-tuning job state machine: one enum, one table of allowed transitions."""

from __future__ import annotations

from enum import Enum

from service.errors import ErrorCode, InvalidRequest


class JobStatus(str, Enum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset(JobStatus) - TERMINAL

S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.VALIDATING_FILES: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    # queued -> paused holds a job out of the queue (a Hone extension; OpenAI pauses running jobs only)
    S.QUEUED: frozenset({S.RUNNING, S.PAUSED, S.FAILED, S.CANCELLED}),
    # running -> queued: the trainer died and is retried from its last checkpoint
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PAUSED, S.QUEUED}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


def entry_fields(target: JobStatus, *, now: int, started_at: int | None) -> dict:
    """What entering `target` writes besides the status (a caller's own fields override these): the time it
    was queued, the time it first ran, and for an end state its finish time and no estimate left."""
    if target is S.QUEUED:
        return {"queued_at": now}
    if target is S.RUNNING:
        return {} if started_at else {"started_at": now}
    if target in TERMINAL:
        return {"finished_at": now, "estimated_finish": None}
    return {}


# The verb a user asked for, for error messages.
_VERBS = {S.CANCELLED: "cancel", S.PAUSED: "pause", S.QUEUED: "resume"}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in ALLOWED[current]


def check_transition(job_id: str, current: JobStatus, target: JobStatus) -> None:
    if not can_transition(current, target):
        verb = _VERBS.get(target, f"move to {target.value}")
        raise InvalidRequest(
            f"Cannot {verb} job {job_id}: its status is '{current.value}'.",
            param="fine_tuning_job_id",
            code=ErrorCode.INVALID_JOB_STATUS,
        )
