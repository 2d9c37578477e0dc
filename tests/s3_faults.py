"""A fault-injecting HTTP proxy on loopback, in front of moto's S3 server: tests point boto3 (the control plane's
S3Storage, the trainer's S3Blobs) at it and tell it, per method and path pattern, to answer an error status,
reset the connection, or stall past the client's read timeout, N times or until told otherwise.

Faults are applied before the request reaches S3 (a faulted request never changes the store): `reset` reads the
whole request, then resets the connection instead of answering, as a dropped connection does. The exception is
`drop_reply`: the request reaches S3 and takes effect, and then the reply is lost to a reset, so the client
cannot know that it did."""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Fault:
    method: str  # "PUT", "POST", ... or "*"
    path: re.Pattern  # searched in the request's path and query
    action: str  # "status" | "reset" | "stall" | "drop_reply"
    times: int | None  # None: until cleared
    status: int = 503
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        return (
            self.method in ("*", method)
            and self.path.search(target) is not None
            and (self.times is None or self.hits < self.times)
        )


@dataclass
class Seen:
    method: str
    target: str
    fault: str | None  # the action applied, None when forwarded


@dataclass
class _State:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)  # ends stalls early (clear, stop)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    state: _State

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._body()
        with self.state.lock:
            fault = next((f for f in self.state.faults if f.matches(self.command, self.path)), None)
            if fault is not None:
                fault.hits += 1
            self.state.seen.append(Seen(self.command, self.path, fault.action if fault else None))
        if fault is None:
            self._forward(body)
        elif fault.action == "drop_reply":
            self._forward(body, relay=False)
            self._reset()
        elif fault.action == "status":
            payload = (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                b"<Message>injected fault</Message></Error>"
            )
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        elif fault.action == "reset":
            self._reset()
        else:  # stall: say nothing until the client gives up (or the test ends), then hang up
            self.state.released.wait(600)
            self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER 0: close() sends RST, the client sees "connection reset by peer"
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _forward(self, body: bytes, relay: bool = True) -> None:
        upstream = urlparse(self.state.upstream)
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if not relay:
                return
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                self.end_headers()
            else:
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class S3FaultProxy:
    """`S3FaultProxy(moto.url)`; `.url` is the endpoint to give boto3. Faults match in the order added."""

    def __init__(self, upstream: str):
        self._state = _State(upstream)
        handler = type("Handler", (_Handler,), {"state": self._state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()

    def fail(self, method: str, path: str, *, times: int | None = None, status: int = 503) -> Fault:
        return self._add(Fault(method, re.compile(path), "status", times, status))

    def reset(self, method: str, path: str, *, times: int | None = None) -> Fault:
        return self._add(Fault(method, re.compile(path), "reset", times))

    def stall(self, method: str, path: str, *, times: int | None = None) -> Fault:
        return self._add(Fault(method, re.compile(path), "stall", times))

    def drop_reply(self, method: str, path: str, *, times: int | None = None) -> Fault:
        return self._add(Fault(method, re.compile(path), "drop_reply", times))

    def _add(self, fault: Fault) -> Fault:
        with self._state.lock:
            self._state.released.clear()
            self._state.faults.append(fault)
        return fault

    def clear(self) -> None:
        """No more faults; stalled requests are let go (hung up on)."""
        with self._state.lock:
            self._state.faults.clear()
        self._state.released.set()

    def seen(self, method: str | None = None, path: str = "") -> list[Seen]:
        pattern = re.compile(path)
        with self._state.lock:
            return [s for s in self._state.seen if (method is None or s.method == method) and pattern.search(s.target)]

    def forget(self) -> None:
        with self._state.lock:
            self._state.seen.clear()

    def stop(self) -> None:
        self.clear()
        self._server.shutdown()
        self._server.server_close()
