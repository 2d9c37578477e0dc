"""Dataset validation: format detection and per-line checks for every format in docs/architecture.md (dataset formats).

The validator is fed bytes as they stream in, so a file is checked without ever
being held in memory whole. Errors name the 1-based line and the field path.

It lives on the client side, with no dependency beyond the standard library, so that
`hone files validate` checks a file offline with exactly the code the server runs on upload
(the control plane imports it through service.datasets).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hone_kernel.dataset_checks import (
    _Issues,
    _type_name,
    check_chat,
    check_gemini,
    check_pairs,
    check_preference,
    check_prompt_completion,
    check_raw_text,
    check_vertex_legacy,
)
from hone_kernel.dataset_lines import TOO_LONG, LineSplitter
from hone_kernel.dataset_prompts import check_gemini_prompt, check_reinforcement, is_gemini_prompt_line, is_prompt_line


class DatasetFormat(str, Enum):
    OPENAI_CHAT = "openai_chat"
    PROMPT_COMPLETION = "prompt_completion"
    OPENAI_PREFERENCE = "openai_preference"
    VERTEX_GEMINI = "vertex_gemini"
    VERTEX_LEGACY = "vertex_legacy"
    PAIRS = "pairs"
    RAW_TEXT = "raw_text"
    OPENAI_REINFORCEMENT = "openai_reinforcement"
    VERTEX_PROMPTS = "vertex_prompts"


FORMAT_LABELS = {
    DatasetFormat.OPENAI_CHAT: "OpenAI chat ({messages})",
    DatasetFormat.PROMPT_COMPLETION: "prompt/completion ({prompt, completion})",
    DatasetFormat.OPENAI_PREFERENCE: "OpenAI preference ({input, preferred_output, non_preferred_output})",
    DatasetFormat.VERTEX_GEMINI: "Vertex/Gemini ({contents})",
    DatasetFormat.VERTEX_LEGACY: "Vertex legacy ({input_text, output_text})",
    DatasetFormat.PAIRS: "pairs ({input, output} or {instruction, input?, output})",
    DatasetFormat.RAW_TEXT: "raw text ({text})",
    DatasetFormat.OPENAI_REINFORCEMENT: "OpenAI prompts ({messages} ending with the user's turn; other keys are "
    "the grader's item)",
    DatasetFormat.VERTEX_PROMPTS: "Vertex/Gemini prompts ({contents} ending with the user's turn)",
}

# Which training methods can use which format. Raw text trains on every token
# (continued pre-training) under the supervised method.
METHODS_FOR_FORMAT = {
    DatasetFormat.OPENAI_PREFERENCE: {"dpo"},
    # Prompts only: a grader (reinforcement) or a teacher (distillation) supplies what the model learns.
    DatasetFormat.OPENAI_REINFORCEMENT: {"reinforcement", "distillation"},
    DatasetFormat.VERTEX_PROMPTS: {"distillation"},  # no other keys: nothing for a grader to read
}
DEFAULT_METHODS = {"supervised"}


def methods_for(fmt: DatasetFormat) -> set[str]:
    return METHODS_FOR_FORMAT.get(fmt, DEFAULT_METHODS)


# Examples a training file needs, as OpenAI: the default of HONE_MIN_TRAINING_EXAMPLES, and what `hone files
# validate` checks offline. A validation file needs one.
MIN_TRAINING_EXAMPLES = 10


def too_few_examples(examples: int | None, minimum: int = MIN_TRAINING_EXAMPLES) -> str | None:
    """Why a job refuses a training file of `examples` examples (OpenAI's words), or None."""
    if (examples or 0) < minimum:
        return f"Training file has {examples or 0} example(s), but must have at least {minimum} examples"
    return None


@dataclass
class LineError:
    line: int
    field: str  # JSON path inside the line; "$" is the line itself
    code: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, field {self.field}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "code": self.code, "message": self.message}


@dataclass
class DatasetReport:
    format: DatasetFormat | None
    examples: int
    lines: int
    errors: list[LineError] = field(default_factory=list)
    total_errors: int = 0
    images: int = 0  # image parts in valid examples
    image_examples: int = 0  # examples holding at least one
    first_image: tuple[int, str] | None = None  # (line, field) of the first image
    image_bytes: int = 0  # bytes of the file that are images (data URLs): token estimates leave them out
    # Images named by reference (a file id, an s3:// or gs:// URI): where each is first named, (line, field). The
    # server reads and checks them (service/image_refs.py); offline they are left unchecked.
    image_refs: dict[str, tuple[int, str]] = field(default_factory=dict)
    max_errors: int = 20  # errors kept in `errors` (the validator's); the rest are counted in total_errors

    def add_error(self, error: LineError) -> None:
        """An error found after validation (images named by reference: service/image_refs.py), kept as the
        validator keeps its own."""
        self.total_errors += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(error)

    def media(self) -> dict[str, Any] | None:
        """What the file holds besides text, as stored with it and shown in its `dataset` summary."""
        if not self.images:
            return None
        assert self.first_image is not None  # counted with the images
        line, path = self.first_image
        return {
            "images": self.images,
            "image_examples": self.image_examples,
            "image_bytes": self.image_bytes,
            "first_image": {"line": line, "field": path},
        }

    @property
    def ok(self) -> bool:
        return self.total_errors == 0

    def summary(self) -> str:
        shown = "; ".join(str(e) for e in self.errors)
        more = self.total_errors - len(self.errors)
        return shown + (f"; and {more} more error(s)" if more > 0 else "")


CHECKERS: dict[DatasetFormat, Callable[[dict, _Issues], None]] = {
    DatasetFormat.OPENAI_CHAT: check_chat,
    DatasetFormat.PROMPT_COMPLETION: check_prompt_completion,
    DatasetFormat.OPENAI_PREFERENCE: check_preference,
    DatasetFormat.VERTEX_GEMINI: check_gemini,
    DatasetFormat.VERTEX_LEGACY: check_vertex_legacy,
    DatasetFormat.PAIRS: check_pairs,
    DatasetFormat.RAW_TEXT: check_raw_text,
    DatasetFormat.OPENAI_REINFORCEMENT: check_reinforcement,
    DatasetFormat.VERTEX_PROMPTS: check_gemini_prompt,
}


def detect_format(line: dict) -> DatasetFormat | None:
    keys = set(line)
    if keys & {"messages", "tools", "functions", "parallel_tool_calls"}:
        return DatasetFormat.OPENAI_REINFORCEMENT if is_prompt_line(line) else DatasetFormat.OPENAI_CHAT
    if keys & {"preferred_output", "non_preferred_output", "preferred_completion", "non_preferred_completion"}:
        return DatasetFormat.OPENAI_PREFERENCE
    if "input" in keys and isinstance(line["input"], dict):
        return DatasetFormat.OPENAI_PREFERENCE
    if keys & {"prompt", "completion"}:
        return DatasetFormat.PROMPT_COMPLETION
    if keys & {"contents", "systemInstruction", "system_instruction"}:
        return DatasetFormat.VERTEX_PROMPTS if is_gemini_prompt_line(line) else DatasetFormat.VERTEX_GEMINI
    if keys & {"input_text", "output_text"}:
        return DatasetFormat.VERTEX_LEGACY
    if keys & {"instruction", "output"} or "input" in keys:
        return DatasetFormat.PAIRS
    if "text" in keys:
        return DatasetFormat.RAW_TEXT
    return None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# Formats told apart by whether the first line ends with an answer: examples, or prompts.
_ANSWERED_OR_PROMPTS = (
    {DatasetFormat.OPENAI_CHAT, DatasetFormat.OPENAI_REINFORCEMENT},
    {DatasetFormat.VERTEX_GEMINI, DatasetFormat.VERTEX_PROMPTS},
)

# --- the streaming validator ------------------------------------------------------

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class DatasetValidator:
    """Feed bytes in order with `feed`, then call `finish` for the report. Lines are cut by
    hone_kernel.dataset_lines, the rule the trainer reads them by."""

    def __init__(self, *, max_line_bytes: int = 4 << 20, max_errors: int = 20):
        self.max_line_bytes = max_line_bytes
        self.max_errors = max_errors
        self._splitter = LineSplitter(max_line_bytes)
        self._head = bytearray()  # the first bytes, until the encoding can be told from them
        self._line_no = 1  # the next line's number
        self._started = False
        self._fatal = False
        self.format: DatasetFormat | None = None
        self._format_line = 0
        self.examples = 0
        self.errors: list[LineError] = []
        self.total_errors = 0
        self.images = 0
        self.image_examples = 0
        self.first_image: tuple[int, str] | None = None
        self.image_bytes = 0
        self.image_refs: dict[str, tuple[int, str]] = {}

    def _error(self, line: int, path: str, code: str, message: str) -> None:
        self.total_errors += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(LineError(line, path or "$", code, message))

    def feed(self, chunk: bytes) -> None:
        if self._fatal or not chunk:
            return
        if not self._started:
            self._head += chunk
            if len(self._head) < 3:
                return
            chunk = self._start()
        self._take(self._splitter.feed(chunk))

    def _start(self) -> bytes:
        self._started = True
        head, self._head = bytes(self._head), bytearray()
        if head[:2] in _UTF16_BOMS:
            self._error(1, "$", "invalid_encoding", "file is UTF-16 (byte order mark found); save it as UTF-8")
            self._fatal = True
            return b""
        return head

    def _take(self, lines: list) -> None:
        for line in lines:
            if line is TOO_LONG:
                self._error(
                    self._line_no, "$", "line_too_long", f"line is longer than the {self.max_line_bytes}-byte limit"
                )
            else:
                self._line(line)
            self._line_no += 1

    def finish(self) -> DatasetReport:
        if not self._started:
            head = self._start()
            if not self._fatal:
                self._take(self._splitter.feed(head))
        if not self._fatal:
            self._take(self._splitter.finish())
        lines = self._line_no - 1
        if self.total_errors == 0 and self.examples == 0:
            self._error(1, "$", "empty_file", "file has no examples")
        return DatasetReport(
            self.format,
            self.examples,
            lines,
            self.errors,
            self.total_errors,
            self.images,
            self.image_examples,
            self.first_image,
            self.image_bytes,
            self.image_refs,
            self.max_errors,
        )

    def _line(self, raw: bytes) -> None:
        n = self._line_no
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._error(
                n, "$", "invalid_encoding", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            )
            return
        if not text.strip():
            self._error(n, "$", "blank_line", "blank line; every line must be one JSON object")
            return
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
            self._error(n, "$", "invalid_json", f"invalid JSON: {detail}")
            return
        except RecursionError:
            self._error(n, "$", "invalid_json", "invalid JSON: arrays or objects are nested too deeply")
            return
        if not isinstance(obj, dict):
            self._error(n, "$", "data_type", f"line must be a JSON object, got {_type_name(obj)}")
            return
        fmt = detect_format(obj)
        if fmt is None:
            keys = ", ".join(sorted(obj)) or "none"
            self._error(
                n,
                "$",
                "unrecognized_format",
                f"unrecognized example format (keys: {keys}); expected one of: " + "; ".join(FORMAT_LABELS.values()),
            )
            return
        if self.format is not None and {fmt, self.format} in _ANSWERED_OR_PROMPTS:
            # A `messages` (or `contents`) file is chat or prompts by its first line; a later line that differs is
            # checked (and refused) as that format, which names what is wrong (the missing answer, or the prompt's
            # end).
            fmt = self.format
        if self.format is None:
            self.format, self._format_line = fmt, n
        elif fmt is not self.format:
            self._error(
                n,
                "$",
                "mixed_formats",
                f"line is {FORMAT_LABELS[fmt]} but the file is {FORMAT_LABELS[self.format]} "
                f"(detected from line {self._format_line}); use one format per file",
            )
            return
        issues = _Issues()
        CHECKERS[fmt](obj, issues)
        for path, code, message in issues.items:
            self._error(n, path, code, message)
        if not issues.items:
            self.examples += 1
            if issues.images:
                self.images += issues.images
                self.image_bytes += issues.image_bytes
                for ref, path in issues.refs:
                    self.image_refs.setdefault(ref, (n, path))
                self.image_examples += 1
                self.first_image = self.first_image or (n, issues.first_image or "$")


def validate_bytes(data: bytes, **kwargs) -> DatasetReport:
    validator = DatasetValidator(**kwargs)
    validator.feed(data)
    return validator.finish()


def validate_file(path, *, chunk_size: int = 1 << 20, **kwargs) -> DatasetReport:
    """Validates a file on disk as the server validates an upload: streamed, never read whole."""
    validator = DatasetValidator(**kwargs)
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            validator.feed(chunk)
    return validator.finish()


def filename_problem(filename: str) -> str | None:
    """Why the server refuses a fine-tune upload of this name (OpenAI's rule: JSON Lines named .jsonl), or None."""
    if not filename.lower().endswith(".jsonl"):
        return "Invalid file format for Fine-Tuning API. Must be .jsonl"
    return None
