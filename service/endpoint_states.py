"""The endpoint state machine: one enum, one table of allowed transitions."""

from __future__ import annotations

from enum import Enum


class EndpointState(str, Enum):
    DEPLOYING = "deploying"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    IDLE = "idle"  # scaled to zero after its idle timeout: no engine; the next request wakes it


E = EndpointState
ALLOWED: dict[EndpointState, frozenset[EndpointState]] = {
    E.DEPLOYING: frozenset({E.READY, E.FAILED, E.STOPPED}),
    # ready -> deploying: its engine died and is being restarted
    E.READY: frozenset({E.DEPLOYING, E.FAILED, E.STOPPED, E.IDLE}),
    # failed -> deploying: the user asked again (POST /v1/endpoints for the same model)
    E.FAILED: frozenset({E.DEPLOYING, E.STOPPED}),
    E.STOPPED: frozenset(),
    # idle -> deploying: a request (or POST /v1/endpoints for the model) woke it
    E.IDLE: frozenset({E.DEPLOYING, E.STOPPED}),
}
LIVE = frozenset({E.DEPLOYING, E.READY})


def can_transition(current: EndpointState, target: EndpointState) -> bool:
    return target in ALLOWED[current]


def entry_fields(target: EndpointState, *, now: int) -> dict:
    """What entering `target` writes besides the state (a caller's own fields override these)."""
    fields: dict = {"updated_at": now}
    if target is E.READY:
        fields |= {"ready_at": now, "error": None, "failed_attempts": 0}
    else:
        fields["ready_replicas"] = 0  # none serves it outside `ready` (the deployer counts them while ready)
    if target in (E.DEPLOYING, E.IDLE):
        fields |= {"url": None, "urls": None}  # no engine answers for it until it is ready again
    return fields
