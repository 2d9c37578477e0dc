"""Engine, sessions and migrations for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
from alembic import command
from alembic.config import Config
from psycopg.types.json import set_json_loads
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from service.db.plain import PlainConnection, PlainStatements

_MIGRATIONS = Path(__file__).with_name("migrations")
_WRITE = "hone_write"
_RETURNED_AT = "hone_returned_at"
PING_AFTER_IDLE_S = 1.0
_AFTER_COMMIT = "hone_after_commit"


def after_commit(session: Session, callback) -> None:
    """Runs `callback` once the write transaction of `session` has committed (never if it rolls back):
    metrics count what happened, not what was attempted."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def _json_loads(text: str | bytes) -> object:
    """JSON columns decoded by orjson (a page of 20 jobs decodes ~100 values: ~12% of a list's CPU through the
    standard library). Values written with NaN or Infinity (the standard library writes them, JSON has no such
    tokens and orjson refuses them) take the standard library's way back."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


class Database:
    def __init__(self, url: str, pool_size: int = 30):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            # As many connections as the server has worker threads (40), so none waits to open one.
            self.engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_size=40,
                max_overflow=8,
                json_deserializer=_json_loads,
            )
            self._configure_sqlite()
            self._plain = PlainStatements(self._sqlite3_connect, sqlite3, self.engine.dialect, None)
        else:
            # At most `pool_size` connections, all kept open: with 10 kept and 20 more on demand, a burst of
            # requests opened and closed connections all along (a PostgreSQL connection costs the server a fork
            # and a login, and psycopg a conninfo parse: 1,825 connects in 1,110 job creates at 32 clients).
            # Past the limit a request waits for one. Last used first, so a quiet spell keeps few of them hot.
            self.engine = create_engine(
                url, pool_size=pool_size, max_overflow=0, pool_use_lifo=True, json_deserializer=_json_loads
            )
            self._ping_idle_connections()
            self._plain = PlainStatements(self._psycopg_connect, psycopg, self.engine.dialect, PING_AFTER_IDLE_S)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; its busy handler polls with sleeps of up to 100 ms,
        # so in-process writers queue on a lock instead (p99 of create job: ~2.5 s -> ~0.5 s).
        self._write_lock = threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        self._writer: Connection | None = None  # SQLite: write_connection's

    def _ping_idle_connections(self) -> None:
        """SQLAlchemy's pool_pre_ping pings at every checkout: a round trip for every request (retrieve a job on
        PostgreSQL, in-process, 32 clients: 1.16 ms of CPU with it, 0.56 ms without). Only a connection that sat
        in the pool for PING_AFTER_IDLE_S is pinged here: one used a moment ago was alive a moment ago. A server
        restarted meanwhile fails the statement instead, as it fails the ones in flight; the error answers 503
        `database_unavailable` and SQLAlchemy then retires every connection made before it, so the next
        checkouts connect afresh."""

        @event.listens_for(self.engine, "checkin")
        def _returned(_dbapi_conn, record):
            record.info[_RETURNED_AT] = time.monotonic()

        @event.listens_for(self.engine, "checkout")
        def _checked_out(dbapi_conn, record, _proxy):
            returned_at = record.info.get(_RETURNED_AT)
            if returned_at is None or time.monotonic() - returned_at < PING_AFTER_IDLE_S:
                return  # new, or used a moment ago
            try:
                dbapi_conn.execute("SELECT 1")
                if not dbapi_conn.autocommit:
                    dbapi_conn.rollback()  # the ping must not leave a transaction open on a pooled connection
            except Exception as exc:
                raise DisconnectionError(f"a pooled connection is gone: {exc}") from exc  # the pool reconnects

    def _psycopg_connect(self) -> psycopg.Connection:
        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(conninfo, autocommit=True)
        set_json_loads(_json_loads, conn)  # as the engine's json_deserializer
        return conn

    def _sqlite3_connect(self) -> sqlite3.Connection:
        # Autocommit (each read its own transaction); as the engine's: a busy database is waited on.
        conn = sqlite3.connect(
            self.engine.url.database or "", check_same_thread=False, timeout=30, isolation_level=None
        )
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _configure_sqlite(self) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn):
            # Writers take the write lock up front: a deferred transaction that upgrades
            # later fails with SQLITE_BUSY instead of waiting. Readers stay concurrent.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextlib.contextmanager
    def read_statement(self) -> Iterator[Connection]:
        """A Core connection for a read of plain rows that needs no snapshot shared between its statements (one
        query; or a cursor's position, then the page after it). No ORM session: its bookkeeping cost more than
        the query (retrieve a job: 0.21 ms of CPU through a session, 0.08 ms on the connection). On PostgreSQL it
        runs in autocommit: no BEGIN before the query and no ROLLBACK when the connection goes back to the pool,
        two of a read's three round trips."""
        with self.engine.connect() as conn:
            yield conn if self.is_sqlite else conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextlib.contextmanager
    def plain_statements(self) -> Iterator[PlainConnection]:
        """For the hottest statements, built once: straight through the driver (service/db/plain.py), each its own
        transaction (autocommit): the reads of a job and of a page of jobs, and PostgreSQL's one-statement create."""
        with self._plain.connection() as plain:
            yield plain

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on any error."""
        with self._write_lock, self._sessions() as session:
            session.connection(execution_options={_WRITE: True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
        for callback in session.info.pop(_AFTER_COMMIT, ()):
            callback()

    @contextlib.contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A write transaction on a Core connection, for statements alone (no ORM session, whose set-up was ~15%
        of a job's create on SQLite): commits on success, rolls back on any error."""
        if not self.is_sqlite:
            with self.engine.connect() as pooled, pooled.begin():
                yield pooled
            return
        # SQLite has one writer at a time, behind the write lock: it keeps one connection for these writes
        # instead of a pool checkout and checkin each (~6% of a job's create).
        with self._write_lock:
            if self._writer is None or self._writer.closed or self._writer.invalidated:
                self._writer = self.engine.connect()
                self._writer.execution_options(**{_WRITE: True})  # BEGIN IMMEDIATE, as write()
            with self._writer.begin():
                yield self._writer

    def plain(self, conn: Connection) -> PlainConnection:
        """`conn`'s driver connection, inside its transaction, for statements built once (service/db/plain.py)."""
        return self._plain.borrowed(conn.connection.dbapi_connection)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                # Several replicas may start at once; one migrates, the others wait.
                conn.execute(text("SELECT pg_advisory_xact_lock(7411)"))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self._plain.close()
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()
