"""A lean HTTP/1.1 client for the gateway's hop to engines: keep-alive connections over asyncio streams.

The gateway only ever POSTs JSON to engines on trusted addresses and relays what comes back, so it needs
a small slice of HTTP: Content-Length or chunked bodies, keep-alive, nothing else. httpx costs about 2 ms of
CPU a request on a small machine; this costs a tenth of that, which is most of the gateway's added latency."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class UpstreamError(Exception):
    pass


class EngineUnreachable(UpstreamError):
    """No connection could be made: the request was never sent, so sending it elsewhere repeats nothing."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False


@dataclass
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    _conn: _Connection | None  # None once released
    _pool: UpstreamPool
    _address: tuple[str, int]
    _done: bool = field(default=False)

    def _keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each chunk of a chunked response, or the Content-Length body in pieces."""
        assert self._conn is not None, "the body was read after release()"
        reader = self._conn.reader
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")  # the empty trailer section
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif "content-length" in self.headers:
                remaining = int(self.headers["content-length"])
                while remaining:
                    data = await reader.read(min(remaining, 1 << 16))
                    if not data:
                        raise UpstreamError("the engine closed the connection mid-body")
                    remaining -= len(data)
                    yield data
            else:  # delimited by closing the connection
                while data := await reader.read(1 << 16):
                    yield data
                self.headers["connection"] = "close"
            self._done = True
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            raise UpstreamError(f"bad response body from the engine: {exc!r}") from exc
        finally:
            self.release()

    async def read(self) -> bytes:
        """The whole body. A Content-Length body (what engines send for a whole answer) is one read of that many
        bytes, without iter_chunks' generator."""
        length = self.headers.get("content-length")
        if length is None or "transfer-encoding" in self.headers or self._conn is None:
            return b"".join([chunk async for chunk in self.iter_chunks()])
        try:
            data = await self._conn.reader.readexactly(int(length))
            self._done = True
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            raise UpstreamError(f"bad response body from the engine: {exc!r}") from exc
        finally:
            self.release()
        return data

    def release(self) -> None:
        """Back to the pool when the body was read to the end; closed otherwise."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        if self._done and self._keep_alive():
            self._pool._put(self._address, conn)
        else:
            conn.writer.close()


class UpstreamPool:
    def __init__(self, *, connect_timeout: float = 5.0, max_idle_per_address: int = 64):
        self._idle: dict[tuple[str, int], list[_Connection]] = defaultdict(list)
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_address

    def _put(self, address: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle[address]
        if len(idle) < self._max_idle and not conn.writer.is_closing():
            conn.reused = True
            idle.append(conn)
        else:
            conn.writer.close()

    async def _connect(self, address: tuple[str, int], *, fresh: bool = False) -> _Connection:
        idle = None if fresh else self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn
            conn.writer.close()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), self._connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise EngineUnreachable(f"cannot connect to {address[0]}:{address[1]}: {exc!r}") from exc
        return _Connection(reader, writer)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        parts = urlsplit(url)
        address = (parts.hostname or "127.0.0.1", parts.port or 80)
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"host: {parts.netloc}", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (1, 2):
            conn = await self._connect(address, fresh=attempt == 2)
            try:
                conn.writer.write(request)
                await conn.writer.drain()
                # The status line and headers in one read: they come in one packet, and each await is a turn of
                # the event loop.
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                conn.writer.close()
                partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
                if b"\r\n" in partial:  # a status line, then the connection closed mid-headers
                    raise UpstreamError(f"bad response headers from the engine: {exc!r}") from exc
                # An idle keep-alive connection the engine closed meanwhile: it never saw the request.
                if conn.reused and attempt == 1:
                    continue
                raise UpstreamError(f"the engine at {address[0]}:{address[1]} closed the connection: {exc!r}") from exc
            except asyncio.LimitOverrunError as exc:
                conn.writer.close()
                raise UpstreamError(f"bad response headers from the engine: {exc!r}") from exc
            except (
                BaseException
            ):  # cancelled (the gateway's timeout): the answer may still come; the connection is spent
                conn.writer.close()
                raise
            answer = head.split(b"\r\n")
            fields: dict[str, str] = {}
            try:
                status = int(answer[0].split(b" ", 2)[1])
            except (ValueError, IndexError) as exc:
                conn.writer.close()
                raise UpstreamError(f"bad response headers from the engine: {exc!r}") from exc
            for line in answer[1:]:
                if line:
                    name, _, value = line.partition(b":")
                    fields[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
            return UpstreamResponse(status, fields, conn, self, address)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.writer.close()
        self._idle.clear()
