"""Prompt lines: a conversation that ends where the model answers, with no answer of its own.

OpenAI's reinforcement fine-tuning lines (`FineTuneReinforcementRequestInput`, `openai_reinforcement`) carry any other
keys, which graders read as `{{item.<key>}}`; distillation takes them too (its teacher writes the answers). Gemini
prompt lines (`vertex_prompts`: `contents` ending with a user turn, an optional `systemInstruction`) are what a Vertex
`distillationSpec.promptDatasetUri` names; distillation only. Standard library only."""

from __future__ import annotations

from typing import Any

from hone_kernel.dataset_checks import _check_messages_list, _check_tools, _Issues, _join, check_gemini_turns
from hone_kernel.dataset_messages import clean_message, to_messages

# The keys OpenAI reserves on a reinforcement line; every other key is the grader's.
RESERVED_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
PROMPT_END_ROLES = ("user", "tool")


def is_prompt_line(line: dict) -> bool:
    """A `messages` line that does not end with an assistant message: a prompt for the model to answer."""
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return False
    return messages[-1].get("role") != "assistant"


def check_reinforcement(line: dict, issues: _Issues) -> None:
    _check_tools(line, "$", issues)
    roles = _check_messages_list(line, "$", issues)
    if not roles:
        return
    last = len(roles) - 1
    if roles[last] not in (*PROMPT_END_ROLES, None):
        issues.add(
            _join(_join("messages", last), "role"),
            "invalid_prompt",
            "the last message must be from the user (or a tool's result): the model writes the answer. This file "
            "holds prompts (for reinforcement fine-tuning or distillation): its first example ends with no answer",
        )
    for i, message in enumerate(line["messages"]):
        if isinstance(message, dict) and "weight" in message:
            issues.add(_join(_join("messages", i), "weight"), "invalid_weight", "prompts have no trained messages")


def is_gemini_prompt_line(line: dict) -> bool:
    """A `contents` line whose last turn is the user's: a prompt for the model to answer."""
    contents = line.get("contents")
    if not isinstance(contents, list) or not contents or not isinstance(contents[-1], dict):
        return False
    return contents[-1].get("role") == "user"


def check_gemini_prompt(line: dict, issues: _Issues) -> None:
    roles = check_gemini_turns(line, issues)
    if not roles:
        return
    last = len(roles) - 1
    if roles[last] == "model":  # another role is refused as unrecognized already
        issues.add(
            _join(_join("contents", last), "role"),
            "invalid_prompt",
            "the last turn must be from the user: the teacher writes the answer. This file holds prompts (for "
            "distillation): its first example ends with a user turn",
        )


def prompt_messages(row: dict[str, Any], fmt: str = "openai_reinforcement") -> list[dict]:
    """The conversation the model continues, in OpenAI chat shape, without Hone's and OpenAI's per-message training
    keys; a Gemini prompt line's system instruction and turns as system, user and assistant messages."""
    if fmt == "vertex_prompts":
        return to_messages(row, fmt)[0]
    return [clean_message(m) for m in row["messages"]]
