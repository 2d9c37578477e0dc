"""Relaying an engine's server-sent events to the caller: each event passed on as soon as it is complete, the
usage event the gateway asked for (to count tokens) dropped unless the caller asked for it too."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

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


class EventStream(StreamingResponse):
    """A StreamingResponse that stops relaying when its client goes away, as Starlette's does, without an anyio task
    group per stream (uvicorn speaks ASGI 2.3, where a send to a gone client is silently dropped, so Starlette runs the
    stream and a disconnect listener side by side in one): setting that up came before the head could go out, about
    0.1 ms of the time to first token on the 2-core VM. Here one plain task waits for the disconnect and cancels the
    stream's own task, whose cancellation is then absorbed; any other cancellation goes on as it came."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None  # an ASGI app runs in a task
        streaming, gone = True, False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if streaming:
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone or task.uncancel() > 0:
                raise
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:  # a stream cut while its send waited: its generator ends now, not when collected
                await close()
        finally:
            streaming = False
            watcher.cancel()
        if self.background is not None:
            await self.background()
