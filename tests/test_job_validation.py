"""The validation loop, called directly on an AppContext over SQLite and over PostgreSQL: jobs whose files are
there move to queued in batches (one UPDATE and one events INSERT each), jobs whose file was deleted fail."""

import pytest
from sqlalchemy import select

from service.context import AppContext
from service.db.tables import File, Job, JobEvent, Project
from service.job_validation import VALIDATED_MESSAGE, advance_validating_jobs
from service.metrics import JOB_TRANSITIONS
from service.settings import Settings
from tests.support import PostgresDatabase


def _file(file_id: str) -> File:
    return File(
        id=file_id,
        project_id="proj_v",
        filename=f"{file_id}.jsonl",
        purpose="fine-tune",
        bytes=1,
        created_at=0,
        expires_at=None,
        status="processed",
        storage_key=f"files/{file_id}",
    )


def _job(job_id: str, training_file: str, validation_file: str | None = None, status: str = "validating_files"):
    return Job(
        id=job_id,
        project_id="proj_v",
        model="hone-tiny",
        base_model="hone-tiny",
        status=status,
        created_at=0,
        training_file=training_file,
        validation_file=validation_file,
        method={"type": "supervised"},
        seed=1,
        result_files=[],
    )


def _count(source: str, target: str) -> float:
    return JOB_TRANSITIONS.labels(source, target)._value.get()


@pytest.fixture(params=["sqlite", "postgres"])
def ctx(request, tmp_path):
    database = PostgresDatabase() if request.param == "postgres" else None  # its own: others share "postgres"
    context = AppContext.build(
        Settings(data_dir=tmp_path, admin_api_key="adm", database_url=database.url if database else None)
    )
    yield context
    context.db.dispose()
    if database:
        database.drop()


def test_validation_queues_in_batches_and_fails_jobs_whose_file_is_gone(ctx):
    with ctx.db.write() as session:
        session.add(Project(id="proj_v", name="v", slug="v", created_at=0))
        session.flush()
        session.add_all([_file("file-a"), _file("file-b")])
        session.flush()
        session.add_all(
            [_job(f"ftjob-ok{i}", "file-a", "file-b") for i in range(5)]
            + [_job("ftjob-gone", "file-a", "file-deleted"), _job("ftjob-running", "file-a", status="running")]
        )
    queued_before, failed_before = _count("validating_files", "queued"), _count("validating_files", "failed")

    assert advance_validating_jobs(ctx, batch=2) == 6  # three full batches of two, then an empty look
    assert advance_validating_jobs(ctx, batch=2) == 0

    with ctx.db.read() as session:
        jobs = {j.id: j for j in session.execute(select(Job)).scalars()}
        events = session.execute(select(JobEvent.job_id, JobEvent.message, JobEvent.level, JobEvent.data)).all()
    for i in range(5):
        assert jobs[f"ftjob-ok{i}"].status == "queued" and jobs[f"ftjob-ok{i}"].queued_at > 0
    gone = jobs["ftjob-gone"]
    assert gone.status == "failed" and gone.finished_at and gone.queued_at is None
    assert gone.error == {
        "code": "invalid_validation_file",
        "param": "validation_file",
        "message": "The job failed due to an invalid validation file: file-deleted was deleted.",
    }
    assert jobs["ftjob-running"].status == "running"  # only validating jobs are touched
    by_job = {}
    for job_id, message, level, data in events:
        by_job.setdefault(job_id, []).append((message, level, data))
    assert by_job["ftjob-gone"] == [(gone.error["message"], "error", None)]
    for i in range(5):
        assert by_job[f"ftjob-ok{i}"] == [(VALIDATED_MESSAGE, "info", None)]
    assert "ftjob-running" not in by_job
    assert _count("validating_files", "queued") - queued_before == 5  # counted once each, after the commit
    assert _count("validating_files", "failed") - failed_before == 1
