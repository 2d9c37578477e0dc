"""The `filter` of tuningJobs.list: the part of AIP-160 that tuning-job lists need, as SQL conditions.

    state="JOB_STATE_SUCCEEDED" AND create_time>"2026-01-01T00:00:00Z" AND labels.team=nlp AND base_model=hone-tiny

Terms are `field OP value` joined by AND. Fields: `state` (= or !=; a name or its number), `create_time`
(=, !=, <, <=, >, >= an RFC 3339 time), `labels.KEY` (= or != a value; `labels.KEY:*` has the key), `base_model`
(= or !=). camelCase field names work too; values may be quoted."""

from __future__ import annotations

import operator
import re

from sqlalchemy import exists, not_, or_

from service.db.tables import Job, JobMetadata
from service.errors import ErrorCode, InvalidRequest
from service.vertex.resources import parse_rfc3339
from service.vertex.states import JOB_STATE_NUMBERS, state_condition

_TERM = re.compile(
    r"\s*(?P<field>[A-Za-z_][\w.-]*)\s*(?P<op>!=|>=|<=|=|>|<|:)\s*"
    r'(?P<value>"(?:[^"\\]|\\.)*"|[^\s"()]+)\s*'
)
_AND = re.compile(r"AND\s", re.IGNORECASE)
_COMPARE = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_STATE_NAMES = {n: name for name, n in JOB_STATE_NUMBERS.items()}


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid filter: {message}", param="filter", code=ErrorCode.INVALID_FILTER)


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _state(op: str, value: str):
    name = _STATE_NAMES.get(int(value)) if value.isdigit() else value.upper()
    if name not in JOB_STATE_NUMBERS:
        raise _bad(f"unknown state '{value}'; use a JOB_STATE_* name")
    if op not in ("=", "!="):
        raise _bad("state takes = or !=")
    condition = state_condition(name)
    return condition if op == "=" else not_(condition)


def _create_time(op: str, value: str):
    if op not in _COMPARE:
        raise _bad(f"create_time takes one of {', '.join(_COMPARE)}")
    try:
        seconds = parse_rfc3339(value)
    except ValueError:
        raise _bad(f"create_time needs an RFC 3339 time such as \"2026-01-31T00:00:00Z\", got '{value}'") from None
    return _COMPARE[op](Job.created_at, seconds)


def _label(key: str, op: str, value: str):
    if op == ":" and value == "*":
        return exists().where(JobMetadata.job_seq == Job.seq, JobMetadata.key == key)
    if op not in ("=", "!="):
        raise _bad(f"labels.{key} takes =, != or :*")
    has = exists().where(JobMetadata.job_seq == Job.seq, JobMetadata.key == key, JobMetadata.value == value)
    return has if op == "=" else ~has


def _base_model(op: str, value: str):
    if op not in ("=", "!="):
        raise _bad("base_model takes = or !=")
    matches = or_(Job.model == value, Job.base_model == value)
    return matches if op == "=" else not_(matches)


def _term(field: str, op: str, value: str):
    if field.startswith("labels."):
        return _label(field[len("labels.") :], op, value)
    by_field = {
        "state": _state,
        "create_time": _create_time,
        "createtime": _create_time,
        "base_model": _base_model,
        "basemodel": _base_model,
    }
    handler = by_field.get(field.lower())
    if handler is None:
        raise _bad(f"unknown field '{field}'; filter on state, create_time, labels.KEY or base_model")
    return handler(op, value)


def filter_conditions(text: str | None) -> list:
    """SQL conditions on Job for a filter expression (all must hold)."""
    conditions: list = []
    position, text = 0, (text or "").strip()
    while position < len(text):
        if conditions:
            joiner = _AND.match(text, position)
            if joiner is None:
                raise _bad(f"expected AND at position {position + 1}; only AND joins terms")
            position = joiner.end()
        term = _TERM.match(text, position)
        if term is None:
            raise _bad(f"expected `field OP value` at position {position + 1}")
        conditions.append(_term(term["field"], term["op"], _unquote(term["value"])))
        position = term.end()
    return conditions
