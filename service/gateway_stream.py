"""Relaying an engine's server-sent events to the caller: each event passed on as soon as it is complete, the
usage event the gateway asked for (to count tokens) dropped unless the caller asked for it too."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from service.errors import ErrorCode
from service.upstream import UpstreamError, UpstreamResponse

_USAGE_ONLY = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_CLOSED_ERROR = {
    "message": "The endpoint closed the stream.",
    "type": "server_error",
    "param": None,
    "code": ErrorCode.ENDPOINT_UNREACHABLE.value,
}
_CLOSED = b"data: " + json.dumps({"error": _CLOSED_ERROR}).encode() + b"\n\ndata: [DONE]\n\n"


async def relay_events(
    upstream: UpstreamResponse,
    wants_usage: bool,
    answer,  # a StreamedAnswer to feed (a stream asked to be stored), or None
    ended: Callable[[bool, dict, float | None], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """Yields the stream; `ended(failed, usage, first_token_at)` runs once it is over, however it ends."""
    usage: dict = {}
    failed = False
    pending = b""
    first_token_at = None
    try:
        async for chunk in upstream.iter_chunks():
            if first_token_at is None:
                first_token_at = time.perf_counter()
            pending += chunk
            while (end := pending.find(b"\n\n")) >= 0:
                event, pending = pending[: end + 2], pending[end + 2 :]
                if answer is not None:
                    answer.feed(event)
                if b'"usage"' in event and _USAGE_ONLY.search(event):
                    try:
                        usage = json.loads(event[event.index(b"{") :]).get("usage") or {}
                    except ValueError:
                        pass
                    if not wants_usage:
                        continue
                elif event.startswith(b'data: {"error"'):
                    failed = True
                yield event
        if pending:
            yield pending
    except UpstreamError:
        failed = True
        yield _CLOSED
    finally:
        upstream.release()
        await ended(failed, usage, first_token_at)
