"""Cursor pagination over a table's `seq` order: `after` is the id of the last item seen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Select, bindparam
from sqlalchemy.orm import Session

from service.db.plain import PlainConnection
from service.errors import ErrorCode, InvalidRequest, excerpt


def check_limit(limit: int, maximum: int) -> int:
    if not 1 <= limit <= maximum:
        raise InvalidRequest(
            f"Invalid 'limit': {limit}; it must be between 1 and {maximum}.",
            param="limit",
            code=ErrorCode.INVALID_VALUE,
        )
    return limit


def _check_cursor(
    session: Session | Connection | PlainConnection, stmt: Select, params: dict[str, Any] | None, after: str
) -> None:
    """400 `invalid_cursor` unless `stmt` (the cursor's seq, within the caller's list) finds the cursor."""
    if session.execute(stmt, params).scalar() is None:
        raise InvalidRequest(
            f"Invalid 'after': no object with id '{excerpt(after)}' in this list.",
            param="after",
            code=ErrorCode.INVALID_CURSOR,
        )


def paginate(
    session: Session | Connection,
    stmt: Select,
    table: Any,
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
    as_rows: bool = False,
) -> tuple[Sequence[Any], bool]:
    """Runs `stmt` (already scoped to the caller) one page at a time; returns (rows, has_more): the objects
    `stmt` selects, or with `as_rows` the rows of the columns it selects."""
    if after:
        cursor = stmt.with_only_columns(table.seq).where(table.id == after)
        stmt = stmt.where(_past(table, cursor, newest_first))
    stmt = stmt.order_by(table.seq.desc() if newest_first else table.seq.asc()).limit(limit + 1)
    result = session.execute(stmt)
    rows = result.all() if as_rows else result.scalars().all()
    if after and not rows:
        _check_cursor(session, cursor, None, after)
    return rows[:limit], len(rows) > limit


def _past(table: Any, cursor: Select, newest_first: bool) -> Any:
    """The rows after the cursor in the list's order, the cursor's position a subquery (`cursor` selects its seq):
    the page is one statement. Only an empty page needs the cursor looked up on its own (`_check_cursor`), to tell
    the end of the list from a cursor that is not in it."""
    position = cursor.scalar_subquery()
    return table.seq < position if newest_first else table.seq > position


class FixedPages:
    """`paginate` over a statement built once, scoped by bind parameters (`params` of `page`). SQLAlchemy walks a
    statement to compute its cache key at every execution unless it is the same object; for a list of 19
    columns built per request that walk was ~12% of the request's CPU (py-spy, list jobs on PostgreSQL)."""

    def __init__(self, stmt: Select, table: Any, *, newest_first: bool = True):
        order = table.seq.desc() if newest_first else table.seq.asc()
        self._cursor = stmt.with_only_columns(table.seq).where(table.id == bindparam("after"))
        self._first = stmt.order_by(order).limit(bindparam("limit"))
        self._after = stmt.where(_past(table, self._cursor, newest_first)).order_by(order).limit(bindparam("limit"))

    def page(
        self,
        session: Session | Connection | PlainConnection,
        params: dict[str, Any],
        *,
        after: str | None,
        limit: int,
    ) -> tuple[Sequence[Any], bool]:
        """(rows, has_more): the rows of the columns the statement selects."""
        if after:
            rows = session.execute(self._after, {**params, "after": after, "limit": limit + 1}).all()
            if not rows:
                _check_cursor(session, self._cursor, {**params, "after": after}, after)
        else:
            rows = session.execute(self._first, {**params, "limit": limit + 1}).all()
        return rows[:limit], len(rows) > limit


def list_envelope(data: list[dict], has_more: bool, *, with_ids: bool = False, empty_id: str | None = None) -> dict:
    """OpenAI's list shape. `empty_id` fills first_id/last_id of an empty page: OpenAI's schema
    types them as nullable for checkpoints but as plain strings for files."""
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if with_ids:
        body["first_id"] = data[0]["id"] if data else empty_id
        body["last_id"] = data[-1]["id"] if data else empty_id
    return body
