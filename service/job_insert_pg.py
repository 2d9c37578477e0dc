"""Creating a job on PostgreSQL in one statement: its files checked, the job, its metadata and its first events
inserted, all in one data-modifying `WITH` sent in autocommit.

The transaction of service/job_creation.py takes five round trips (BEGIN, the file check, the job, the events,
COMMIT), and on PostgreSQL each costs the server ~0.2 ms of CPU in psycopg, SQLAlchemy and the thread that waits
on the socket: most of the difference between a create on SQLite and on PostgreSQL. One statement is atomic
on its own, and its checks see the files as committed when it starts, as the transaction's SELECT did.

The statement only inserts when every check passes, and says nothing about why it did not: the caller then
takes the transactional way, whose checks name the problem (or insert, if a file became usable meanwhile).
SQLite has no data-modifying `WITH`; it keeps the transaction, which costs it less."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import ARRAY, Integer, String, Table, any_, bindparam, cast, exists, func, insert, literal, or_, select
from sqlalchemy.sql import ColumnElement, Select

from service.datasets import DatasetFormat, methods_for
from service.db.tables import File, Job, JobEvent, JobMetadata

# The Core tables (mapped classes type them loosely).
_JOBS: Table = Job.__table__  # type: ignore[assignment]
_EVENTS: Table = JobEvent.__table__  # type: ignore[assignment]
_METADATA: Table = JobMetadata.__table__  # type: ignore[assignment]


@cache
def formats_for(method_type: str) -> list[str]:
    """The dataset formats a method trains on, as stored in files.dataset_format."""
    return sorted(fmt.value for fmt in DatasetFormat if method_type in methods_for(fmt))


def _usable(file_param: str, min_examples: ColumnElement):
    """The file is the project's, a processed fine-tune file of a format the method takes, with enough examples:
    the conditions service.job_creation._check_file refuses one for, in SQL."""
    return exists().where(
        File.id == bindparam(file_param),
        File.project_id == bindparam("check_project_id"),
        File.purpose == "fine-tune",
        File.status == "processed",
        File.dataset_format == any_(bindparam("formats", type_=ARRAY(String))),
        func.coalesce(File.example_count, 0) >= min_examples,
    )


@cache
def statement(columns: tuple[str, ...]) -> Select:
    """Built once per set of job columns (always the same set in practice): a statement built per request is
    walked for its cache key each time."""
    values = [cast(bindparam(name, type_=_JOBS.c[name].type), _JOBS.c[name].type) for name in columns]
    job = (
        insert(_JOBS)
        .from_select(
            list(columns),
            select(*values).where(
                _usable("check_training_file", bindparam("min_training_examples", type_=Integer)),
                or_(
                    bindparam("check_validation_file", type_=String).is_(None),
                    _usable("check_validation_file", literal(1)),  # a validation file needs one example
                ),
            ),
        )
        .returning(_JOBS.c.seq, _JOBS.c.id, _JOBS.c.created_at)
        .cte("new_job")
    )
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


def insert_job(
    conn, values: dict[str, Any], method_type: str, min_training_examples: int, events: list[tuple[str, str]]
) -> int | None:
    """The new job's seq, or None when a check refused it (nothing written). `values` are the jobs row's columns;
    `events` are the (id, message) of its first events; `min_training_examples` as service.job_creation."""
    metadata = values.get("metadata") or {}
    params = {
        **values,
        "check_project_id": values["project_id"],
        "check_training_file": values["training_file"],
        "check_validation_file": values["validation_file"],
        "formats": formats_for(method_type),
        "min_training_examples": min_training_examples,
        "event_ids": [event_id for event_id, _ in events],
        "event_messages": [message for _, message in events],
        "metadata_keys": list(metadata),
        "metadata_values": list(metadata.values()),
    }
    return conn.execute(statement(tuple(values)), params).scalar_one_or_none()
