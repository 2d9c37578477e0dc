"""Dataset validation: format detection and per-line checks for every format in DESIGN.md.

The validator is fed bytes as they stream in, so a file is checked without ever
being held in memory whole. Errors name the 1-based line and the field path.

It lives on the client side, with no dependency beyond the standard library, so that
`hone files validate` checks a file offline with exactly the code the server runs on upload
(the control plane imports it through service.datasets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable


class DatasetFormat(str, Enum):
    OPENAI_CHAT = "openai_chat"
    PROMPT_COMPLETION = "prompt_completion"
    OPENAI_PREFERENCE = "openai_preference"
    VERTEX_GEMINI = "vertex_gemini"
    VERTEX_LEGACY = "vertex_legacy"
    PAIRS = "pairs"
    RAW_TEXT = "raw_text"


FORMAT_LABELS = {
    DatasetFormat.OPENAI_CHAT: "OpenAI chat ({messages})",
    DatasetFormat.PROMPT_COMPLETION: "prompt/completion ({prompt, completion})",
    DatasetFormat.OPENAI_PREFERENCE: "OpenAI preference ({input, preferred_output, non_preferred_output})",
    DatasetFormat.VERTEX_GEMINI: "Vertex/Gemini ({contents})",
    DatasetFormat.VERTEX_LEGACY: "Vertex legacy ({input_text, output_text})",
    DatasetFormat.PAIRS: "pairs ({input, output} or {instruction, input?, output})",
    DatasetFormat.RAW_TEXT: "raw text ({text})",
}

# Which training methods can use which format. Raw text trains on every token
# (continued pre-training) under the supervised method.
METHODS_FOR_FORMAT = {
    DatasetFormat.OPENAI_PREFERENCE: {"dpo"},
}
DEFAULT_METHODS = {"supervised"}


def methods_for(fmt: DatasetFormat) -> set[str]:
    return METHODS_FOR_FORMAT.get(fmt, DEFAULT_METHODS)


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

    @property
    def ok(self) -> bool:
        return self.total_errors == 0

    def summary(self) -> str:
        shown = "; ".join(str(e) for e in self.errors)
        more = self.total_errors - len(self.errors)
        return shown + (f"; and {more} more error(s)" if more > 0 else "")


class _Issues:
    """Errors found on one line."""

    def __init__(self):
        self.items: list[tuple[str, str, str]] = []

    def add(self, path: str, code: str, message: str) -> None:
        self.items.append((path, code, message))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return key if path in ("", "$") else f"{path}.{key}"


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _require_str(obj: dict, key: str, path: str, issues: _Issues, *, non_empty: bool = True,
                 code: str = "missing_content") -> bool:
    where = _join(path, key)
    if key not in obj:
        issues.add(where, "missing_key", f"missing required key '{key}'")
        return False
    value = obj[key]
    if not isinstance(value, str):
        issues.add(where, "invalid_type", f"must be a string, got {_type_name(value)}")
        return False
    if non_empty and not value.strip():
        issues.add(where, code, "must not be empty")
        return False
    return True


def _unknown_keys(obj: dict, allowed: set[str], path: str, issues: _Issues, code: str = "unrecognized_key") -> None:
    for key in obj:
        if key not in allowed:
            issues.add(_join(path, key), code,
                       f"unrecognized key '{key}' (allowed: {', '.join(sorted(allowed))})")


# --- OpenAI chat -----------------------------------------------------------------

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE_KEYS = {"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id"}
CHAT_LINE_KEYS = {"messages", "tools", "functions", "parallel_tool_calls"}


def _check_content_parts(parts: list, path: str, role: str, issues: _Issues) -> bool:
    if not parts:
        issues.add(path, "missing_content", "content array must not be empty")
        return False
    for i, part in enumerate(parts):
        where = _join(path, i)
        if not isinstance(part, dict):
            issues.add(where, "invalid_type", f"content part must be an object, got {_type_name(part)}")
            continue
        kind = part.get("type")
        if kind == "text":
            _require_str(part, "text", where, issues)
        elif kind == "image_url":
            if role != "user":
                issues.add(_join(where, "type"), "invalid_content_part", "images are only allowed in user messages")
            elif not isinstance(part.get("image_url"), dict) or not isinstance(part["image_url"].get("url"), str):
                issues.add(_join(where, "image_url"), "invalid_content_part", "image_url must be an object with a 'url' string")
        else:
            issues.add(_join(where, "type"), "invalid_content_part",
                       f"content part type must be 'text' or 'image_url', got {kind!r}")
    return True


def _check_tool_calls(calls: Any, path: str, issues: _Issues) -> None:
    if not isinstance(calls, list) or not calls:
        issues.add(path, "invalid_type", "tool_calls must be a non-empty array")
        return
    for i, call in enumerate(calls):
        where = _join(path, i)
        if not isinstance(call, dict):
            issues.add(where, "invalid_type", f"tool call must be an object, got {_type_name(call)}")
            continue
        _require_str(call, "id", where, issues)
        if call.get("type", "function") != "function":
            issues.add(_join(where, "type"), "invalid_value", "tool call type must be 'function'")
        fn = call.get("function")
        if not isinstance(fn, dict):
            issues.add(_join(where, "function"), "missing_key", "tool call needs a 'function' object")
            continue
        _require_str(fn, "name", _join(where, "function"), issues)
        _require_str(fn, "arguments", _join(where, "function"), issues, non_empty=False)


def _check_message(msg: Any, path: str, issues: _Issues, roles: tuple[str, ...] = CHAT_ROLES) -> str | None:
    """Checks one chat message; returns its role when the role is valid."""
    if not isinstance(msg, dict):
        issues.add(path, "invalid_type", f"message must be an object, got {_type_name(msg)}")
        return None
    _unknown_keys(msg, MESSAGE_KEYS, path, issues, code="message_unrecognized_key")
    role = msg.get("role")
    if "role" not in msg:
        issues.add(_join(path, "role"), "message_missing_key", "message is missing 'role'")
        role = None
    elif role not in roles:
        issues.add(_join(path, "role"), "unrecognized_role",
                   f"unrecognized role {role!r} (expected one of: {', '.join(roles)})")
        role = None
    has_calls = "tool_calls" in msg or "function_call" in msg
    if "tool_calls" in msg:
        if role != "assistant" and role is not None:
            issues.add(_join(path, "tool_calls"), "invalid_key", "tool_calls are only allowed on assistant messages")
        else:
            _check_tool_calls(msg["tool_calls"], _join(path, "tool_calls"), issues)
    if "function_call" in msg:
        fc = msg["function_call"]
        if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
            issues.add(_join(path, "function_call"), "invalid_type", "function_call must be an object with a 'name'")
    content_path = _join(path, "content")
    content = msg.get("content")
    if content is None:
        if not (role == "assistant" and has_calls):
            issues.add(content_path, "missing_content" if "content" in msg else "message_missing_key",
                       "message has no content" if "content" in msg else "message is missing 'content'")
    elif isinstance(content, str):
        if not content.strip() and not has_calls:
            issues.add(content_path, "missing_content", "content must not be empty")
    elif isinstance(content, list):
        _check_content_parts(content, content_path, role or "", issues)
    else:
        issues.add(content_path, "invalid_type", f"content must be a string or an array of parts, got {_type_name(content)}")
    if "name" in msg and not isinstance(msg["name"], str):
        issues.add(_join(path, "name"), "invalid_type", "name must be a string")
    if role == "tool" and not isinstance(msg.get("tool_call_id"), str):
        issues.add(_join(path, "tool_call_id"), "message_missing_key", "tool messages need a 'tool_call_id' string")
    if "weight" in msg:
        weight = msg["weight"]
        if role is not None and role != "assistant":
            issues.add(_join(path, "weight"), "invalid_weight", "weight is only allowed on assistant messages")
        elif type(weight) is not int or weight not in (0, 1):
            issues.add(_join(path, "weight"), "invalid_weight", f"weight must be 0 or 1, got {json.dumps(weight)}")
    return role


def _check_tools(line: dict, path: str, issues: _Issues) -> None:
    if "tools" in line:
        tools = line["tools"]
        if not isinstance(tools, list):
            issues.add(_join(path, "tools"), "invalid_type", "tools must be an array")
        else:
            for i, tool in enumerate(tools):
                where = _join(_join(path, "tools"), i)
                if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                        or not isinstance(tool.get("function"), dict):
                    issues.add(where, "invalid_tool", "tool must be {\"type\": \"function\", \"function\": {...}}")
                else:
                    _require_str(tool["function"], "name", _join(where, "function"), issues)
    if "functions" in line and not isinstance(line["functions"], list):
        issues.add(_join(path, "functions"), "invalid_type", "functions must be an array")
    if "parallel_tool_calls" in line and not isinstance(line["parallel_tool_calls"], bool):
        issues.add(_join(path, "parallel_tool_calls"), "invalid_type", "parallel_tool_calls must be a boolean")


def _check_messages_list(line: dict, path: str, issues: _Issues) -> list[str | None] | None:
    where = _join(path, "messages")
    if "messages" not in line:
        issues.add(where, "missing_messages_list", "missing 'messages' list")
        return None
    messages = line["messages"]
    if not isinstance(messages, list):
        issues.add(where, "missing_messages_list", f"messages must be an array, got {_type_name(messages)}")
        return None
    if not messages:
        issues.add(where, "missing_messages_list", "messages must contain at least one message")
        return None
    return [_check_message(m, _join(where, i), issues) for i, m in enumerate(messages)]


def _is_zero_weight(weight: Any) -> bool:
    return type(weight) is int and weight == 0  # `false == 0` in Python; false is reported as invalid instead


def check_chat(line: dict, issues: _Issues) -> None:
    _unknown_keys(line, CHAT_LINE_KEYS, "$", issues)
    _check_tools(line, "$", issues)
    roles = _check_messages_list(line, "$", issues)
    if roles is None:
        return
    assistants = [i for i, r in enumerate(roles) if r == "assistant"]
    if not assistants and None not in roles:
        issues.add("messages", "example_missing_assistant_message", "example has no assistant message to train on")
    elif assistants and all(_is_zero_weight(line["messages"][i].get("weight", 1)) for i in assistants):
        issues.add("messages", "no_trainable_message", "every assistant message has weight 0, so nothing is trained")


# --- the other formats -------------------------------------------------------------

def check_prompt_completion(line: dict, issues: _Issues) -> None:
    _unknown_keys(line, {"prompt", "completion"}, "$", issues)
    _require_str(line, "prompt", "$", issues, non_empty=False)
    _require_str(line, "completion", "$", issues)


PREFERRED_KEYS = (("preferred_output", "preferred_completion"), ("non_preferred_output", "non_preferred_completion"))


def check_preference(line: dict, issues: _Issues) -> None:
    _unknown_keys(line, {"input", *[k for pair in PREFERRED_KEYS for k in pair]}, "$", issues)
    prompt = line.get("input")
    if not isinstance(prompt, dict):
        issues.add("input", "missing_key" if prompt is None else "invalid_type", "input must be an object with 'messages'")
    else:
        _unknown_keys(prompt, CHAT_LINE_KEYS, "input", issues)
        _check_tools(prompt, "input", issues)
        roles = _check_messages_list(prompt, "input", issues)
        if roles and roles[-1] not in ("user", None):
            issues.add(f"input.messages[{len(roles) - 1}].role", "invalid_input_messages",
                       "the last input message must be from the user; the outputs are the assistant's reply")
    for canonical, alias in PREFERRED_KEYS:
        if canonical in line and alias in line:
            issues.add(alias, "duplicate_key", f"give either '{canonical}' or '{alias}', not both")
            continue
        key = canonical if canonical in line else alias
        if key not in line:
            issues.add(canonical, "missing_key", f"missing required key '{canonical}'")
            continue
        outputs = line[key]
        if not isinstance(outputs, list) or len(outputs) != 1:
            issues.add(key, "invalid_type", "must be an array holding exactly one assistant message")
            continue
        role = _check_message(outputs[0], f"{key}[0]", issues)
        if role not in ("assistant", None):
            issues.add(f"{key}[0].role", "unrecognized_role", "must be an assistant message")


GEMINI_ROLES = ("user", "model")


def _check_gemini_parts(content: Any, path: str, issues: _Issues) -> None:
    if not isinstance(content, dict):
        issues.add(path, "invalid_type", f"must be an object with 'parts', got {_type_name(content)}")
        return
    parts = content.get("parts")
    where = _join(path, "parts")
    if not isinstance(parts, list) or not parts:
        issues.add(where, "missing_content", "parts must be a non-empty array")
        return
    for i, part in enumerate(parts):
        part_path = _join(where, i)
        if not isinstance(part, dict):
            issues.add(part_path, "invalid_type", f"part must be an object, got {_type_name(part)}")
        elif "text" not in part:
            issues.add(part_path, "unsupported_part", f"only text parts are supported, got keys {sorted(part)}")
        else:
            _require_str(part, "text", part_path, issues)


def check_gemini(line: dict, issues: _Issues) -> None:
    _unknown_keys(line, {"contents", "systemInstruction", "system_instruction"}, "$", issues)
    for key in ("systemInstruction", "system_instruction"):
        if key in line:
            _check_gemini_parts(line[key], key, issues)
    contents = line.get("contents")
    if not isinstance(contents, list) or not contents:
        issues.add("contents", "missing_content", "contents must be a non-empty array")
        return
    roles = []  # one per turn, None where the turn is not an object
    for i, turn in enumerate(contents):
        where = _join("contents", i)
        role = None
        if isinstance(turn, dict):
            role = turn.get("role")
            if role not in GEMINI_ROLES:
                issues.add(_join(where, "role"), "unrecognized_role", f"role must be 'user' or 'model', got {role!r}")
            _unknown_keys(turn, {"role", "parts"}, where, issues)
        roles.append(role)
        _check_gemini_parts(turn, where, issues)
    if "model" not in roles:
        issues.add("contents", "missing_model_turn", "example has no 'model' turn to train on")
    elif roles[-1] != "model" and isinstance(contents[-1], dict):
        issues.add(f"contents[{len(roles) - 1}].role", "invalid_last_turn", "the last turn must be from the model")


def check_vertex_legacy(line: dict, issues: _Issues) -> None:
    _unknown_keys(line, {"input_text", "output_text"}, "$", issues)
    _require_str(line, "input_text", "$", issues)
    _require_str(line, "output_text", "$", issues)


def check_pairs(line: dict, issues: _Issues) -> None:
    if "instruction" in line:
        _unknown_keys(line, {"instruction", "input", "output"}, "$", issues)
        _require_str(line, "instruction", "$", issues)
        if "input" in line:
            _require_str(line, "input", "$", issues, non_empty=False)
    else:
        _unknown_keys(line, {"input", "output"}, "$", issues)
        _require_str(line, "input", "$", issues)
    _require_str(line, "output", "$", issues)


def check_raw_text(line: dict, issues: _Issues) -> None:
    # Pre-training corpora often carry metadata keys; only `text` is read.
    _require_str(line, "text", "$", issues)


CHECKERS: dict[DatasetFormat, Callable[[dict, _Issues], None]] = {
    DatasetFormat.OPENAI_CHAT: check_chat,
    DatasetFormat.PROMPT_COMPLETION: check_prompt_completion,
    DatasetFormat.OPENAI_PREFERENCE: check_preference,
    DatasetFormat.VERTEX_GEMINI: check_gemini,
    DatasetFormat.VERTEX_LEGACY: check_vertex_legacy,
    DatasetFormat.PAIRS: check_pairs,
    DatasetFormat.RAW_TEXT: check_raw_text,
}


def detect_format(line: dict) -> DatasetFormat | None:
    keys = set(line)
    if keys & {"messages", "tools", "functions", "parallel_tool_calls"}:
        return DatasetFormat.OPENAI_CHAT
    if keys & {"preferred_output", "non_preferred_output", "preferred_completion", "non_preferred_completion"}:
        return DatasetFormat.OPENAI_PREFERENCE
    if "input" in keys and isinstance(line["input"], dict):
        return DatasetFormat.OPENAI_PREFERENCE
    if keys & {"prompt", "completion"}:
        return DatasetFormat.PROMPT_COMPLETION
    if keys & {"contents", "systemInstruction", "system_instruction"}:
        return DatasetFormat.VERTEX_GEMINI
    if keys & {"input_text", "output_text"}:
        return DatasetFormat.VERTEX_LEGACY
    if keys & {"instruction", "output"} or "input" in keys:
        return DatasetFormat.PAIRS
    if "text" in keys:
        return DatasetFormat.RAW_TEXT
    return None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# --- the streaming validator ------------------------------------------------------

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class DatasetValidator:
    """Feed bytes in order with `feed`, then call `finish` for the report."""

    def __init__(self, *, max_line_bytes: int = 4 << 20, max_errors: int = 20):
        self.max_line_bytes = max_line_bytes
        self.max_errors = max_errors
        self._buf = bytearray()
        self._line_no = 1  # the line being accumulated
        self._skipping = False  # inside a line already reported as too long
        self._started = False
        self._fatal = False
        self.format: DatasetFormat | None = None
        self._format_line = 0
        self.examples = 0
        self.errors: list[LineError] = []
        self.total_errors = 0

    def _error(self, line: int, path: str, code: str, message: str) -> None:
        self.total_errors += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(LineError(line, path or "$", code, message))

    def feed(self, chunk: bytes) -> None:
        if self._fatal or not chunk:
            return
        self._buf += chunk
        if not self._started:
            if len(self._buf) < 3:
                return
            self._start()
            if self._fatal:
                return
        self._drain()

    def _start(self) -> None:
        self._started = True
        if self._buf.startswith(_UTF8_BOM):
            del self._buf[:3]
        elif self._buf[:2] in _UTF16_BOMS:
            self._error(1, "$", "invalid_encoding", "file is UTF-16 (byte order mark found); save it as UTF-8")
            self._fatal = True
            self._buf.clear()

    def _drain(self) -> None:
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False
            elif nl - start > self.max_line_bytes:
                self._too_long()
            else:
                self._line(bytes(self._buf[start:nl]))
            self._line_no += 1
            start = nl + 1
        del self._buf[:start]
        if len(self._buf) > self.max_line_bytes and not self._skipping:
            self._too_long()
            self._skipping = True
        if self._skipping:
            self._buf.clear()

    def _too_long(self) -> None:
        self._error(self._line_no, "$", "line_too_long",
                    f"line is longer than the {self.max_line_bytes}-byte limit")

    def finish(self) -> DatasetReport:
        if not self._fatal:
            if not self._started:
                self._start()
            if not self._fatal:
                self._drain()
                if self._buf and not self._skipping:
                    self._line(bytes(self._buf))
                    self._line_no += 1
                self._buf.clear()
        lines = self._line_no - 1
        if self.total_errors == 0 and self.examples == 0:
            self._error(1, "$", "empty_file", "file has no examples")
        return DatasetReport(self.format, self.examples, lines, self.errors, self.total_errors)

    def _line(self, raw: bytes) -> None:
        n = self._line_no
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._error(n, "$", "invalid_encoding",
                        f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
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
            self._error(n, "$", "unrecognized_format",
                        f"unrecognized example format (keys: {keys}); expected one of: "
                        + "; ".join(FORMAT_LABELS.values()))
            return
        if self.format is None:
            self.format, self._format_line = fmt, n
        elif fmt is not self.format:
            self._error(n, "$", "mixed_formats",
                        f"line is {FORMAT_LABELS[fmt]} but the file is {FORMAT_LABELS[self.format]} "
                        f"(detected from line {self._format_line}); use one format per file")
            return
        issues = _Issues()
        CHECKERS[fmt](obj, issues)
        for path, code, message in issues.items:
            self._error(n, path, code, message)
        if not issues.items:
            self.examples += 1


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
