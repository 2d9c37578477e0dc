"""Every (from, to) pair of the job, endpoint and eval run state machines, walked through the one transition function each
against a real database (SQLite, in-process): a pair in the table moves and writes the target state's entry
fields (and, for jobs, an event); a pair outside it is refused and changes nothing; and a move that lost a race
to another session (compare-and-set on the state read) changes nothing either."""

from __future__ import annotations

import itertools
import time

import pytest
from sqlalchemy import select, update

from service import endpoints, eval_states, jobs, projects
from service.context import AppContext
from service.db.tables import Endpoint, Eval, EvalRun, Job, JobEvent
from service.endpoint_states import ALLOWED as ENDPOINT_ALLOWED
from service.endpoint_states import EndpointState
from service.errors import InvalidRequest
from service.eval_states import ALLOWED as RUN_ALLOWED
from service.eval_states import RunStatus
from service.job_states import ALLOWED as JOB_ALLOWED
from service.job_states import TERMINAL, JobStatus
from service.settings import Settings

ERROR = {"code": "test_failure", "message": "failed on purpose", "param": None}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    data = tmp_path_factory.mktemp("state-machines")
    context = AppContext.build(Settings(data_dir=data, storage_url=(data / "blobs").as_uri()))
    context.project_id = projects.create_project(context, "state machines")["id"]
    return context


def _job(ctx, status: JobStatus) -> str:
    job_id = f"ftjob-{status.value[:4]}{time.monotonic_ns()}"
    with ctx.db.write() as session:
        session.add(
            Job(
                id=job_id,
                project_id=ctx.project_id,
                model="hone-tiny",
                base_model="hone-tiny",
                status=status.value,
                created_at=1,
                training_file="file-x",
                method={"type": "supervised"},
                seed=1,
                result_files=[],
                started_at=None if status is JobStatus.VALIDATING_FILES else 5,
            )
        )
    return job_id


@pytest.mark.parametrize("current, target", list(itertools.product(JobStatus, JobStatus)), ids=lambda s: s.value)
def test_every_job_pair(ctx, current, target):
    job_id = _job(ctx, current)
    allowed = target in JOB_ALLOWED[current]
    fields = {"error": ERROR} if target is JobStatus.FAILED else {}
    with ctx.db.write() as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        if allowed:
            jobs.transition(session, job, target, f"to {target.value}", **fields)
        else:
            with pytest.raises(InvalidRequest) as refused:
                jobs.transition(session, job, target, f"to {target.value}", **fields)
            assert refused.value.code == "invalid_job_status" and f"'{current.value}'" in refused.value.message
    with ctx.db.read() as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        events = session.execute(select(JobEvent.message).where(JobEvent.job_id == job_id)).scalars().all()
    if not allowed:
        assert job.status == current.value and events == [] and job.finished_at is None
        return
    assert job.status == target.value and events == [f"to {target.value}"]
    assert (job.finished_at is not None) == (target in TERMINAL)
    if target in TERMINAL:
        assert job.estimated_finish is None
    if target is JobStatus.QUEUED:
        assert job.queued_at is not None
    if target is JobStatus.RUNNING:
        assert job.started_at is not None
        assert job.started_at == 5 or current is JobStatus.VALIDATING_FILES  # the first start is kept
    if target is JobStatus.FAILED:
        assert job.error == ERROR


def test_a_job_cannot_fail_without_an_error(ctx):
    job_id = _job(ctx, JobStatus.RUNNING)
    with ctx.db.write() as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        with pytest.raises(ValueError):
            jobs.transition(session, job, JobStatus.FAILED, "no error given")


def test_a_job_move_that_lost_a_race_changes_nothing(ctx):
    job_id = _job(ctx, JobStatus.RUNNING)
    with ctx.db.write() as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()  # read as running
        # Another writer (a cancel) got there first; on SQLite the same connection stands in for it.
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED.value))
        with pytest.raises(InvalidRequest) as refused:
            jobs.transition(session, job, JobStatus.SUCCEEDED, "the trainer finished")
        assert refused.value.code == "invalid_job_status" and "'cancelled'" in refused.value.message
    with ctx.db.read() as session:
        assert session.execute(select(Job.status).where(Job.id == job_id)).scalar_one() == "cancelled"
        assert session.execute(select(JobEvent).where(JobEvent.job_id == job_id)).first() is None


def _endpoint(ctx, state: EndpointState) -> int:
    with ctx.db.write() as session:
        ep = Endpoint(
            id=f"ep-{time.monotonic_ns()}",
            project_id=ctx.project_id,
            model="ft:x",
            kind="adapter",
            base_model="hone-tiny",
            state=state.value,
            restarts=0,
            failed_attempts=2,
            created_at=1,
            updated_at=1,
            url="http://127.0.0.1:9" if state is EndpointState.READY else None,
        )
        session.add(ep)
        session.flush()
        return ep.seq


@pytest.mark.parametrize(
    "current, target", list(itertools.product(EndpointState, EndpointState)), ids=lambda s: s.value
)
def test_every_endpoint_pair(ctx, current, target):
    seq = _endpoint(ctx, current)
    allowed = target in ENDPOINT_ALLOWED[current]
    fields = {"error": ERROR} if target is EndpointState.FAILED else {}
    with ctx.db.write() as session:
        ep = session.get(Endpoint, seq)
        assert endpoints.transition(session, ep, target, **fields) is allowed
    with ctx.db.read() as session:
        ep = session.get(Endpoint, seq)
    if not allowed:
        assert ep.state == current.value and ep.updated_at == 1
        return
    assert ep.state == target.value and ep.updated_at > 1
    if target is EndpointState.READY:
        assert ep.ready_at is not None and ep.failed_attempts == 0 and ep.error is None
    if target in (EndpointState.DEPLOYING, EndpointState.IDLE):
        assert ep.url is None
    if target is EndpointState.FAILED:
        assert ep.error == ERROR


def test_an_endpoint_move_that_lost_a_race_changes_nothing(ctx):
    seq = _endpoint(ctx, EndpointState.DEPLOYING)
    with ctx.db.write() as session:
        ep = session.get(Endpoint, seq)  # read as deploying
        session.execute(update(Endpoint).where(Endpoint.seq == seq).values(state=EndpointState.STOPPED.value))
        assert endpoints.transition(session, ep, EndpointState.READY, url="http://127.0.0.1:1") is False
        assert ep.state == "stopped"  # the caller sees what won
    with ctx.db.read() as session:
        ep = session.get(Endpoint, seq)
        assert (ep.state, ep.url, ep.ready_at) == ("stopped", None, None)


def _eval_run(ctx, status: RunStatus) -> str:
    run_id = f"evalrun_{status.value[:4]}{time.monotonic_ns()}"
    with ctx.db.write() as session:
        if session.get(Eval, 1) is None:
            session.add(
                Eval(
                    seq=1,
                    id="eval_state_machines",
                    project_id=ctx.project_id,
                    name="",
                    data_source_config={},
                    testing_criteria=[],
                    created_at=1,
                    updated_at=1,
                )
            )
            session.flush()
        session.add(
            EvalRun(
                id=run_id,
                eval_id="eval_state_machines",
                project_id=ctx.project_id,
                name="",
                data_source={},
                model="",
                status=status.value,
                result_counts={},
                per_testing_criteria_results=[],
                per_model_usage=[],
                created_at=1,
                updated_at=1,
            )
        )
    return run_id


@pytest.mark.parametrize("current, target", list(itertools.product(RunStatus, RunStatus)), ids=lambda s: s.value)
def test_every_eval_run_pair(ctx, current, target):
    run_id = _eval_run(ctx, current)
    allowed = target in RUN_ALLOWED[current]
    with ctx.db.write() as session:
        if allowed:
            assert eval_states.move(session, run_id, current, target, 100)
        else:
            with pytest.raises(InvalidRequest):
                eval_states.move(session, run_id, current, target, 100)
    with ctx.db.read() as session:
        run = session.execute(select(EvalRun).where(EvalRun.id == run_id)).scalar_one()
    if not allowed:
        assert (run.status, run.updated_at, run.finished_at) == (current.value, 1, None)
        return
    assert (run.status, run.updated_at) == (target.value, 100)
    assert run.finished_at == (100 if target.terminal else None)


def test_an_eval_run_move_that_lost_a_race_changes_nothing(ctx):
    run_id = _eval_run(ctx, RunStatus.IN_PROGRESS)
    with ctx.db.write() as session:  # read as in_progress; a cancel wins meanwhile
        session.execute(update(EvalRun).where(EvalRun.id == run_id).values(status=RunStatus.CANCELED.value))
        assert eval_states.move(session, run_id, RunStatus.IN_PROGRESS, RunStatus.COMPLETED, 100) is False
    with ctx.db.read() as session:
        assert session.execute(select(EvalRun.status).where(EvalRun.id == run_id)).scalar_one() == "canceled"
