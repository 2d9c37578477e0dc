"""One multipart/form-data upload while it streams in: parts, fields and the file name, under the rules of
RFC 7578 and what real clients send.

A file name arrives in one of two forms, and both are read as the client meant them:
- `filename="..."`, UTF-8 bytes in a quoted string (RFC 7578 §4.2, browsers, httpx and so the openai SDK).
  Clients escape `"` and control characters as `%22` / `%0D` / `%XX` (the HTML5 rule), which are decoded;
  any other `%` is part of the name.
- `filename*=UTF-8''%E2%82%AC.jsonl` (RFC 5987/6266, sent by requests and curl's older releases), which wins
  over `filename` when both are present.

A name holding a control character, or longer than MAX_FILENAME_CHARS, is refused: it would be stored and
echoed back to every client listing files, and PostgreSQL cannot store a NUL at all. The parse also refuses
what would otherwise be stored wrongly: a second file part, a repeated field, a body that ends before its
closing boundary, and bytes that are not multipart at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from service.errors import ErrorCode, InvalidRequest, excerpt

FIELD_LIMIT = 64 * 1024  # non-file form fields
MAX_FILENAME_CHARS = 255
_HEADER_LIMIT = 16 * 1024  # one part's headers

# One `; key=value` parameter of Content-Disposition: a quoted string (with backslash escapes) or a token.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_FORM_ESCAPE = re.compile(r"%(22|[01][0-9A-Fa-f]|7[Ff])")  # what HTML5 / httpx percent-encode in a name
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _bad(message: str, param: str = "file", code: str = ErrorCode.INVALID_MULTIPART) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def disposition(raw: bytes) -> tuple[str | None, str | None]:
    """The part's `name` and file name (None when it has no file name) from a raw Content-Disposition value."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(
            "The Content-Disposition header of a part is not valid UTF-8; send file names as UTF-8 "
            "(RFC 7578) or as filename*=UTF-8''... (RFC 5987).",
            code=ErrorCode.INVALID_FILENAME,
        ) from None
    kind, _, params = value.partition(";")
    if kind.strip().lower() != "form-data":
        raise _bad(f"Each part must be 'Content-Disposition: form-data', not '{excerpt(kind.strip())}'.")
    options: dict[str, str] = {}
    for match in _PARAM.finditer(";" + params):
        key, text = match.group(1).lower(), match.group(2).strip()
        if text.startswith('"') and text.endswith('"') and len(text) >= 2:
            text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        options.setdefault(key, text)
    filename = None
    if "filename*" in options:
        filename = _extended(options["filename*"])
    elif "filename" in options:
        filename = _FORM_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), options["filename"])
    return options.get("name"), filename


def _extended(value: str) -> str:
    """An RFC 5987 ext-value: charset'language'percent-encoded bytes."""
    charset, quote, rest = value.partition("'")
    _, quote2, encoded = rest.partition("'")
    if not quote or not quote2 or charset.lower() not in ("utf-8", "iso-8859-1"):
        raise _bad(
            f"filename* must be UTF-8''<percent-encoded name> (RFC 5987), not '{excerpt(value)}'.",
            code=ErrorCode.INVALID_FILENAME,
        )
    try:
        return unquote(encoded, encoding=charset.lower(), errors="strict")
    except UnicodeDecodeError:
        raise _bad("filename* is not valid UTF-8 once percent-decoded.", code=ErrorCode.INVALID_FILENAME) from None


def checked_filename(name: str) -> str:
    """The name to store: the last path segment of what was sent (clients on Windows send whole paths), or
    InvalidRequest when it cannot be stored as sent."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if _CONTROL.search(base):
        raise _bad(
            f"The file name '{excerpt(base)}' contains a control character; rename the file.",
            code=ErrorCode.INVALID_FILENAME,
        )
    if len(base) > MAX_FILENAME_CHARS:
        raise _bad(
            f"The file name is {len(base)} characters long; the limit is {MAX_FILENAME_CHARS}.",
            code=ErrorCode.INVALID_FILENAME,
        )
    return base or "upload"


class MultipartUpload:
    """Feeds body chunks to the parser; the file's bytes collect in `pending` for the caller to store, and
    `on_file` runs once the file part's headers are read (so a bad name fails before the body streams)."""

    def __init__(self, boundary: bytes, on_file: Callable[[str], None]):
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.pending: list[bytes] = []
        self.complete = False  # the closing boundary was seen
        self._on_file = on_file
        self._headers: dict[str, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part_name: str | None = None
        self._part_is_file = False
        self._field_value = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def write(self, chunk: bytes) -> None:
        if self.complete:
            return  # the epilogue after the closing boundary carries nothing (RFC 2046 §5.1.1)
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise _bad("The request body is not valid multipart/form-data.") from None

    def finish(self) -> None:
        """Refuses a body that ended early: without its closing boundary the last part may be cut short."""
        if not self.complete:
            raise _bad(
                "The upload ended before the multipart body's closing boundary; it may have been cut "
                "short. Nothing was stored.",
                code=ErrorCode.INCOMPLETE_UPLOAD,
            )

    def _part_begin(self) -> None:
        self._headers, self._field_value = {}, bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > _HEADER_LIMIT:
            raise _bad("A part's headers are too large.")

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        raw = self._headers.get("content-disposition")
        if raw is None:
            raise _bad("Each part needs a Content-Disposition header naming its field.")
        name, filename = disposition(raw)
        if not name:
            raise _bad('Each part\'s Content-Disposition needs a name (name="file", name="purpose", ...).')
        self._part_name = name
        self._part_is_file = filename is not None or name == "file"
        if self._part_is_file:
            if name != "file":
                raise InvalidRequest(
                    f"Unexpected file field '{excerpt(name)}'; send the file as 'file'.",
                    param=excerpt(name),
                    code=ErrorCode.INVALID_VALUE,
                )
            if self.filename is not None:
                raise InvalidRequest("Send exactly one 'file' field.", param="file", code=ErrorCode.INVALID_VALUE)
            self.filename = checked_filename(filename or "upload")
            self._on_file(self.filename)
        elif name in self.fields:
            raise InvalidRequest(
                f"The form field '{excerpt(name)}' was sent twice; send it once.",
                param=excerpt(name),
                code=ErrorCode.INVALID_VALUE,
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_is_file:
            self.pending.append(data[start:end])
        else:
            self._field_value += data[start:end]
            if len(self._field_value) > FIELD_LIMIT:
                raise InvalidRequest(
                    f"Form field '{excerpt(self._part_name)}' is too large.",
                    param=excerpt(self._part_name),
                    code=ErrorCode.INVALID_VALUE,
                )

    def _part_end(self) -> None:
        if not self._part_is_file and self._part_name:
            try:
                self.fields[self._part_name] = self._field_value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"Form field '{excerpt(self._part_name)}' is not valid UTF-8.",
                    param=excerpt(self._part_name),
                    code=ErrorCode.INVALID_VALUE,
                ) from None

    def _end(self) -> None:
        self.complete = True
