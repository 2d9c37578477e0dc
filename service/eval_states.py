"""The eval run state machine (OpenAI's statuses): one enum, one table, one function that moves a run.

`move` is a compare-and-set: it changes a run only from the status the caller saw, so a cancel and the runner's
completion of the same run cannot both win."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from service import webhooks
from service.db.tables import EvalRun
from service.errors import ErrorCode, InvalidRequest


class RunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED})
S = RunStatus
ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    S.QUEUED: frozenset({S.IN_PROGRESS, S.CANCELED}),
    # A run whose process stopped stays in_progress: the next leader resumes it from its graded items.
    S.IN_PROGRESS: frozenset({S.COMPLETED, S.FAILED, S.CANCELED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELED: frozenset(),
}


def entry_fields(target: RunStatus, now: int) -> dict[str, Any]:
    """What entering `target` writes besides the status."""
    return {"finished_at": now} if target in TERMINAL else {}


def move(session: Session, run_id: str, current: RunStatus, target: RunStatus, now: int, **fields: Any) -> bool:
    """Moves the run from `current` to `target` (with the target's entry fields and `fields`); False when its
    status was no longer `current` (someone else moved it first). A move the table forbids raises."""
    if target not in ALLOWED[current]:
        raise InvalidRequest(
            f"Cannot {'cancel' if target is S.CANCELED else f'move to {target.value}'} eval run {run_id}: "
            f"its status is '{current.value}'.",
            param="run_id",
            code=ErrorCode.INVALID_RUN_STATUS,
        )
    values = {"status": target.value, "updated_at": now, **entry_fields(target, now), **fields}
    stmt = update(EvalRun).where(EvalRun.id == run_id, EvalRun.status == current.value).values(**values)
    if target.terminal:  # the webhook event commits with the status it reports (the outbox: service/webhooks.py)
        project_id = session.execute(stmt.returning(EvalRun.project_id)).scalar()
        if project_id is not None:
            webhooks.enqueue(session, project_id, webhooks.RUN_EVENTS[target.value], run_id, now)
        return project_id is not None
    return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
