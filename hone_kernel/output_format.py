"""`response_format` as OpenAI's chat completions take it, read once for the built-in engine, the RFT trainer and the
control plane: `text` (free text), `json_object` (any JSON object) or `json_schema` (an object of one JSON Schema,
`strict` or not). Stdlib only; the grammar that enforces it is hone_kernel/structured.py's (xgrammar)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

KINDS = ("text", "json_object", "json_schema")


class FormatError(ValueError):
    """A response_format that is not one: the message says what, `param` names the field (under `response_format`)."""

    def __init__(self, message: str, param: str = "response_format"):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class OutputFormat:
    """What the answer must be. `schema` is canonical JSON text (`canonical_schema`), so equal schemas share a
    grammar."""

    kind: str  # "json_object" | "json_schema"
    schema: str | None = None
    strict: bool = False

    def to_response_format(self) -> dict[str, Any]:
        """Back to the request field, as a caller of the served model passes it."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": "answer", "strict": self.strict}
        if self.schema is not None:
            spec["schema"] = json.loads(self.schema)
        return {"type": "json_schema", "json_schema": spec}


def parse(value: Any, param: str = "response_format") -> OutputFormat | None:
    """The format a request's `response_format` asks for; None for free text (absent, null or `{"type": "text"}`)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FormatError(f"{param} must be an object with a 'type', got {type(value).__name__}.", param)
    kind = value.get("type")
    if kind not in KINDS:
        raise FormatError(
            f"{param}.type must be one of {', '.join(repr(k) for k in KINDS)}, got {json.dumps(kind)[:80]}.",
            f"{param}.type",
        )
    allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
    extra = sorted(set(value) - allowed)
    if extra:
        raise FormatError(f"{param} of type '{kind}' takes no '{extra[0]}'.", f"{param}.{extra[0]}")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise FormatError(
            f"{param}.json_schema is required for type 'json_schema' (an object).", f"{param}.json_schema"
        )
    unknown = sorted(set(spec) - {"name", "description", "schema", "strict"})
    if unknown:
        raise FormatError(f"{param}.json_schema takes no '{unknown[0]}'.", f"{param}.json_schema.{unknown[0]}")
    name = spec.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise FormatError(
            f"{param}.json_schema.name is required: a string of 1 to 64 characters.", f"{param}.json_schema.name"
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise FormatError(f"{param}.json_schema.schema must be a JSON Schema object.", f"{param}.json_schema.schema")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise FormatError(f"{param}.json_schema.strict must be true or false.", f"{param}.json_schema.strict")
    if schema is None:  # OpenAI: the schema is optional; without one the answer is any JSON object
        return OutputFormat("json_object")
    return OutputFormat("json_schema", canonical_schema(schema), bool(strict))


def canonical_schema(schema: dict[str, Any]) -> str:
    """Compact JSON text of a schema with its keys sorted, but each `properties` in the request's order: the answer
    writes its properties in that order, as OpenAI's does, and the same schema asked again shares a grammar."""

    def canonical(node: Any, keep_order: bool = False) -> Any:
        if isinstance(node, dict):
            items = node.items() if keep_order else sorted(node.items())
            # the members of `properties` are schemas named by property (a property may be named "properties")
            return {k: canonical(v, keep_order=not keep_order and k == "properties") for k, v in items}
        if isinstance(node, list):
            return [canonical(v) for v in node]
        return node

    return json.dumps(canonical(schema), separators=(",", ":"))
