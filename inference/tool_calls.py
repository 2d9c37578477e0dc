"""Tools on the built-in engine, as vLLM 0.33 serves them: `tool_choice` decides how an answer becomes calls.

- "none": the tools are in the prompt (the chat template renders them), the answer is content.
- "auto" (the default with tools): the model decides; the engine's tool-call parser (`--tool-call-parser`, the base
  model's family's) reads calls out of the answer, and an answer of calls ends with finish_reason "tool_calls".
  Without a parser the request is refused, as vLLM refuses it without --enable-auto-tool-choice.
- "required", or a named function: the answer is held by constrained decoding (hone_kernel/structured.py, the
  same xgrammar grammars as response_format) to a JSON array of calls of the given tools, or to the named
  function's arguments, so it is a valid call whatever the weights would say; finish_reason stays the sampler's.
  Where the model's family writes calls as one JSON object (llama3_json: hone-tiny, Llama 3), the grammar holds the
  answer to that object instead, `{"name": ..., "arguments": {...}}`: the same answer in the format the model was
  trained to write, so a forced call starts the way its own calls do (a tuned hone-tiny, forced to a named function
  in vLLM's bare-arguments form, wrote the function's name where the city goes). One call, then.

`parallel_tool_calls: false` keeps one call: "required" is held to one, "auto" keeps the first (vLLM's filter)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from hone_kernel.output_format import OutputFormat, canonical_schema
from inference.errors import bad_request
from inference.tool_parsers import Extracted, ParsedCall, ToolParser

AUTO_NEEDS_PARSER = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


def call_id() -> str:
    """vLLM's random_tool_call_id"""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _empty_object() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    choice: str  # "none" | "auto" | "required" | "function"
    tools: tuple[dict[str, Any], ...]
    function: str | None = None  # the named function
    parser: ToolParser | None = None  # the engine's: reads "auto" answers, and shapes forced ones (above)
    parallel: bool = True

    @property
    def object_calls(self) -> bool:
        """Forced calls are written as the family's own call object (llama3_json) rather than vLLM's forms."""
        return self.parser is not None and self.parser.name == "llama3_json" and self.choice in ("function", "required")

    def _call_object(self, tool: dict[str, Any]) -> dict[str, Any]:
        fn = tool["function"]
        return {
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": fn.get("parameters") or _empty_object()},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }

    def forced_format(self) -> tuple[OutputFormat, str] | None:
        """The grammar an answer is held to, and the field a schema error names; None when the model is free."""
        if self.choice == "function":
            index, fn = next(
                (i, t["function"]) for i, t in enumerate(self.tools) if t["function"]["name"] == self.function
            )
            schema = (
                self._call_object(self.tools[index]) if self.object_calls else fn.get("parameters") or _empty_object()
            )
            return (
                OutputFormat("json_schema", canonical_schema(schema), bool(fn.get("strict"))),
                f"tools[{index}].function.parameters",
            )
        if self.object_calls:  # "required", as one call object of any of the tools
            one = {"anyOf": [self._call_object(t) for t in self.tools]}
            return OutputFormat("json_schema", canonical_schema(one)), "tools"
        if self.choice == "required":
            items = [
                {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": [t["function"]["name"]]},
                        "parameters": t["function"].get("parameters") or _empty_object(),
                    },
                    "required": ["name", "parameters"],
                    "additionalProperties": False,
                }
                for t in self.tools
            ]
            calls: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
            if not self.parallel:
                calls["maxItems"] = 1
            return OutputFormat("json_schema", canonical_schema(calls)), "tools"
        return None

    def read(self, text: str) -> Extracted:
        """A finished answer's content and calls."""
        if self.object_calls:
            assert self.parser is not None
            read = self.parser.extract(text)
            return Extracted("", read.calls) if read.calls else Extracted(text)
        if self.choice == "function":
            assert self.function is not None
            return Extracted("", (ParsedCall(self.function, text),))
        if self.choice == "required":
            try:
                found = json.loads(text)
                calls = tuple(ParsedCall(c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in found)
            except (ValueError, TypeError, KeyError):
                return Extracted(text)  # cut off by max_tokens: what was written, as content
            return Extracted("", calls)
        if self.choice == "auto" and self.parser is not None:
            read = self.parser.extract(text)
            if read.calls and not self.parallel:
                return Extracted(read.content, read.calls[:1])
            return read
        return Extracted(text)

    @property
    def calls_finish(self) -> bool:
        """Whether an answer of calls ends with finish_reason "tool_calls" (auto's; forced calls keep "stop")."""
        return self.choice == "auto"


def plan(body: Any, parser: ToolParser | None) -> ToolPlan | None:
    """What a chat request's tools ask (its fields were checked by inference/protocol.py); None without tools."""
    tools = tuple(t.model_dump(exclude_none=True) for t in body.tools or ())
    choice = body.tool_choice
    if not tools or choice == "none":
        return ToolPlan("none", tools) if tools else None
    parallel = body.parallel_tool_calls is not False
    if isinstance(choice, dict):
        return ToolPlan("function", tools, function=choice["function"]["name"], parser=parser, parallel=parallel)
    if choice == "required":
        return ToolPlan("required", tools, parser=parser, parallel=parallel)
    if parser is None:
        raise bad_request(AUTO_NEEDS_PARSER, "tool_choice")
    return ToolPlan("auto", tools, parser=parser, parallel=parallel)


def calls_json(calls: tuple[ParsedCall, ...]) -> list[dict[str, Any]]:
    return [
        {"id": call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
    ]


@dataclass
class StreamedChoice:
    """One streamed choice's text as the plan streams it: content while it surely is content, the rest held until
    the answer ends (then calls, or the held text as content). A named function's arguments stream as they come."""

    plan: ToolPlan
    text: str = ""
    sent: int = 0  # characters of `text` already sent as content
    held_logprobs: list = field(default_factory=list)
    named_started: bool = False

    def delta(self, piece: str, logprobs: list) -> tuple[dict[str, Any] | None, list]:
        """The delta to send for `piece` now (None: nothing yet) and the logprobs that go with it."""
        self.text += piece
        if self.plan.choice == "function" and not self.plan.object_calls:
            return self._named(piece), logprobs
        if self.plan.choice in ("required", "auto", "function"):
            self.held_logprobs += logprobs
            parser = self.plan.parser
            until = parser.content_until(self.text) if parser is not None and self.plan.choice == "auto" else 0
            if until <= self.sent:
                return None, []
            out, self.sent = self.text[self.sent : until], until
            held, self.held_logprobs = self.held_logprobs, []
            return {"content": out}, held
        return {"content": piece}, logprobs

    def _named(self, piece: str) -> dict[str, Any] | None:
        if self.named_started:
            return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} if piece else None
        self.named_started = True
        fn = {"name": self.plan.function, "arguments": piece}
        return {"tool_calls": [{"index": 0, "id": call_id(), "type": "function", "function": fn}]}

    def finish(self, piece: str, logprobs: list) -> tuple[dict[str, Any], list, bool]:
        """The last delta, its logprobs, and whether the answer was calls that end as "tool_calls"."""
        if self.plan.choice == "function" and not self.plan.object_calls:
            return self._named(piece) or {}, logprobs, False
        if self.plan.choice not in ("required", "auto", "function"):
            return {"content": piece}, logprobs, False
        self.text += piece
        held = self.held_logprobs + logprobs
        read = self.plan.read(self.text)
        if not read.calls:
            return {"content": self.text[self.sent :]}, held, False
        deltas = [{"index": i, **c} for i, c in enumerate(calls_json(read.calls))]
        out: dict[str, Any] = {"tool_calls": deltas}
        if read.content and len(read.content) > self.sent:
            out["content"] = read.content[self.sent :]
        return out, held, self.plan.calls_finish
