"""Executor backends run trainers: one small Protocol, the backend chosen from settings in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hone_kernel.trainer_contract import Resources
    from service.settings import Settings


@dataclass
class TrainerExit:
    job_id: str
    ref: str
    returncode: int | None  # None: the run vanished without an exit status (e.g. adopted after a restart)
    log: bytes | None  # what the trainer printed, uploaded to jobs/{id}/logs/
    # A failure no retry can mend ({"code", "message"}): the job fails at once with this error.
    error: dict | None = None


class Executor(Protocol):
    def slots(self) -> int: ...  # how many trainers may run at once (local: devices; Kubernetes: Jobs)
    # What a run of this size costs in slots (local: its devices; Kubernetes: one), and the slots still free
    def cost(self, resources: Resources) -> int: ...
    def free_slots(self) -> int: ...
    def running(self) -> dict[str, str]: ...  # job id -> ref of every run this executor tracks
    # Starts one attempt on `resources` (nodes x devices, one trainer process each) and returns the run's ref
    def launch(self, job_id: str, attempt: int, spec_url: str, resources: Resources) -> str: ...
    def stop(self, job_id: str, *, kill: bool) -> None: ...  # kill: now; else ask it to checkpoint and exit
    def reap(self) -> list[TrainerExit]: ...  # runs that ended since the last call
    # What a running trainer has printed so far (a multi-node run: rank 0); None when it cannot be read now
    def log_so_far(self, job_id: str) -> bytes | None: ...
    def adopt(self, job_id: str, ref: str) -> bool: ...  # after a restart: track a run that is still alive
    def owns(self, ref: str) -> bool: ...  # whether a ref names a run this executor could track
    def bind(self, ctx) -> None: ...  # the app's context, for executors that look jobs up (e.g. to label them)
    # (job id, level, message) a user can act on that is not an exit (no GPU free, an image that cannot be
    # pulled), each once; [] when there is nothing to say
    def events(self) -> list[tuple[str, str, str]]: ...


def open_executor(settings: Settings) -> Executor:
    if settings.training.executor == "local":
        from service.executors.local import LocalExecutor

        return LocalExecutor(settings)
    if settings.training.executor == "kubernetes":
        from service.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor(settings)
    raise ValueError(f"unknown executor {settings.training.executor!r} (HONE_EXECUTOR: local, kubernetes)")
