"""OpenAI's reinforcement fine-tuning lines (`FineTuneReinforcementRequestInput`): a conversation that ends where the
model answers, plus any other keys, which graders read as `{{item.<key>}}`. Distillation takes the same lines (its
teacher writes the answers). Standard library only."""

from __future__ import annotations

from typing import Any

from hone_kernel.dataset_checks import _check_messages_list, _check_tools, _Issues, _join
from hone_kernel.dataset_messages import clean_message

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


def prompt_messages(row: dict[str, Any]) -> list[dict]:
    """The conversation the model continues, without Hone's and OpenAI's per-message training keys."""
    return [clean_message(m) for m in row["messages"]]
