"""Database on PostgreSQL: read_statement (a Core connection) runs in autocommit and leaves none of it on the
pooled connection; pooled connections that died are replaced (pinged after an idle second, else retired by the
first statement that meets one)."""

import time

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from service.db import Database
from service.db.database import PING_AFTER_IDLE_S
from service.db.tables import Project
from tests.support import PostgresDatabase


@pytest.fixture
def db():
    database = PostgresDatabase()
    db = Database(database.url)
    db.migrate()
    yield db
    db.dispose()
    database.drop()


def test_read_statement_runs_in_autocommit_and_leaves_the_pool_transactional(db):
    db.engine.pool.dispose()  # one pooled connection from here on, reused by every session below
    with db.read_statement() as conn:
        assert conn.connection.dbapi_connection.autocommit is True
        assert conn.execute(select(func.count()).select_from(Project)).scalar() == 0
    # A write that fails after its INSERT must still roll back on the same connection.
    with pytest.raises(RuntimeError):
        with db.write() as session:
            assert session.connection().connection.dbapi_connection.autocommit is False
            session.add(Project(id="proj_r", name="r", slug="r", created_at=0))
            session.flush()
            raise RuntimeError("abort")
    with db.read() as session:
        assert session.connection().connection.dbapi_connection.autocommit is False
        assert session.execute(select(func.count()).select_from(Project)).scalar() == 0


def _terminate(db: Database, pid: int) -> None:
    """Kills a backend from a connection of its own, outside the pool (as a server restart would)."""
    with psycopg.connect(
        db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    ) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_a_pooled_connection_killed_while_idle_is_pinged_and_replaced(db):
    db.engine.pool.dispose()
    with db.read_statement() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    _terminate(db, pid)
    time.sleep(PING_AFTER_IDLE_S + 0.3)  # idle past the threshold: checked at checkout, so nothing fails
    with db.read_statement() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid


def test_a_connection_killed_a_moment_after_use_fails_once_then_all_older_ones_are_retired(db):
    db.engine.pool.dispose()
    with db.read_statement() as first, db.read_statement() as second:  # two pooled connections
        pids = {
            first.execute(text("SELECT pg_backend_pid()")).scalar(),
            second.execute(text("SELECT pg_backend_pid()")).scalar(),
        }
    for pid in pids:
        _terminate(db, pid)
    # Not pinged (used a moment ago): the statement fails as a disconnect, which the API answers 503.
    with pytest.raises(DBAPIError) as failed:
        with db.read_statement() as conn:
            conn.execute(text("SELECT 1"))
    assert failed.value.connection_invalidated
    # The failure retired the other connection too: the next checkouts connect afresh and succeed.
    with db.read_statement() as first, db.read_statement() as second:
        fresh = {
            first.execute(text("SELECT pg_backend_pid()")).scalar(),
            second.execute(text("SELECT pg_backend_pid()")).scalar(),
        }
    assert not fresh & pids


# Files a job may or may not train on: (file id, project, purpose, status, format, examples).
_FILES = [
    ("file-good", "proj_a", "fine-tune", "processed", "openai_chat", 20),
    ("file-prefs", "proj_a", "fine-tune", "processed", "openai_preference", 20),
    ("file-few", "proj_a", "fine-tune", "processed", "openai_chat", 3),
    ("file-one", "proj_a", "fine-tune", "processed", "openai_chat", 1),
    ("file-none", "proj_a", "fine-tune", "processed", "openai_chat", None),
    ("file-batch", "proj_a", "batch", "processed", "openai_chat", 20),
    ("file-error", "proj_a", "fine-tune", "error", None, None),
    ("file-pending", "proj_a", "fine-tune", "uploaded", None, None),
    ("file-theirs", "proj_b", "fine-tune", "processed", "openai_chat", 20),
    ("file-images", "proj_a", "fine-tune", "processed", "openai_chat", 20),  # holds images (_MEDIA)
]
_MEDIA = {"images": 3, "image_examples": 2, "image_bytes": 90, "first_image": {"line": 2, "field": "messages[0]"}}


def test_the_conditional_job_insert_refuses_exactly_what_the_checks_refuse_and_writes_nothing_then(either_db):
    """service/job_insert.py (PostgreSQL's create in one statement; SQLite's job row inserted only if its files
    pass) against service/job_creation.py's checks: for every pair of training and validation file and both
    methods, it inserts iff they pass, and a refusal leaves no job, event or metadata row."""
    from service import job_insert
    from service.auth import ProjectPrincipal
    from service.base_models import BaseModelRegistry
    from service.db.tables import File, Job, JobEvent, JobMetadata
    from service.errors import InvalidRequest
    from service.job_creation import _check_file

    db = either_db
    with db.write() as session:
        session.add_all([Project(id=p, name=p, slug=p, created_at=0) for p in ("proj_a", "proj_b")])
        session.flush()
        for file_id, project, purpose, status, fmt, examples in _FILES:
            session.add(
                File(
                    id=file_id, project_id=project, filename="t.jsonl", purpose=purpose, bytes=1, created_at=0,
                    status=status, storage_key=file_id, dataset_format=fmt, example_count=examples,
                    dataset_media=_MEDIA if file_id == "file-images" else None,
                )
            )  # fmt: skip
    principal = ProjectPrincipal(project_id="proj_a", project_slug="proj_a")
    registry = BaseModelRegistry({})

    def passes(file_id: str, param: str, method: str, minimum: int, base: str) -> bool:
        with db.read() as session:
            try:
                _check_file(
                    session.connection(), principal, file_id, param, method, minimum, registry.get(base), registry
                )
            except InvalidRequest:
                return False
        return True

    def counts() -> tuple[int, int, int]:
        with db.read_statement() as conn:
            return tuple(
                conn.execute(select(func.count()).select_from(t)).scalar() for t in (Job, JobEvent, JobMetadata)
            )

    inserted = 0
    for method, base in (("supervised", "hone-tiny"), ("dpo", "hone-tiny"), ("supervised", "hone-tiny-vision")):
        images = base == "hone-tiny-vision"  # what job_creation lets the statement allow: a vision model's SFT
        for training, *_ in _FILES:
            for validation in (None, *(f[0] for f in _FILES)):
                expected = passes(training, "training_file", method, 10, base) and (
                    validation is None or passes(validation, "validation_file", method, 1, base)
                )
                before = counts()
                values = dict(
                    id=f"ftjob-{inserted}-{training}-{validation}-{method}-{base[-6:]}", project_id="proj_a", model=base,
                    base_model=base, status="validating_files", created_at=7, training_file=training,
                    validation_file=validation, method={"type": method}, suffix=None, seed=1,
                    metadata={"team": "a", "run": "b"}, result_files=[], priority=0, auto_deploy=False, attempts=0,
                    failures=0, integrations=[], vertex_spec=None, parent_model=None, parent_prefix=None,
                )  # fmt: skip
                events = [(f"ftevent-{values['id']}-{i}", f"message {i}") for i in range(2)]
                if db.is_sqlite:
                    with db.write_connection() as conn:
                        seq = job_insert.insert_job_row(db.plain(conn), values, method, 10, images)
                    added = (1, 0, 0)  # the caller inserts the events and metadata
                else:
                    with db.read_statement() as conn:
                        seq = job_insert.insert_job(conn, values, method, 10, events, images)
                    added = (1, 2, 2)
                assert (seq is not None) == expected, (method, training, validation)
                if seq is None:
                    assert counts() == before
                    continue
                inserted += 1
                assert counts() == tuple(b + a for b, a in zip(before, added, strict=True))
                with db.read() as session:
                    job = session.scalars(select(Job).where(Job.seq == seq)).one()
                    assert (job.id, job.method, job.metadata_, job.validation_file) == (
                        values["id"],
                        {"type": method},
                        values["metadata"],
                        validation,
                    )
                    messages = session.scalars(
                        select(JobEvent.message).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)
                    ).all()
                    assert messages == ([] if db.is_sqlite else ["message 0", "message 1"])
    # Both methods found files to train on: the loop above compared insertions as well as refusals.
    assert inserted > 2


def _job_rows(db: Database, count: int) -> None:
    from service.db.tables import Job

    with db.write() as session:
        session.add(Project(id="proj_p", name="p", slug="p", created_at=0))
        session.flush()
        for i in range(count):
            session.add(
                Job(
                    id=f"ftjob-{i}", project_id="proj_p", model="hone-tiny", base_model="hone-tiny",
                    status="queued", created_at=i, training_file="file-x", method={"type": "supervised", "n": i},
                    metadata_={"i": str(i)} if i % 2 else None, result_files=[], priority=0, auto_deploy=False,
                    attempts=0, failures=0, integrations=[], seed=i,
                )
            )  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def either_db(request, tmp_path):
    if request.param == "postgres":
        yield request.getfixturevalue("db")
        return
    db = Database(f"sqlite:///{tmp_path / 'hone.db'}")
    db.migrate()
    yield db
    db.dispose()


def test_plain_statements_give_the_rows_sqlalchemy_gives(either_db):
    """service/db/plain.py (retrieve and list jobs through the driver: psycopg, sqlite3) against the same
    statements through SQLAlchemy: the same columns by name, the same values (JSON, booleans), the same pages."""
    db = either_db
    from service import jobs

    _job_rows(db, 7)
    statements = [
        (jobs._JOB_OF_PROJECT, {"job_id": "ftjob-3", "project_id": "proj_p"}),
        (jobs._JOB_OF_PROJECT, {"job_id": "ftjob-3", "project_id": "proj_other"}),
        (jobs._JOBS_OF_PROJECT._first, {"project_id": "proj_p", "limit": 4}),
        (jobs._JOBS_OF_PROJECT._after, {"project_id": "proj_p", "after": "ftjob-5", "limit": 3}),
        (jobs._JOBS_OF_PROJECT._cursor, {"project_id": "proj_p", "after": "ftjob-9"}),
    ]
    for stmt, params in statements:
        with db.read_statement() as conn:
            expected = [row._asdict() for row in conn.execute(stmt, params).all()]
        with db.plain_statements() as plain:
            got = [row._asdict() for row in plain.execute(stmt, params).all()]
        assert got == expected, stmt
    with db.plain_statements() as plain:
        row = plain.execute(jobs._JOB_OF_PROJECT, {"job_id": "ftjob-3", "project_id": "proj_p"}).first()
    assert (row.id, row.method, row.metadata_, row.auto_deploy) == (
        "ftjob-3",
        {"type": "supervised", "n": 3},
        {"i": "3"},
        False,
    )
    page = jobs._JOBS_OF_PROJECT.page
    with db.plain_statements() as plain:
        rows, more = page(plain, {"project_id": "proj_p"}, after="ftjob-5", limit=3)
    assert ([r.id for r in rows], more) == (["ftjob-4", "ftjob-3", "ftjob-2"], True)


def _plain_pid(db: Database) -> int:
    with db.plain_statements() as plain:
        return plain.execute(select(func.pg_backend_pid())).scalar()


def test_a_plain_read_connection_killed_while_idle_is_pinged_and_replaced(db):
    pid = _plain_pid(db)
    assert _plain_pid(db) == pid  # one connection, reused
    _terminate(db, pid)
    time.sleep(PING_AFTER_IDLE_S + 0.3)
    assert _plain_pid(db) != pid


def test_a_plain_read_connection_killed_a_moment_after_use_fails_once_as_an_outage_then_reconnects(db):
    from service.errors import ErrorCode, outage_code

    with db.plain_statements() as first, db.plain_statements() as second:  # two idle connections after this
        pids = {
            first.execute(select(func.pg_backend_pid())).scalar(),
            second.execute(select(func.pg_backend_pid())).scalar(),
        }
    for pid in pids:
        _terminate(db, pid)
    with pytest.raises(DBAPIError) as failed:
        _plain_pid(db)
    assert outage_code(failed.value) == ErrorCode.DATABASE_UNAVAILABLE  # answered 503, as through SQLAlchemy
    # Every idle connection was dropped with it: the next reads connect afresh.
    with db.plain_statements() as first, db.plain_statements() as second:
        fresh = {
            first.execute(select(func.pg_backend_pid())).scalar(),
            second.execute(select(func.pg_backend_pid())).scalar(),
        }
    assert not fresh & pids


def test_write_connection_commits_rolls_back_and_recovers_from_a_broken_connection(either_db):
    db = either_db

    def projects() -> list[str]:
        with db.read_statement() as conn:
            return list(conn.execute(select(Project.id).order_by(Project.id)).scalars())

    def add(conn, project_id: str) -> None:
        conn.execute(Project.__table__.insert(), {"id": project_id, "name": "n", "slug": "s", "created_at": 0})

    with db.write_connection() as conn:
        add(conn, "proj_1")
    with pytest.raises(RuntimeError):
        with db.write_connection() as conn:
            add(conn, "proj_2")
            raise RuntimeError("abort")
    assert projects() == ["proj_1"]
    with pytest.raises(RuntimeError):
        with db.write_connection() as conn:
            conn.invalidate()  # as a lost connection's error does: the next write connects afresh
            raise RuntimeError("lost")
    with db.write_connection() as conn:
        add(conn, "proj_3")
    assert projects() == ["proj_1", "proj_3"]
