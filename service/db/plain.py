"""The hottest statements sent straight through the database's driver (psycopg or sqlite3): the reads of retrieve a
job and of a page of jobs, and on SQLite the inserts of a job's create.

Through SQLAlchemy such a read spent more of the server's CPU around the query than in it: a pool checkout and
checkin with their events, an execution context, a result proxy asking the driver to describe each column (py-spy,
retrieve job on PostgreSQL at 32 clients: ~30% of the request). Here a statement built once is compiled once by
SQLAlchemy, and each read takes an autocommit connection of its own small free list, runs the SQL and turns the
tuples into named rows through the columns' own result processors (JSON, booleans): the same rows, values and
errors the callers had through SQLAlchemy.

Connections are kept as SQLAlchemy's pool keeps them (service/db/database.py): on PostgreSQL one that sat idle
for PING_AFTER_IDLE_S is pinged before use; a statement that meets a dead one drops every idle one. A driver's
error goes up as SQLAlchemy's, so the API answers an outage 503 `database_unavailable` as before."""

from __future__ import annotations

import contextlib
import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert


@dataclass(frozen=True)
class _Compiled:
    sql: str
    defaults: dict[str, Any]  # the statement's own bound values (literals written into it)
    processors: dict[str, Callable[[Any], Any]]  # the parameters' types' own conversions (JSON to text, ...)
    positions: tuple[str, ...] | None  # the parameters' order, for a driver of `?` placeholders (sqlite3)
    row: Callable[[tuple], Any]  # a driver's tuple to a row whose attributes are the selected columns' keys


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

    scalar_one_or_none = scalar  # (a statement of at most one row: the callers' own)


class PlainConnection:
    """One driver connection, executing statements built once (by identity: a statement built per request would be
    compiled per request). `owned`: a connection of the free list, in autocommit, dropped when it fails; else one
    borrowed from SQLAlchemy inside its transaction, whose failure SQLAlchemy's pool handles."""

    def __init__(self, reads: PlainStatements, conn: Any, owned: bool = True):
        self._reads, self._conn, self._owned = reads, conn, owned

    def execute(self, stmt: Select | Insert, params: dict[str, Any] | None = None) -> PlainResult:
        compiled = self._reads.compiled(stmt)
        values: Any = {**compiled.defaults, **(params or {})}
        for name, processor in compiled.processors.items():
            if name in values:
                values[name] = processor(values[name])
        if compiled.positions is not None:
            values = tuple(values[name] for name in compiled.positions)
        try:
            cursor = self._conn.execute(compiled.sql, values)
            rows = cursor.fetchall()
            cursor.close()
        except self._reads.driver.Error as exc:
            if self._owned and isinstance(
                exc, (self._reads.driver.OperationalError, self._reads.driver.InterfaceError)
            ):
                self._reads.lost(self._conn)
            raise DBAPIError.instance(compiled.sql, values, exc, self._reads.driver.Error) from exc
        return PlainResult([compiled.row(row) for row in rows])


class PlainStatements:
    """`connect` opens a driver connection in autocommit; `driver` is its DB-API module (for its errors);
    `ping_after_idle_s` None: never ping (SQLite, a file)."""

    def __init__(self, connect: Callable[[], Any], driver: Any, dialect: Dialect, ping_after_idle_s: float | None):
        self._connect, self.driver, self._dialect, self._ping_after = connect, driver, dialect, ping_after_idle_s
        self._idle: list[tuple[Any, float]] = []  # last used last; list ops are atomic
        self._compiled: weakref.WeakKeyDictionary[Select | Insert, _Compiled] = weakref.WeakKeyDictionary()

    def compiled(self, stmt: Select | Insert) -> _Compiled:
        found = self._compiled.get(stmt)
        if found is None:
            found = self._compiled[stmt] = self._compile(stmt)
        return found

    def _compile(self, stmt: Select | Insert) -> _Compiled:
        compiled = stmt.compile(dialect=self._dialect)
        columns = list(stmt.selected_columns if isinstance(stmt, Select) else stmt.exported_columns)
        binds: dict[str, Callable[[Any], Any]] = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(self._dialect).bind_processor(self._dialect))
        }
        names = [column.key or f"_{i}" for i, column in enumerate(columns)]
        row_type: Any = namedtuple("Row", names, rename=True)  # type: ignore[misc]  # names known at run time
        make: Callable[[Any], Any] = row_type._make
        processors = [
            (i, processor)
            for i, column in enumerate(columns)
            if (processor := column.type.dialect_impl(self._dialect).result_processor(self._dialect, None))
        ]
        row = make
        if processors:

            def row(values: tuple) -> Any:
                processed = list(values)
                for i, processor in processors:
                    processed[i] = processor(processed[i])
                return make(processed)

        positions = tuple(compiled.positiontup or ()) if compiled.positional else None
        return _Compiled(compiled.string, dict(compiled.params), binds, positions, row)

    def borrowed(self, dbapi_connection: Any) -> PlainConnection:
        """For a driver connection SQLAlchemy holds in a transaction (see PlainConnection)."""
        return PlainConnection(self, dbapi_connection, owned=False)

    @contextlib.contextmanager
    def connection(self) -> Iterator[PlainConnection]:
        conn = self._take()
        yield PlainConnection(self, conn)
        if not getattr(conn, "closed", False):  # (sqlite3's have no such attribute, and do not break)
            self._idle.append((conn, time.monotonic()))

    def _take(self) -> Any:
        while True:
            try:
                conn, returned_at = self._idle.pop()
            except IndexError:
                try:
                    return self._connect()
                except self.driver.Error as exc:
                    raise DBAPIError.instance("connect", None, exc, self.driver.Error) from exc
            if self._ping_after is None or time.monotonic() - returned_at < self._ping_after:
                return conn  # used a moment ago: alive a moment ago
            try:
                conn.execute("SELECT 1").close()
                return conn
            except self.driver.Error:
                self.lost(conn)

    def lost(self, conn: Any) -> None:
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
