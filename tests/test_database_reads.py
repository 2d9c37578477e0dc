"""Database.read_statement (a Core connection) on PostgreSQL: autocommit inside, and none of it left on the pooled connection."""

import pytest
from sqlalchemy import func, select

from service.db import Database
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
