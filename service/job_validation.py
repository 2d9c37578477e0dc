"""The validation loop: jobs move from validating_files to queued once their files are known to be there.

Every created job passes through here, so its cost is part of what `POST /v1/fine_tuning/jobs` costs: the
jobs of a batch that move to queued do so in one UPDATE and one multi-row INSERT of their events, instead of
an UPDATE, a re-read and an event flush per job through the ORM (under 32 clients creating jobs, that per-job
path took ~40% of the server's CPU). Jobs whose files were deleted meanwhile take the one-by-one path."""

from __future__ import annotations

from sqlalchemy import exists, select

from hone_kernel.dataset_lines import dataset_lines
from service import reinforcement
from service.context import AppContext
from service.db.tables import File, Job
from service.errors import ErrorCode
from service.job_states import JobStatus
from service.jobs import transition, transition_many

VALIDATED_MESSAGE = "Files validated, moving job to queued state"


def advance_validating_jobs(ctx: AppContext, batch: int = 50) -> int:
    """Moves jobs whose files are still there from validating_files to queued, and fails the others.

    One transaction per batch; SKIP LOCKED lets several replicas share the backlog."""
    done = 0
    validating = JobStatus.VALIDATING_FILES
    checked = False
    while True:
        # An idle poll must not take SQLite's write lock; one statement, so no transaction on PostgreSQL either.
        with ctx.db.read_statement() as conn:
            if not conn.execute(select(exists().where(Job.status == validating.value))).scalar():
                return done
        if not checked:  # only when there is something to validate: an idle poll stays one statement
            _check_grader_fields(ctx)
            checked = True
        with ctx.db.write() as session:
            # Locked (PostgreSQL) or behind the write lock (SQLite): no one else moves these rows meanwhile.
            pending = session.execute(
                select(Job.id, Job.training_file, Job.validation_file)
                .where(Job.status == validating.value)
                .order_by(Job.seq)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            file_ids = {fid for job in pending for fid in (job.training_file, job.validation_file) if fid}
            present = (
                set(session.execute(select(File.id).where(File.id.in_(file_ids))).scalars()) if file_ids else set()
            )
            valid = []
            for job in pending:
                missing = [
                    (param, fid)
                    for param, fid in (("training_file", job.training_file), ("validation_file", job.validation_file))
                    if fid and fid not in present
                ]
                if missing:
                    _fail(session, job.id, *missing[0])
                else:
                    valid.append(job.id)
            if valid:
                _queue(session, valid)
        done += len(pending)
        if len(pending) < batch:
            return done


def _queue(session, job_ids: list[str]) -> None:
    transition_many(session, job_ids, JobStatus.VALIDATING_FILES, JobStatus.QUEUED, VALIDATED_MESSAGE)


def _fail(session, job_id: str, param: str, file_id: str) -> None:
    job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
    code = ErrorCode.INVALID_TRAINING_FILE if param == "training_file" else ErrorCode.INVALID_VALIDATION_FILE
    error = {
        "code": code,
        "param": param,
        "message": f"The job failed due to an invalid {param.replace('_', ' ')}: {file_id} was deleted.",
    }
    transition(session, job, JobStatus.FAILED, error["message"], level="error", error=error)


def _check_grader_fields(ctx: AppContext) -> None:
    """Fails reinforcement jobs whose prompts lack an `item.*` field their grader reads, naming the lines; before
    the batch's transaction, so reading the files never holds the database's write lock."""
    with ctx.db.read() as session:
        jobs = [
            job
            for job in session.execute(
                select(Job.id, Job.method, Job.training_file, Job.validation_file).where(
                    Job.status == JobStatus.VALIDATING_FILES.value
                )
            ).all()
            if (job.method or {}).get("type") == "reinforcement"
        ]
        ids = {f for job in jobs for f in (job.training_file, job.validation_file) if f}
        keys = dict(session.execute(select(File.id, File.storage_key).where(File.id.in_(ids))).all()) if ids else {}
    for job in jobs:
        grader = job.method["reinforcement"]["grader"]
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if not file_id or file_id not in keys:
                continue  # none, or deleted: the batch below fails the job for that
            missing, total = reinforcement.missing_item_fields(
                grader, dataset_lines(ctx.storage.iter_chunks(keys[file_id]))
            )
            if missing:
                with ctx.db.write() as session:
                    row = session.execute(select(Job).where(Job.id == job.id)).scalar_one()
                    if row.status == JobStatus.VALIDATING_FILES.value:
                        _fail_lines(session, row, param, file_id, missing, total)
                break


def _fail_lines(session, job: Job, param: str, file_id: str, missing: list[tuple[int, str]], total: int) -> None:
    shown = "; ".join(f"line {line} has no {{{{{ref}}}}}" for line, ref in missing)
    more = f"; and {total - len(missing)} more line(s)" if total > len(missing) else ""
    code = ErrorCode.INVALID_TRAINING_FILE if param == "training_file" else ErrorCode.INVALID_VALIDATION_FILE
    message = (
        f"The job failed due to an invalid {param.replace('_', ' ')}: {file_id} has lines without a field the "
        f"grader reads: {shown}{more}."
    )
    error = {"code": code, "param": param, "message": message}
    transition(session, job, JobStatus.FAILED, message, level="error", error=error)
