"""Tool-call parsers: how a model family writes a tool call in its answer text, read back into OpenAI's `tool_calls`.

Names are vLLM's `--tool-call-parser` names, so one registry value (a base model's `tool_call_parser`) configures
both engines: vLLM parses with its own class of that name, the built-in engine with the one here. The built-in
engine implements the formats of the families Hone tunes; `VLLM_PARSERS` lists the names vLLM knows, which the
registry accepts for models only vLLM serves. Pure Python (imported by the control plane's registry).

A parser answers two questions: what a finished answer holds (`extract`: content and calls, or plain content when
the text is not a well-formed call), and while streaming, how much of the text so far is surely content
(`content_until`): the rest may be the start of a call and is held back until the answer ends."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

# vLLM's registered parser names (vllm/entrypoints/openai/tool_parsers, 0.33)
VLLM_PARSERS = frozenset(
    {
        "deepseek_v3",
        "deepseek_v31",
        "glm45",
        "granite",
        "granite-20b-fc",
        "hermes",
        "hunyuan_a13b",
        "internlm",
        "jamba",
        "kimi_k2",
        "llama3_json",
        "llama4_json",
        "llama4_pythonic",
        "longcat",
        "minimax",
        "mistral",
        "openai",
        "phi4_mini_json",
        "pythonic",
        "qwen3_coder",
        "qwen3_xml",
        "seed_oss",
        "step3",
        "xlam",
    }
)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object, as OpenAI's function.arguments


@dataclass(frozen=True)
class Extracted:
    content: str | None
    calls: tuple[ParsedCall, ...] = ()


class ToolParser(Protocol):
    name: str

    def extract(self, text: str) -> Extracted: ...

    def content_until(self, text: str) -> int: ...


def _call(obj: Any) -> ParsedCall:
    """One call object {"name": ..., "arguments" (or "parameters"): {...}}; ValueError for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise ValueError("a tool call needs a name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments already encoded
        args = json.loads(args)
    if not isinstance(args, dict):
        raise ValueError("a tool call's arguments are an object")
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _held_prefix(text: str, marker: str) -> int:
    """Where a trailing partial `marker` starts in `text` (len(text) when none): the part before it is content."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return len(text) - size
    return len(text)


class Llama3Json:
    """Llama 3.1/3.2's JSON tool calls, and hone-tiny's: the whole answer is `{"name": ..., "arguments": {...}}`,
    several separated by "; ", optionally after `<|python_tag|>`. An answer that starts otherwise is content."""

    name = "llama3_json"
    TAG = "<|python_tag|>"

    def extract(self, text: str) -> Extracted:
        body = text.strip()
        body = body[len(self.TAG) :].lstrip() if body.startswith(self.TAG) else body
        if not body.startswith("{"):
            return Extracted(text)
        decoder, calls, at = json.JSONDecoder(), [], 0
        try:
            while True:
                obj, at = decoder.raw_decode(body, at)
                calls.append(_call(obj))
                rest = body[at:].lstrip()
                if not rest:
                    break
                if not rest.startswith(";"):
                    return Extracted(text)  # text after the calls: not an answer of calls
                following = rest[1:].lstrip()
                at = len(body) - len(following)
        except ValueError:
            return Extracted(text)
        return Extracted(None, tuple(calls))

    def content_until(self, text: str) -> int:
        head = text.lstrip()
        if not head or head.startswith("{") or head.startswith(self.TAG) or self.TAG.startswith(head):
            return 0
        return len(text)


class Hermes:
    """Hermes 2 Pro's and Qwen 2.5's: content, then each call as `<tool_call>{"name": ..., "arguments": {...}}
    </tool_call>`."""

    name = "hermes"
    START, END = "<tool_call>", "</tool_call>"
    _CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)$", re.DOTALL)

    def extract(self, text: str) -> Extracted:
        if self.START not in text:
            return Extracted(text)
        try:
            calls = tuple(_call(json.loads(a or b)) for a, b in self._CALL.findall(text))
        except ValueError:
            return Extracted(text)
        content = text[: text.index(self.START)]
        return Extracted(content if content.strip() else None, calls)

    def content_until(self, text: str) -> int:
        at = text.find(self.START)
        return at if at >= 0 else _held_prefix(text, self.START)


class Mistral:
    """Mistral's: content, then `[TOOL_CALLS]` and a JSON array of calls."""

    name = "mistral"
    TAG = "[TOOL_CALLS]"

    def extract(self, text: str) -> Extracted:
        if self.TAG not in text:
            return Extracted(text)
        content, _, rest = text.partition(self.TAG)
        try:
            found = json.loads(rest.strip())
            calls = tuple(_call(obj) for obj in (found if isinstance(found, list) else [found]))
        except ValueError:
            return Extracted(text)
        return Extracted(content if content.strip() else None, calls)

    def content_until(self, text: str) -> int:
        at = text.find(self.TAG)
        return at if at >= 0 else _held_prefix(text, self.TAG)


BUILTIN_PARSERS: dict[str, ToolParser] = {p.name: p for p in (Llama3Json(), Hermes(), Mistral())}


def parser(name: str | None) -> ToolParser | None:
    return BUILTIN_PARSERS.get(name) if name else None
