"""A job inserted only if its files pass the checks, in SQL: the refusal is decided by the database in the same
statement as the insert, instead of a SELECT first.

PostgreSQL (`insert_job`): one data-modifying `WITH` sent in autocommit does it all: the file checks, the job, its
metadata and its first events. The transaction of service/job_creation.py took five round trips (BEGIN, the file
check, the job, the events, COMMIT), and on PostgreSQL each cost the server ~0.2 ms of CPU in psycopg,
SQLAlchemy and the thread that waits on the socket. One statement is atomic on its own, and its checks see the
files as committed when it starts, as the transaction's SELECT did.

SQLite (`insert_job_row`), which has no data-modifying `WITH`: the job's own INSERT ... SELECT ... WHERE, inside the
caller's write transaction, saving the SELECT of the file checks; the caller inserts the events and metadata.

The statements only insert when every check passes, and say nothing about why they did not: the caller then
runs the checks of service/job_creation.py, which name the problem (or insert, if a file became usable
meanwhile). tests/test_database_reads.py holds the two sets of rules to the same answers."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import ARRAY, Integer, String, Table, bindparam, cast, exists, func, insert, literal, or_, select
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.dml import ReturningInsert

from service.datasets import DatasetFormat, methods_for
from service.db.tables import File, Job, JobEvent, JobMetadata

# The Core tables (mapped classes type them loosely).
_JOBS: Table = Job.__table__  # type: ignore[assignment]
_EVENTS: Table = JobEvent.__table__  # type: ignore[assignment]
_METADATA: Table = JobMetadata.__table__  # type: ignore[assignment]


@cache
def formats_for(method_type: str) -> tuple[str, ...]:
    """The dataset formats a method trains on, as stored in files.dataset_format."""
    return tuple(sorted(fmt.value for fmt in DatasetFormat if method_type in methods_for(fmt)))


def _usable(file_param: str, min_examples: ColumnElement, formats: tuple[str, ...], images: bool):
    """The file is the project's, a processed fine-tune file of a format the method takes, with enough examples,
    and no images unless the job trains on them: the conditions service.job_creation._check_file refuses one for,
    in SQL."""
    return exists().where(
        File.id == bindparam(file_param),
        File.project_id == bindparam("check_project_id"),
        File.purpose == "fine-tune",
        File.status == "processed",
        or_(*(File.dataset_format == fmt for fmt in formats)),
        func.coalesce(File.example_count, 0) >= min_examples,
        *(() if images else (File.dataset_media.is_(None),)),
    )


@cache
def _job_insert(columns: tuple[str, ...], formats: tuple[str, ...], typed: bool, images: bool) -> ReturningInsert:
    """Built once per set of job columns and of formats (a statement built per request is walked for its cache key
    each time). `typed`: each value CAST to its column's type, as PostgreSQL needs in an INSERT ... SELECT (a NULL
    or JSON parameter would come as text); never on SQLite, where CAST(... AS JSON) means a number."""
    values = [bindparam(name, type_=_JOBS.c[name].type) for name in columns]
    if typed:
        values = [cast(value, value.type) for value in values]  # type: ignore[misc]
    return (
        insert(_JOBS)
        .from_select(
            list(columns),
            select(*values).where(
                _usable("check_training_file", bindparam("min_training_examples", type_=Integer), formats, images),
                or_(
                    bindparam("check_validation_file", type_=String).is_(None),
                    # a validation file needs one example
                    _usable("check_validation_file", literal(1), formats, images),
                ),
            ),
        )
        .returning(_JOBS.c.seq, _JOBS.c.id, _JOBS.c.created_at)
    )


@cache
def _statement(columns: tuple[str, ...], formats: tuple[str, ...], images: bool) -> Select:
    """PostgreSQL's: the job, then its events and metadata from the job's row."""
    job = _job_insert(columns, formats, True, images).cte("new_job")
    events = (
        insert(_EVENTS)
        .from_select(
            ["id", "job_id", "created_at", "level", "message", "type"],
            select(
                func.unnest(bindparam("event_ids", type_=ARRAY(String))),
                job.c.id,
                job.c.created_at,
                literal("info"),
                func.unnest(bindparam("event_messages", type_=ARRAY(String))),
                literal("message"),
            ),
        )
        .cte("new_events")
    )
    metadata = (
        insert(_METADATA)
        .from_select(
            ["job_seq", "key", "value"],
            select(
                job.c.seq,
                func.unnest(bindparam("metadata_keys", type_=ARRAY(String))),
                func.unnest(bindparam("metadata_values", type_=ARRAY(String))),
            ),
        )
        .cte("new_metadata")
    )
    return select(job.c.seq).add_cte(events, metadata)


def _check_params(values: dict[str, Any], min_training_examples: int) -> dict[str, Any]:
    return {
        **values,
        "check_project_id": values["project_id"],
        "check_training_file": values["training_file"],
        "check_validation_file": values["validation_file"],
        "min_training_examples": min_training_examples,
    }


def insert_job(
    conn,
    values: dict[str, Any],
    method_type: str,
    min_training_examples: int,
    events: list[tuple[str, str]],
    images: bool = False,
) -> int | None:
    """PostgreSQL: the new job's seq, or None when a check refused it (nothing written). `values` are the jobs row's
    columns; `events` are the (id, message) of its first events; `min_training_examples` as
    service.job_creation; `images`: files may hold images (a vision model's supervised job)."""
    metadata = values.get("metadata") or {}
    params = {
        **_check_params(values, min_training_examples),
        "event_ids": [event_id for event_id, _ in events],
        "event_messages": [message for _, message in events],
        "metadata_keys": list(metadata),
        "metadata_values": list(metadata.values()),
    }
    return conn.execute(_statement(tuple(values), formats_for(method_type), images), params).scalar_one_or_none()


def insert_job_row(
    conn, values: dict[str, Any], method_type: str, min_training_examples: int, images: bool = False
) -> int | None:
    """SQLite: the job's row alone (no events, no metadata), inside the caller's transaction; its seq, or None when a
    check refused it."""
    stmt = _job_insert(tuple(values), formats_for(method_type), False, images)
    return conn.execute(stmt, _check_params(values, min_training_examples)).scalar_one_or_none()
