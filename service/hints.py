"""How the domain says what changed, so background work happens now instead of at its next poll.

Domain services call `ctx.hinter` after they commit (a job created, a job to stop, a model to deploy, routes that
changed); they never reach into the web app. The app injects a hinter that wakes its loops and drops the
gateway's cached routes; anything else (tests, tools) gets one that does nothing, and the loops still poll.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class Loop(StrEnum):
    """The background loops (service/app.py), by the names their health and metrics use."""

    VALIDATION = "validation"  # validating_files -> queued
    SCHEDULER = "scheduler"  # claims queued jobs, stops and reaps trainers
    ENDPOINTS = "endpoints"  # the deployer: engines match endpoints
    FILE_EXPIRY = "file-expiry"
    USAGE = "usage"  # the gateway's usage book flushed to the database
    EVALS = "evals"  # eval runs: queued ones started, canceled or deleted ones stopped
    WEBHOOKS = "webhooks"  # due webhook deliveries sent (service/webhooks.py)
    LEADERSHIP = "leadership"  # a standby worker waiting to take the loops over


class Hinter(Protocol):
    def wake(self, loop: Loop) -> None:
        """Runs `loop`'s next step now; safe from any thread."""

    def routes_changed(self, project_id: str) -> None:
        """The project's models or endpoints changed: cached gateway routes to them are stale."""


class NullHinter:
    def wake(self, loop: Loop) -> None:
        pass

    def routes_changed(self, project_id: str) -> None:
        pass


class AppHinter:
    """The web app's hinter: its loops (only the worker that runs them wakes anything) and its gateway."""

    def __init__(self, loops, gateway):
        self._loops, self._gateway = loops, gateway

    def wake(self, loop: Loop) -> None:
        self._loops.wake(loop)

    def routes_changed(self, project_id: str) -> None:
        self._gateway.forget(project_id)
