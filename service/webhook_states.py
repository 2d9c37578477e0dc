"""The webhook delivery state machine: one enum, one table, one function that moves a delivery.

A delivery (one event for one endpoint) is `pending` until an attempt is answered 2xx (`delivered`) or Hone gives
up (`failed`: the attempts are used up, or the receiver answered a 4xx other than 408 and 429, or its address is
not allowed). A retriable failure keeps it `pending`, due again after the backoff. `move` is a compare-and-set on
the status and the due time the caller read (each attempt recorded changes it): two deliverers cannot both record
the same attempt."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db.tables import WebhookDelivery


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED})
S = DeliveryStatus
ALLOWED: dict[DeliveryStatus, frozenset[DeliveryStatus]] = {
    # pending -> pending: an attempt failed and another is due after the backoff
    S.PENDING: frozenset({S.PENDING, S.DELIVERED, S.FAILED}),
    S.DELIVERED: frozenset(),
    S.FAILED: frozenset(),
}


def entry_fields(target: DeliveryStatus, now: float, next_attempt_at: float | None) -> dict[str, Any]:
    """What entering `target` writes besides the status: when the next attempt is due, or when it ended."""
    if target in TERMINAL:
        return {"finished_at": int(now), "next_attempt_at": None}
    return {"next_attempt_at": next_attempt_at}


def move(
    session: Session,
    delivery_id: str,
    current: DeliveryStatus,
    target: DeliveryStatus,
    attempts: list[dict[str, Any]],
    *,
    due: float | None,
    now: float,
    next_attempt_at: float | None = None,
) -> bool:
    """Records an attempt: the delivery goes from `current` (due at `due`, as the caller read it) to `target` with
    `attempts` (the log, the new attempt last). False when someone else recorded an attempt or moved it first. A
    move the table forbids raises."""
    if target not in ALLOWED[current]:
        raise ValueError(f"a webhook delivery cannot move from {current.value} to {target.value}")
    if target is S.PENDING and next_attempt_at is None:
        raise ValueError("a pending delivery needs the time its next attempt is due")
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == current.value,
            WebhookDelivery.next_attempt_at.is_(None) if due is None else WebhookDelivery.next_attempt_at == due,
        )
        .values(status=target.value, attempts=attempts, **entry_fields(target, now, next_attempt_at))
    )
    return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
