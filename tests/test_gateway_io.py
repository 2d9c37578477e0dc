"""The gateway's I/O, in-process: a response's head sent with its body (service/http_protocol.py), the hop to engines
(service/upstream.py) and a relayed stream whose client goes away (service/gateway_stream.py's EventStream)."""

from __future__ import annotations

import asyncio

import pytest

from service.gateway_stream import EventStream
from service.http_protocol import _HeadHoldingTransport
from service.upstream import UpstreamError, UpstreamPool


class _Recorder:
    """A transport that records each write (one system call each)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks) -> None:
        self.writes.append(b"".join(bytes(c) for c in chunks))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


def test_a_head_goes_out_with_the_body_in_one_write_and_nothing_else_is_held():
    async def main():
        inner = _Recorder()
        transport = _HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert inner.writes == [] and transport.get_write_buffer_size() > 0
        transport.write(b"{}")
        assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        transport.write(b"data: 1\n\n")  # not a head: at once
        assert inner.writes[-1] == b"data: 1\n\n"
        transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # a head with no body: out on the loop's next turn
        assert len(inner.writes) == 2
        await asyncio.sleep(0)
        assert inner.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n"
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.close()  # what is held goes out before the connection closes
        assert inner.writes[-1] == b"HTTP/1.1 200 OK\r\n\r\n" and inner.closed
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's own

    asyncio.run(main())


async def _engine(answer: bytes):
    """A stand-in engine that answers every request with `answer`, then closes."""

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(
    "answer, status, body",
    [
        (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}", 200, b"{}"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 200, b"{}"),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy", 503, b"busy"),  # no headers; delimited by the close
    ],
)
def test_the_engine_answer_is_read_whole(answer, status, body):
    async def main():
        server, url = await _engine(answer)
        pool = UpstreamPool()
        async with server:
            reply = await pool.post(url + "/v1/chat/completions", b"{}", {"content-type": "application/json"})
            return reply.status, await reply.read()

    assert asyncio.run(main()) == (status, body)


def test_an_engine_that_closes_mid_headers_is_an_upstream_error():
    async def main():
        server, url = await _engine(b"HTTP/1.1 200 OK\r\ncontent-type: appl")
        async with server:
            await UpstreamPool().post(url + "/v1/chat/completions", b"{}", {})

    with pytest.raises(UpstreamError, match="bad response headers"):
        asyncio.run(main())


def test_a_stream_whose_client_goes_away_stops_and_closes_its_events():
    """The client disconnects after the first event: the relay ends there (its generator closed, so the engine's
    connection is released and the generation aborted), and the response returns normally."""

    async def main():
        gone = asyncio.Event()
        closed = asyncio.Event()
        sent: list[dict] = []

        async def events():
            try:
                yield b"data: 1\n\n"
                gone.set()
                await asyncio.sleep(30)  # an engine still generating
                yield b"data: 2\n\n"
            finally:
                closed.set()

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        response = EventStream(events(), media_type="text/event-stream")
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST", "headers": []}
        await asyncio.wait_for(response(scope, receive, send), 5)
        return sent, closed.is_set()

    sent, closed = asyncio.run(main())
    assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b"data: 1\n\n"]
    assert closed


def test_a_stream_that_ends_is_not_cut_by_its_watcher():
    async def main():
        sent: list[dict] = []
        done = asyncio.Event()

        async def events():
            for i in range(3):
                yield b"data: %d\n\n" % i
                await asyncio.sleep(0)

        async def receive():  # as uvicorn: a disconnect once the response is complete
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        response = EventStream(events(), media_type="text/event-stream")
        await response({"type": "http", "method": "POST", "headers": []}, receive, send)
        await asyncio.sleep(0.01)  # the watcher, woken by the disconnect, must find nothing to cancel
        return sent

    sent = asyncio.run(main())
    assert [m.get("body") for m in sent[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert dict(sent[0]["headers"])[b"content-type"] == b"text/event-stream; charset=utf-8"
