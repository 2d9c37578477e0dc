"""Cursor pagination over a table's `seq` order: `after` is the id of the last item seen."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Select
from sqlalchemy.orm import Session

from service.errors import InvalidRequest


def check_limit(limit: int, maximum: int) -> int:
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"Invalid 'limit': {limit}; it must be between 1 and {maximum}.",
                             param="limit", code="invalid_value")
    return limit


def paginate(session: Session, stmt: Select, table: Any, *, after: str | None, limit: int,
             newest_first: bool = True, as_rows: bool = False) -> tuple[Sequence[Any], bool]:
    """Runs `stmt` (already scoped to the caller) one page at a time; returns (rows, has_more): the objects
    `stmt` selects, or with `as_rows` the rows of the columns it selects."""
    if after:
        cursor = session.execute(stmt.with_only_columns(table.seq).where(table.id == after)).scalar()
        if cursor is None:
            raise InvalidRequest(f"Invalid 'after': no object with id '{after}' in this list.",
                                 param="after", code="invalid_cursor")
        stmt = stmt.where(table.seq < cursor if newest_first else table.seq > cursor)
    stmt = stmt.order_by(table.seq.desc() if newest_first else table.seq.asc()).limit(limit + 1)
    result = session.execute(stmt)
    rows = result.all() if as_rows else result.scalars().all()
    return rows[:limit], len(rows) > limit


def list_envelope(data: list[dict], has_more: bool, *, with_ids: bool = False, empty_id: str | None = None) -> dict:
    """OpenAI's list shape. `empty_id` fills first_id/last_id of an empty page: OpenAI's schema
    types them as nullable for checkpoints but as plain strings for files."""
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if with_ids:
        body["first_id"] = data[0]["id"] if data else empty_id
        body["last_id"] = data[-1]["id"] if data else empty_id
    return body


