"""The per-line checks of each dataset format (hone_kernel.datasets runs them); errors name the field path in the line.

Training data holds text and images: image parts are checked by hone_kernel.dataset_images (and a job on a model
that reads no images refuses the file, naming the first image's line and field); parts that carry audio or files
are refused with the line and field, through one predicate (`media_supported`).
"""

from __future__ import annotations

import json
from typing import Any

from hone_kernel.dataset_images import check_gemini_media, check_image_url_part

# Content part types (OpenAI chat and Responses shapes) and Gemini part keys that carry something other than text,
# and the kind of input each is.
MEDIA_PART_TYPES = {
    "image_url": "image",
    "input_image": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "file": "file",
    "input_file": "file",
}
GEMINI_MEDIA_KEYS = ("inlineData", "inline_data", "fileData", "file_data")


def media_supported(kind: str) -> bool:
    """Whether training data may hold `kind` ("image", "audio", "file") inputs: images (for vision base models);
    no base model Hone trains reads audio or files, and a line with them would be trained without them."""
    return kind == "image"


def _media_kind(mime_type: Any) -> str:
    top = mime_type.split("/", 1)[0] if isinstance(mime_type, str) else ""
    return top if top in ("image", "audio", "video") else "file"


def _gemini_media(part: Any) -> tuple[str, str] | None:
    """(key, kind) of a Gemini part's inlineData or fileData, if it has one."""
    key = next((k for k in GEMINI_MEDIA_KEYS if isinstance(part, dict) and k in part), None)
    if key is None:
        return None
    blob = part[key] if isinstance(part[key], dict) else {}
    return key, _media_kind(blob.get("mimeType", blob.get("mime_type")))


def _refuse_media(kind: str, path: str, issues: _Issues) -> None:
    issues.add(path, "unsupported_media", f"{kind} inputs are not supported for this model; training data must be text")


class _Issues:
    """Errors found on one line."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []
        self.images = 0  # image parts seen on the line
        self.first_image: str | None = None  # the field path of the first
        self.image_bytes = 0  # the line's bytes that are images (their data URLs), which are not text tokens
        self.refs: list[tuple[str, str]] = []  # (reference, field path) of images named by file id or bucket URI

    def add(self, path: str, code: str, message: str) -> None:
        self.items.append((path, code, message))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return key if path in ("", "$") else f"{path}.{key}"


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _require_str(
    obj: dict, key: str, path: str, issues: _Issues, *, non_empty: bool = True, code: str = "missing_content"
) -> bool:
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
            issues.add(_join(path, key), code, f"unrecognized key '{key}' (allowed: {', '.join(sorted(allowed))})")


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
        elif kind in MEDIA_PART_TYPES and not media_supported(MEDIA_PART_TYPES[kind]):
            _refuse_media(MEDIA_PART_TYPES[kind], _join(where, "type"), issues)
        elif kind == "image_url":
            check_image_url_part(part, where, role, issues)
        else:
            issues.add(
                _join(where, "type"),
                "invalid_content_part",
                f"content part type must be 'text' or 'image_url', got {kind!r}",
            )
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
        if _require_str(fn, "arguments", _join(where, "function"), issues, non_empty=False):
            _check_arguments(fn["arguments"], _join(_join(where, "function"), "arguments"), issues)


def _check_arguments(text: str, path: str, issues: _Issues) -> None:
    """A call's arguments are trained as written and read back as JSON when served (inference/tool_parsers.py):
    text that is not one JSON object would teach calls no engine can read."""
    try:
        value = json.loads(text)
    except ValueError as e:
        issues.add(path, "invalid_value", f"arguments must be a JSON object encoded as a string: {e}")
        return
    if not isinstance(value, dict):
        issues.add(path, "invalid_value", f"arguments must encode a JSON object, got {_type_name(value)}")


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
        issues.add(
            _join(path, "role"),
            "unrecognized_role",
            f"unrecognized role {role!r} (expected one of: {', '.join(roles)})",
        )
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
            issues.add(
                content_path,
                "missing_content" if "content" in msg else "message_missing_key",
                "message has no content" if "content" in msg else "message is missing 'content'",
            )
    elif isinstance(content, str):
        if not content.strip() and not has_calls:
            issues.add(content_path, "missing_content", "content must not be empty")
    elif isinstance(content, list):
        _check_content_parts(content, content_path, role or "", issues)
    else:
        issues.add(
            content_path, "invalid_type", f"content must be a string or an array of parts, got {_type_name(content)}"
        )
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
                if (
                    not isinstance(tool, dict)
                    or tool.get("type", "function") != "function"
                    or not isinstance(tool.get("function"), dict)
                ):
                    issues.add(where, "invalid_tool", 'tool must be {"type": "function", "function": {...}}')
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
        issues.add(
            "input", "missing_key" if prompt is None else "invalid_type", "input must be an object with 'messages'"
        )
    else:
        _unknown_keys(prompt, CHAT_LINE_KEYS, "input", issues)
        _check_tools(prompt, "input", issues)
        roles = _check_messages_list(prompt, "input", issues)
        if roles and roles[-1] not in ("user", None):
            issues.add(
                f"input.messages[{len(roles) - 1}].role",
                "invalid_input_messages",
                "the last input message must be from the user; the outputs are the assistant's reply",
            )
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
        media = _gemini_media(part)
        if not isinstance(part, dict):
            issues.add(part_path, "invalid_type", f"part must be an object, got {_type_name(part)}")
        elif media is not None and not media_supported(media[1]):
            _refuse_media(media[1], _join(part_path, media[0]), issues)
        elif media is not None:
            check_gemini_media(part, media[0], part_path, str(content.get("role", "system")), issues)
        elif "text" not in part:
            issues.add(part_path, "unsupported_part", f"only text parts are supported, got keys {sorted(part)}")
        else:
            _require_str(part, "text", part_path, issues)


def check_gemini_turns(line: dict, issues: _Issues) -> list | None:
    """The checks a Gemini line's keys, system instruction and turns get in every Gemini format (supervised lines
    and prompts); returns each turn's role as written (None where the turn is not an object), or None when there
    are no turns to check."""
    _unknown_keys(line, {"contents", "systemInstruction", "system_instruction"}, "$", issues)
    for key in ("systemInstruction", "system_instruction"):
        if key in line:
            _check_gemini_parts(line[key], key, issues)
    contents = line.get("contents")
    if not isinstance(contents, list) or not contents:
        issues.add("contents", "missing_content", "contents must be a non-empty array")
        return None
    roles = []
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
    return roles


def check_gemini(line: dict, issues: _Issues) -> None:
    roles = check_gemini_turns(line, issues)
    if roles is None:
        return
    contents = line["contents"]
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
