"""Hone's job status seen as Vertex's JobState: one table, plus the one case a status alone does not decide."""

from __future__ import annotations

from sqlalchemy import and_, exists, or_

from service.db.tables import Endpoint, Job
from service.endpoint_states import EndpointState
from service.job_states import JobStatus

S = JobStatus
# status -> (JobState, the v1beta1 TuningJobState sub-state while not ended)
JOB_STATES: dict[JobStatus, tuple[str, str | None]] = {
    S.VALIDATING_FILES: ("JOB_STATE_PENDING", "TUNING_JOB_STATE_PROCESSING_DATASET"),
    S.QUEUED: ("JOB_STATE_QUEUED", "TUNING_JOB_STATE_WAITING_FOR_CAPACITY"),
    S.RUNNING: ("JOB_STATE_RUNNING", "TUNING_JOB_STATE_TUNING"),
    S.PAUSED: ("JOB_STATE_PAUSED", None),
    S.SUCCEEDED: ("JOB_STATE_SUCCEEDED", None),
    S.FAILED: ("JOB_STATE_FAILED", None),
    S.CANCELLED: ("JOB_STATE_CANCELLED", None),
}
# A Vertex job ends once its tuned model is served, and clients call the endpoint as soon as it has succeeded;
# so a succeeded job whose endpoint is still deploying for the first time is RUNNING, post-processing.
POST_PROCESSING = ("JOB_STATE_RUNNING", "TUNING_JOB_STATE_POST_PROCESSING")

JOB_STATE_NUMBERS = {
    name: n
    for n, name in enumerate(
        (
            "JOB_STATE_UNSPECIFIED",
            "JOB_STATE_QUEUED",
            "JOB_STATE_PENDING",
            "JOB_STATE_RUNNING",
            "JOB_STATE_SUCCEEDED",
            "JOB_STATE_FAILED",
            "JOB_STATE_CANCELLING",
            "JOB_STATE_CANCELLED",
            "JOB_STATE_PAUSED",
            "JOB_STATE_EXPIRED",
            "JOB_STATE_UPDATING",
            "JOB_STATE_PARTIALLY_SUCCEEDED",
        )
    )
}


def first_deploy_pending(job: Job, endpoints: list[Endpoint]) -> bool:
    """Is the endpoint the job's success deployed (made in the same transaction) still deploying, never ready?
    (An endpoint someone creates later does not take an ended job back.)"""
    return any(
        ep.checkpoint_id is None
        and ep.state == EndpointState.DEPLOYING.value
        and ep.ready_at is None
        and job.finished_at is not None
        and ep.created_at <= job.finished_at
        for ep in endpoints
    )


def _first_deploy_pending_sql():
    return exists().where(
        Endpoint.job_id == Job.id,
        Endpoint.checkpoint_id.is_(None),
        Endpoint.state == EndpointState.DEPLOYING.value,
        Endpoint.ready_at.is_(None),
        Endpoint.created_at <= Job.finished_at,
    )


def vertex_state(job: Job, endpoints: list[Endpoint]) -> tuple[str, str | None]:
    """The job's JobState and sub-state, given the live endpoints of its model and checkpoints."""
    status = JobStatus(job.status)
    return POST_PROCESSING if status is S.SUCCEEDED and first_deploy_pending(job, endpoints) else JOB_STATES[status]


def state_condition(name: str):
    """The SQL condition for jobs whose Vertex state is `name`, matching vertex_state()."""
    statuses = [status.value for status, (state, _) in JOB_STATES.items() if state == name]
    condition = Job.status.in_(statuses)
    if name == "JOB_STATE_SUCCEEDED":
        return and_(condition, ~_first_deploy_pending_sql())
    if name == POST_PROCESSING[0]:
        return or_(condition, and_(Job.status == S.SUCCEEDED.value, _first_deploy_pending_sql()))
    return condition
