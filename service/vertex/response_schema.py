"""Gemini's structured output on `generateContent`: `generationConfig.responseMimeType` `application/json`, with a
`responseSchema` (Vertex's OpenAPI-subset Schema object: upper-case types, `nullable`, `propertyOrdering`) or a
`responseJsonSchema` (a JSON Schema), becomes the engine's OpenAI-shaped `response_format`, held by its grammar
(hone_kernel/structured.py). Answers hold exactly the schema's properties, as Gemini's do (strict)."""

from __future__ import annotations

from typing import Any

from hone_kernel import output_format
from service.errors import ErrorCode, InvalidRequest

PARAM = "generationConfig"
JSON = "application/json"
TEXT = "text/plain"
# Schema fields that constrain the answer, with their JSON Schema names; the rest only describe it.
_CONSTRAINTS = {
    "format": "format",
    "enum": "enum",
    "minItems": "minItems",
    "maxItems": "maxItems",
    "minProperties": "minProperties",
    "maxProperties": "maxProperties",
    "minLength": "minLength",
    "maxLength": "maxLength",
    "pattern": "pattern",
    "minimum": "minimum",
    "maximum": "maximum",
    "required": "required",
    "title": "title",
    "description": "description",
    "default": "default",
}
_COUNTS = {"minItems", "maxItems", "minProperties", "maxProperties", "minLength", "maxLength"}
_DESCRIPTIVE = {"example", "propertyOrdering"}  # no JSON Schema meaning for the grammar
_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word.title() for word in rest)


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=ErrorCode.INVALID_VALUE)


def json_schema_of(schema: Any, param: str) -> dict:
    """Vertex's Schema object as JSON Schema; a field it does not define is a 400 naming its path."""
    if not isinstance(schema, dict):
        raise _refuse(f"{param} must be a Schema object.", param)
    out: dict[str, Any] = {}
    for raw_key, value in schema.items():
        key = _camel(raw_key)  # proto3 JSON: snake_case keys are the same fields
        where = f"{param}.{key}"
        if key == "type":
            name = str(value).upper()
            if name == "TYPE_UNSPECIFIED":
                continue
            if name not in _TYPES:
                raise _refuse(f"{where} must be one of {', '.join(sorted(_TYPES))}, got {value!r}.", where)
            out["type"] = name.lower()
        elif key == "properties":
            if not isinstance(value, dict):
                raise _refuse(f"{where} must map property names to Schema objects.", where)
            out["properties"] = {name: json_schema_of(sub, f"{where}.{name}") for name, sub in value.items()}
        elif key == "items":
            out["items"] = json_schema_of(value, where)
        elif key == "anyOf":
            if not isinstance(value, list) or not value:
                raise _refuse(f"{where} must be a list of Schema objects.", where)
            out["anyOf"] = [json_schema_of(sub, f"{where}[{i}]") for i, sub in enumerate(value)]
        elif key in _CONSTRAINTS:
            # int64 counts (minItems, maxLength, ...) may come as JSON strings, as proto3 JSON writes them
            out[_CONSTRAINTS[key]] = (
                int(value) if key in _COUNTS and isinstance(value, str) and value.isdigit() else value
            )
        elif key in _DESCRIPTIVE or key == "nullable":
            continue
        else:
            raise _refuse(f"{where} is not a field of Vertex's Schema object.", where)
    if schema.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def response_format(mime_type: str | None, schema: Any, json_schema: Any) -> dict | None:
    """The chat request's response_format for a generationConfig's structured output fields (None: free text)."""
    if schema is not None and json_schema is not None:
        raise _refuse("Give responseSchema or responseJsonSchema, not both.", f"{PARAM}.responseJsonSchema")
    if mime_type in (None, "", TEXT):
        if schema is not None or json_schema is not None:
            raise _refuse(f"A response schema needs responseMimeType '{JSON}'.", f"{PARAM}.responseMimeType")
        return None
    if mime_type != JSON:
        raise _refuse(f"responseMimeType must be '{TEXT}' or '{JSON}', got {mime_type!r}.", f"{PARAM}.responseMimeType")
    if json_schema is not None:
        if not isinstance(json_schema, dict):
            raise _refuse("responseJsonSchema must be a JSON Schema object.", f"{PARAM}.responseJsonSchema")
        converted = json_schema
    elif schema is not None:
        converted = json_schema_of(schema, f"{PARAM}.responseSchema")
    else:
        return {"type": "json_object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "response", "strict": True, "schema": converted}}
    output_format.parse(fmt)  # well formed by construction; the engine says whether its grammar can enforce it
    return fmt
