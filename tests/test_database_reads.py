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
