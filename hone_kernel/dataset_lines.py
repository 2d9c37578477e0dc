"""How a JSONL dataset is cut into lines: one rule for validation (the server's and `hone files validate`), the
trainer, and every storage backend, so that a file trains exactly as it was checked.

A line ends at LF. One CR before the LF is dropped (files saved on Windows); a CR anywhere else is part of the
line, where JSON reads it as whitespace between tokens and refuses it inside a string. (Python's
`bytes.splitlines`, which botocore's `iter_lines` uses, also cuts at a bare CR: a line the validator saw as one
invalid line would have trained as two.) A UTF-8 byte order mark at the start of the file is dropped.
The cut does not depend on where chunk boundaries fall. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

UTF8_BOM = b"\xef\xbb\xbf"


class LineTooLong:
    """Stands for a line longer than the splitter's limit; its bytes are never held."""

    def __repr__(self) -> str:
        return "LineTooLong"


TOO_LONG = LineTooLong()


class LineSplitter:
    """Feed chunks in order; each call returns the lines completed so far (bytes without the line ending, or
    TOO_LONG for a line over `max_line_bytes`), and `finish` returns the last line when the file does not
    end with a newline."""

    def __init__(self, max_line_bytes: int | None = None):
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._started = False  # the byte order mark is settled
        self._skipping = False  # inside a line already returned as TOO_LONG

    def feed(self, chunk: bytes) -> list[bytes | LineTooLong]:
        self._buf += chunk
        if not self._started:
            if len(self._buf) < len(UTF8_BOM) and UTF8_BOM.startswith(bytes(self._buf)):
                return []  # could still be a byte order mark
            self._started = True
            if self._buf.startswith(UTF8_BOM):
                del self._buf[: len(UTF8_BOM)]
        return self._drain()

    def _drain(self) -> list[bytes | LineTooLong]:
        lines: list[bytes | LineTooLong] = []
        start, limit = 0, self.max_line_bytes
        while (nl := self._buf.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
            elif limit is not None and nl - start > limit:
                lines.append(TOO_LONG)
            else:
                lines.append(_line(self._buf[start:nl]))
            start = nl + 1
        del self._buf[:start]
        if limit is not None and len(self._buf) > limit:
            if not self._skipping:
                lines.append(TOO_LONG)
                self._skipping = True
            self._buf.clear()
        return lines

    def finish(self) -> list[bytes | LineTooLong]:
        if not self._started:
            self._started = True
            if self._buf.startswith(UTF8_BOM):
                del self._buf[: len(UTF8_BOM)]
        lines = self._drain()
        if self._buf and not self._skipping:
            lines.append(_line(self._buf))
        self._buf.clear()
        return lines


def _line(raw: bytearray) -> bytes:
    return bytes(raw[:-1] if raw.endswith(b"\r") else raw)


def dataset_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Every line of a dataset read as chunks, in order (blank ones included, so line numbers match the
    validator's)."""
    splitter = LineSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)  # type: ignore[misc]  # no limit: never TOO_LONG
    yield from splitter.finish()  # type: ignore[misc]
