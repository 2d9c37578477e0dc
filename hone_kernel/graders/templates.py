"""Grader templates as OpenAI writes them: `{{ item.reference }}`, `{{ sample.output_text }}`,
`{{ sample.output_json.answer }}`, `{{ item.choices[0] }}`, `{{ item["a key"] }}`.

Only the `item` and `sample` namespaces exist. A string value is inserted as it is; any other value (a number,
a list, an object) as its JSON. A path that the item or sample does not have is an error of the grade
(`invalid_variable_error`), never an empty string that would grade silently wrong."""

from __future__ import annotations

import json
import re
from typing import Any

NAMESPACES = ("item", "sample")
TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"""\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(\d+)\s*\]|\[\s*"([^"]*)"\s*\]|\[\s*'([^']*)'\s*\]""")
_HEAD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")


class TemplateError(Exception):
    """A template names what its namespaces lack. `kind` is the grader error flag it sets."""

    def __init__(self, message: str, kind: str = "invalid_variable_error"):
        super().__init__(message)
        self.kind = kind


def parse_path(expression: str) -> tuple[str, list[str | int]]:
    """`item.a[0]["b c"]` -> ("item", ["a", 0, "b c"]); ValueError when it is not such a path."""
    head = _HEAD.match(expression)
    if head is None:
        raise ValueError(
            f"'{{{{{expression}}}}}' is not a variable: write {{{{ item.field }}}} or {{{{ sample.field }}}}"
        )
    namespace, at, path = head.group(1), head.end(), []
    while at < len(expression.rstrip()):
        segment = _SEGMENT.match(expression, at)
        if segment is None:
            raise ValueError(f"'{{{{{expression}}}}}' is not a variable path (at character {at + 1})")
        name, index, dquoted, squoted = segment.groups()
        path.append(int(index) if index is not None else next(p for p in (name, dquoted, squoted) if p is not None))
        at = segment.end()
    if namespace not in NAMESPACES:
        raise ValueError(
            f"'{{{{{expression.strip()}}}}}' names the namespace '{namespace}'; only item and sample exist"
        )
    return namespace, path


def check(text: str) -> None:
    """ValueError naming the first template of `text` that is not a variable of item or sample."""
    for match in TEMPLATE.finditer(text):
        parse_path(match.group(1))
    rest = TEMPLATE.sub("", text)
    if "{{" in rest:
        raise ValueError("a '{{' is not closed by '}}'")


def references(text: str) -> list[tuple[str, list[str | int]]]:
    """Every variable `text` reads, as (namespace, path)."""
    return [parse_path(m.group(1)) for m in TEMPLATE.finditer(text)]


def lookup(namespaces: dict[str, Any], namespace: str, path: list[str | int]) -> Any:
    value: Any = namespaces.get(namespace)
    if namespace == "sample" and path[:1] == ["output_json"] and value is not None and value.get("output_json") is None:
        raise TemplateError("the sample is not valid JSON, so sample.output_json is empty", "sample_parse_error")
    walked = namespace
    for step in path:
        if isinstance(step, int) and isinstance(value, list) and -len(value) <= step < len(value):
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            value = value[step]
        else:
            raise TemplateError(f"{walked} has no {'[' + str(step) + ']' if isinstance(step, int) else repr(step)}")
        walked += f"[{step}]" if isinstance(step, int) else f".{step}"
    return value


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(text: str, namespaces: dict[str, Any]) -> str:
    """`text` with each template replaced by its value; TemplateError when one cannot be filled."""
    if "{{" not in text:
        return text
    return TEMPLATE.sub(lambda m: as_text(lookup(namespaces, *parse_path(m.group(1)))), text)
