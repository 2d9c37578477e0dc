"""Stored completions (OpenAI's `store: true`): chat completions made through the gateway kept per project, read
back with `client.chat.completions.list / retrieve / messages.list / update / delete`, and exported to a fine-tune
file (a Hone extension), the way OpenAI turns a large model's answers into a small model's training data.

A stored completion is the request's messages and parameters and the response as the caller got it. Another
project's completions do not exist for a project: every read is by (project, id)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from service import files
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import StoredCompletion
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt
from service.schemas import Metadata

log = logging.getLogger("hone.stored_completions")

# Parameters of the request kept beside its messages (what OpenAI shows on a stored completion).
KEPT_PARAMS = (
    "temperature",
    "top_p",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "response_format",
)
MAX_EXPORT = 100_000


def gateway_fields(body: dict) -> tuple[bool, dict | None]:
    """(`store`, `metadata`) of a chat completion request, checked: they are the gateway's, never the engine's."""
    store, metadata = body.get("store", False), body.get("metadata")
    if not isinstance(store, bool):
        raise InvalidRequest("store must be a boolean.", param="store", code=ErrorCode.INVALID_VALUE)
    if metadata is not None:
        if not store:
            raise InvalidRequest(
                "metadata is kept with a stored completion only: give store: true with it.",
                param="metadata",
                code=ErrorCode.INVALID_VALUE,
            )
        _check_metadata(metadata, "metadata")
    return store, metadata


_METADATA = TypeAdapter(Metadata)


def _check_metadata(metadata: Any, param: str) -> None:
    """OpenAI's metadata rules, as job bodies check them (service.schemas.Metadata), for a gateway body's."""
    try:
        _METADATA.validate_python(metadata)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        raise InvalidRequest(
            f"{param}: {error['msg']}", param=f"{param}.{where}" if where else param, code=ErrorCode.INVALID_VALUE
        ) from None


@dataclass(frozen=True)
class Keep:
    """A request's ask to be stored (`store: true`), with its metadata."""

    metadata: dict | None


def store(ctx: AppContext, project_id: str, model: str, request: dict, response: dict, metadata: dict | None) -> None:
    """Keeps one answered completion. A completion id seen twice in a project is kept once."""
    row = StoredCompletion(
        id=str(response.get("id") or ""),
        project_id=project_id,
        model=model,
        created_at=int(response.get("created") or time.time()),
        metadata_=metadata or {},
        request={"messages": request.get("messages", []), **{k: request[k] for k in KEPT_PARAMS if k in request}},
        response=response,
    )
    try:
        with ctx.db.write() as session:
            session.add(row)
    except IntegrityError:
        log.warning("a stored completion's id was already stored", extra={"completion_id": row.id})


def _row(session, principal: ProjectPrincipal, completion_id: str) -> StoredCompletion:
    row = session.execute(
        select(StoredCompletion).where(
            StoredCompletion.project_id == principal.project_id, StoredCompletion.id == completion_id
        )
    ).scalar()
    if row is None:
        raise NotFound(
            f"No stored chat completion found with id '{excerpt(completion_id)}'.",
            param="completion_id",
            code=ErrorCode.NOT_FOUND,
        )
    return row


def completion_api(row: StoredCompletion) -> dict:
    """The completion as the caller got it, with its metadata and the request's parameters (OpenAI's shape)."""
    params = {k: v for k, v in row.request.items() if k != "messages"}
    return {
        **row.response,
        "id": row.id,
        "object": "chat.completion",
        "model": row.model,
        "metadata": row.metadata_ or {},
        **params,
    }


def _page(items: list[dict], limit: int) -> dict:
    shown = items[:limit]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(items) > limit,
    }


def _filtered(principal: ProjectPrincipal, model: str | None, metadata: dict[str, str] | None):
    stmt = select(StoredCompletion).where(StoredCompletion.project_id == principal.project_id)
    if model:
        stmt = stmt.where(StoredCompletion.model == model)
    return stmt, metadata or {}


def _matches(row: StoredCompletion, metadata: dict[str, str]) -> bool:
    have = row.metadata_ or {}
    return all(have.get(k) == v for k, v in metadata.items())


def list_completions(
    ctx: AppContext,
    principal: ProjectPrincipal,
    *,
    model: str | None,
    metadata: dict[str, str] | None,
    after: str | None,
    limit: int,
    order: str,
) -> dict:
    stmt, wanted = _filtered(principal, model, metadata)
    column = StoredCompletion.seq
    with ctx.db.read() as session:
        if after:
            cursor = _row(session, principal, after).seq
            stmt = stmt.where(column > cursor if order == "asc" else column < cursor)
        stmt = stmt.order_by(column.asc() if order == "asc" else column.desc())
        found: list[dict] = []
        for row in session.execute(stmt.execution_options(yield_per=200)).scalars():
            if _matches(row, wanted):
                found.append(completion_api(row))
                if len(found) > limit:
                    break
    return _page(found, limit)


def get_completion(ctx: AppContext, principal: ProjectPrincipal, completion_id: str) -> dict:
    with ctx.db.read() as session:
        return completion_api(_row(session, principal, completion_id))


def list_messages(
    ctx: AppContext, principal: ProjectPrincipal, completion_id: str, *, after: str | None, limit: int, order: str
) -> dict:
    """The request's messages, each with an id of its own (`{completion id}-{index}`)."""
    with ctx.db.read() as session:
        row = _row(session, principal, completion_id)
    messages = [_stored_message(f"{row.id}-{i}", m) for i, m in enumerate(row.request.get("messages", []))]
    if order == "desc":
        messages.reverse()
    if after:
        ids = [m["id"] for m in messages]
        if after not in ids:
            raise InvalidRequest(
                f"after: no message '{excerpt(after)}' in this completion.",
                param="after",
                code=ErrorCode.INVALID_CURSOR,
            )
        messages = messages[ids.index(after) + 1 :]
    return _page(messages, limit)


def _stored_message(message_id: str, message: dict) -> dict:
    content = message.get("content")
    parts = content if isinstance(content, list) else None
    text = "".join(p.get("text", "") for p in parts if isinstance(p, dict)) if parts is not None else content
    return {
        "id": message_id,
        "role": message.get("role"),
        "content": text,
        "name": message.get("name"),
        "content_parts": parts,
        **({"tool_calls": message["tool_calls"]} if message.get("tool_calls") else {}),
        **({"tool_call_id": message["tool_call_id"]} if message.get("tool_call_id") else {}),
    }


def update_completion(ctx: AppContext, principal: ProjectPrincipal, completion_id: str, metadata: Any) -> dict:
    """Only the metadata of a stored completion can change (as OpenAI's); the body model checked it."""
    with ctx.db.write() as session:
        row = _row(session, principal, completion_id)
        row.metadata_ = dict(metadata or {})
        return completion_api(row)


def delete_completion(ctx: AppContext, principal: ProjectPrincipal, completion_id: str) -> dict:
    with ctx.db.write() as session:
        row = _row(session, principal, completion_id)
        session.execute(delete(StoredCompletion).where(StoredCompletion.seq == row.seq))
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


def export_file(
    ctx: AppContext,
    principal: ProjectPrincipal,
    *,
    model: str | None,
    metadata: dict[str, str] | None,
    created_after: int | None,
    created_before: int | None,
    limit: int,
    filename: str,
) -> dict:
    """The stored completions that match, oldest first, as OpenAI chat training lines (the request's messages and
    the first choice's answer), validated and stored as a `fine-tune` file of the project."""
    stmt, wanted = _filtered(principal, model, metadata)
    if created_after is not None:
        stmt = stmt.where(StoredCompletion.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(StoredCompletion.created_at < created_before)
    with ctx.db.read() as session:
        lines = [
            line
            for row in session.execute(stmt.order_by(StoredCompletion.seq)).scalars()
            if _matches(row, wanted) and (line := _training_line(row)) is not None
        ][:limit]
    if not lines:
        raise InvalidRequest(
            "No stored completion with an answer matches this filter: nothing to export.",
            param="model" if model else None,
            code=ErrorCode.INVALID_FILTER,
        )
    row = files.import_fine_tune_file(
        ctx, principal, filename, _chunks(lines), param="filter", source="the stored completions"
    )
    return files.file_api(row)


def _training_line(row: StoredCompletion) -> dict | None:
    choices = row.response.get("choices") or []
    message = (choices[0].get("message") if choices else None) or {}
    if not (message.get("content") or message.get("tool_calls")):
        return None
    answer = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        answer["tool_calls"] = message["tool_calls"]
    line: dict[str, Any] = {"messages": [*row.request.get("messages", []), answer]}
    if row.request.get("tools"):
        line["tools"] = row.request["tools"]
    return line


def _chunks(lines: list[dict]) -> Iterator[bytes]:
    for line in lines:
        yield json.dumps(line, ensure_ascii=False).encode() + b"\n"


class StreamedAnswer:
    """A streamed chat completion put back together from its SSE events, to store it as the caller read it."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict | None = None

    def feed(self, event: bytes) -> None:
        if not event.startswith(b"data: {"):
            return
        try:
            chunk = json.loads(event[6:])
        except ValueError:
            return
        self.head = self.head or {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            got = self.choices.setdefault(choice.get("index", 0), {"content": "", "finish_reason": None})
            delta = choice.get("delta") or {}
            got["content"] += delta.get("content") or ""
            got["finish_reason"] = choice.get("finish_reason") or got["finish_reason"]

    def completion(self) -> dict | None:
        if not self.head.get("id") or not self.choices:
            return None
        return {
            **self.head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c["content"]},
                    "finish_reason": c["finish_reason"],
                    "logprobs": None,
                }
                for i, c in sorted(self.choices.items())
            ],
            "usage": self.usage,
        }
