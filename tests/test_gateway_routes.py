"""The gateway's cached routes, in-process (a real database and a real HTTP engine stand-in on loopback): a route
cached for ROUTE_TTL_S may name an engine that is gone (its endpoint scaled to zero, or moved) by the time it is
used. When that engine refuses the connection, the request was never sent, so the gateway resolves the route
again from the database once, instead of answering 502."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from service import projects
from service.context import AppContext
from service.db.tables import Endpoint
from service.endpoint_states import EndpointState
from service.errors import BadGateway
from service.gateway import Gateway
from service.settings import Settings
from service.usage import UsageBook
from tests.support import free_port

REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "hone-tiny",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
BODY = {"model": "hone-tiny", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def ctx(tmp_path):
    context = AppContext.build(Settings(data_dir=tmp_path, storage_url=(tmp_path / "blobs").as_uri()))
    context.project_id = projects.create_project(context, "routes")["id"]
    with context.db.write() as session:
        now = int(time.time())
        session.add(
            Endpoint(
                id="ep-routes",
                project_id=context.project_id,
                model="hone-tiny",
                kind="base",
                base_model="hone-tiny",
                state=EndpointState.READY.value,
                engine="builtin",
                engine_key="base:hone-tiny",
                url=f"http://127.0.0.1:{free_port()}",  # nothing listens
                created_at=now,
                updated_at=now,
            )
        )
    return context


def _move_engine(ctx, url: str) -> None:
    with ctx.db.write() as session:
        session.query(Endpoint).filter_by(id="ep-routes").update({"url": url})


async def _engine(requests: list[bytes]):
    """An engine stand-in: answers every POST with REPLY."""

    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        requests.append(await reader.readexactly(length))
        payload = json.dumps(REPLY).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_a_cached_route_whose_engine_is_gone_is_resolved_again_and_the_request_served(ctx):
    async def main():
        gateway, requests = Gateway(ctx, UsageBook(), lambda key: "sk-engine"), []
        try:
            await gateway.resolve(ctx.project_id, "hone-tiny")  # cached, naming an engine nobody runs
            server, url = await _engine(requests)
            _move_engine(ctx, url)  # the endpoint's engine is elsewhere now
            async with server:
                reply = await gateway.relay(
                    ctx.project_id, "/v1/chat/completions", json.dumps(BODY).encode(), BODY, None
                )
            return reply, requests
        finally:
            await gateway.close()

    reply, requests = asyncio.run(main())
    assert reply.status_code == 200
    assert json.loads(reply.body)["choices"][0]["message"]["content"] == "hi"
    assert len(requests) == 1  # sent once: the refused attempt never reached an engine


def test_a_route_fresh_from_the_database_whose_engine_is_gone_answers_502_without_a_second_try(ctx):
    async def main():
        gateway = Gateway(ctx, UsageBook(), lambda key: "sk-engine")
        try:
            with pytest.raises(BadGateway) as refused:
                await gateway.relay(ctx.project_id, "/v1/chat/completions", json.dumps(BODY).encode(), BODY, None)
            return refused.value, gateway.cached_route(ctx.project_id, "hone-tiny")
        finally:
            await gateway.close()

    error, cached = asyncio.run(main())
    assert error.code == "endpoint_unreachable" and "unreachable" in str(error)
    assert cached is None  # forgotten: the next request looks it up again
