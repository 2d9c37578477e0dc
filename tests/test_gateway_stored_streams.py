"""A streamed completion asked to be stored (store: true) is stored even when its caller hangs up the moment it has
read [DONE], in-process with a real database. That disconnect cancels the stream's task, which by then may be storing
the answer; a CI run lost a stored completion that way, so the store must not be cancellable with the stream."""

from __future__ import annotations

import asyncio
import json

from service import projects
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.gateway import Gateway, Route
from service.settings import Settings
from service.stored_completions import Keep, list_completions
from service.usage import UsageBook

EVENTS = [
    {"id": "chatcmpl-s1", "created": 1, "model": "hone-tiny", "choices": [{"index": 0, "delta": {"content": "an"}}]},
    {"id": "chatcmpl-s1", "created": 1, "model": "hone-tiny", "choices": [{"index": 0, "delta": {"content": "swer"}}]},
    {
        "id": "chatcmpl-s1",
        "created": 1,
        "model": "hone-tiny",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    },
]


def test_a_stream_cancelled_as_it_ends_is_still_stored(tmp_path):
    ctx = AppContext.build(Settings(data_dir=tmp_path, storage_url=(tmp_path / "blobs").as_uri()))
    project_id = projects.create_project(ctx, "streams")["id"]
    gateway = Gateway(ctx, UsageBook(), lambda key: None)
    route = Route(url="http://127.0.0.1:9", api_key=None, engine_model="hone-tiny", model="hone-tiny")
    request = {"model": "hone-tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def scenario() -> None:
        answer, done = gateway._keeper(project_id, route, request, Keep(metadata={"topic": "t"}))
        for event in EVENTS:
            answer.feed(b"data: " + json.dumps(event).encode() + b"\n\n")
        ending = asyncio.ensure_future(done())
        await asyncio.sleep(0)  # the stream's end has begun ...
        ending.cancel()  # ... when the caller's disconnect cancels the stream's task
        await asyncio.gather(ending, return_exceptions=True)
        await gateway.close()  # waits for stores under way, as the app's shutdown does

    asyncio.run(scenario())
    principal = ProjectPrincipal(project_id=project_id, project_slug="streams")
    kept = list_completions(ctx, principal, model=None, metadata=None, after=None, limit=20, order="asc")
    assert [c["id"] for c in kept["data"]] == ["chatcmpl-s1"]
    assert kept["data"][0]["choices"][0]["message"]["content"] == "answer"
