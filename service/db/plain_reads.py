"""The hottest reads on PostgreSQL (retrieve a job, a page of jobs) sent straight through psycopg.

Through SQLAlchemy such a read spent more of the server's CPU around the query than in it: a pool checkout and
checkin with their events, an execution context, a result proxy asking psycopg to describe each column (py-spy,
retrieve job at 32 clients: ~30% of the request). Here a statement built once is compiled once, and each read
takes an autocommit psycopg connection of its own small free list, runs the SQL and turns the tuples into
named rows: the same rows, values and errors the callers had through SQLAlchemy.

Connections are kept as SQLAlchemy's pool keeps them (service/db/database.py): one that sat idle for
PING_AFTER_IDLE_S is pinged before use; a statement that meets a dead one drops every idle one, and the failure
goes up as SQLAlchemy's OperationalError, which the API answers 503 `database_unavailable`."""

from __future__ import annotations

import contextlib
import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy import URL, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError


@dataclass(frozen=True)
class _Compiled:
    sql: str
    defaults: dict[str, Any]  # the statement's own bound values (literals written into it)
    row: Callable[[tuple], Any]  # a tuple to a row whose attributes are the selected columns' keys


class PlainResult:
    """The part of SQLAlchemy's Result the callers use."""

    def __init__(self, rows: list):
        self._rows = rows

    def all(self) -> list:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


class PlainConnection:
    """One psycopg connection in autocommit, executing statements built once (by identity: a statement built per
    request would be compiled per request)."""

    def __init__(self, reads: PlainReads, conn: psycopg.Connection):
        self._reads, self._conn = reads, conn

    def execute(self, stmt: Select, params: dict[str, Any] | None = None) -> PlainResult:
        compiled = self._reads.compiled(stmt)
        values = {**compiled.defaults, **(params or {})}
        try:
            rows = self._conn.execute(compiled.sql, values).fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._reads.lost(self._conn)
            raise OperationalError(compiled.sql, values, exc) from exc
        return PlainResult([compiled.row(row) for row in rows])


class PlainReads:
    def __init__(self, url: URL, dialect: Dialect, json_loads: Callable[[str | bytes], Any], ping_after_idle_s: float):
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._dialect, self._json_loads, self._ping_after = dialect, json_loads, ping_after_idle_s
        self._idle: list[tuple[psycopg.Connection, float]] = []  # last used last; list ops are atomic
        self._compiled: weakref.WeakKeyDictionary[Select, _Compiled] = weakref.WeakKeyDictionary()

    def compiled(self, stmt: Select) -> _Compiled:
        found = self._compiled.get(stmt)
        if found is None:
            compiled = stmt.compile(dialect=self._dialect)
            names = [column.key or f"_{i}" for i, column in enumerate(stmt.selected_columns)]
            row_type = namedtuple("Row", names, rename=True)  # type: ignore[misc]  # names known at run time
            found = self._compiled[stmt] = _Compiled(compiled.string, dict(compiled.params), row_type._make)
        return found

    @contextlib.contextmanager
    def connection(self) -> Iterator[PlainConnection]:
        conn = self._take()
        yield PlainConnection(self, conn)
        if not conn.closed:
            self._idle.append((conn, time.monotonic()))

    def _take(self) -> psycopg.Connection:
        while True:
            try:
                conn, returned_at = self._idle.pop()
            except IndexError:
                return self._connect()
            if time.monotonic() - returned_at < self._ping_after:
                return conn  # used a moment ago: alive a moment ago
            try:
                conn.execute("SELECT 1")
                return conn
            except psycopg.Error:
                self.lost(conn)

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise OperationalError("connect", None, exc) from exc
        set_json_loads(self._json_loads, conn)  # as the engine's json_deserializer
        return conn

    def lost(self, conn: psycopg.Connection) -> None:
        """`conn` failed: it and every idle connection made before the failure are closed (as SQLAlchemy's pool
        retires its older connections), so the next reads connect afresh."""
        idle, self._idle = self._idle, []
        for each in [conn, *(c for c, _ in idle)]:
            with contextlib.suppress(Exception):
                each.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            with contextlib.suppress(Exception):
                conn.close()
