"""uvicorn's HTTP protocol (httptools), with each response's head sent together with the start of its body.

uvicorn writes a response's status line and headers, then its body, as two writes: two system calls and two packets,
and the client, woken by the head, waits again for the body. On the gateway's path the write of the head alone took
50-90 us (a proxied chat completion, 2-core VM: a loopback send wakes the reader). Here a write that ends a head
(`\\r\\n\\r\\n`, a few hundred bytes) is held until the next write, which goes out with it in one `writelines`, or
until the event loop's next turn, whichever comes first: the same bytes, in one packet where there were two.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_END = b"\r\n\r\n"
_HOLD_MAX = 16384  # a head longer than this goes out at once


class _HeadHoldingTransport:
    """A transport that holds back a response head until the body's first write (or the loop's next turn)."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif len(data) <= _HOLD_MAX and data[-4:] == _HEAD_END:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:  # everything else: the transport's own
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """What service.server runs uvicorn with (`http=`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]
