"""A synthetic tool-use task: three functions (weather, local time, flights), each asked for in eight phrasings about
twelve cities, as OpenAI chat lines whose assistant turn is a tool call, plus a few small-talk lines answered in words.
Split by (phrasing, city) pair, so every held-out prompt is a sentence the model never saw.

    python examples/tool_use.py OUT_DIR [--seed 3]

writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl. A right answer calls the function the prompt asks for, with
arguments that validate against its schema and name the prompt's city (`score`)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

CITIES = ("paris", "oslo", "lima", "tokyo", "cairo", "delhi", "rome", "berlin", "quito", "dakar", "seoul", "madrid")
PHRASINGS = {
    "get_weather": (
        "what is the weather in {}",
        "is it raining in {}",
        "weather for {} please",
        "how hot is it in {}",
        "will it be sunny in {} today",
        "tell me the forecast for {}",
        "do i need an umbrella in {}",
        "how cold is {} this week",
    ),
    "get_time": (
        "what time is it in {}",
        "current time in {}",
        "tell me the time in {}",
        "what is the local time in {}",
        "clock in {} please",
        "is it morning in {} now",
        "what hour is it in {}",
        "is it night in {} yet",
    ),
    "find_flights": (
        "book me a flight to {}",
        "find flights to {}",
        "i want to fly to {}",
        "any planes going to {}",
        "show me trips to {}",
        "get me a ticket to {}",
        "how can i travel to {} by air",
        "cheap flights to {} please",
    ),
}
SMALL_TALK = {
    "hello": "Hello! How can I help?",
    "thanks a lot": "You are welcome.",
    "who are you": "I am an assistant that can check weather, time and flights.",
    "good morning": "Good morning! How can I help?",
}
_CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": name, "description": description, "parameters": _CITY}}
    for name, description in (
        ("get_weather", "The weather in a city"),
        ("get_time", "The local time in a city"),
        ("find_flights", "Flights to a city"),
    )
]


def prompts(seed: int = 3, held_out: float = 0.25) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(prompt, function, city) pairs for training and held out, split by (phrasing, city)."""
    rows = [(p.format(c), fn, c) for fn, phrasings in PHRASINGS.items() for p in phrasings for c in CITIES]
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * held_out)
    return rows[cut:], rows[:cut]


def call_line(prompt: str, function: str, city: str, index: int = 0) -> dict:
    call = {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": function, "arguments": json.dumps({"city": city})},
    }
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "tool_calls": [call]}],
        "tools": TOOLS,
    }


def talk_line(prompt: str, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        "tools": TOOLS,
    }


def training_lines(seed: int = 3) -> list[dict]:
    train, _ = prompts(seed)
    lines = [call_line(p, fn, c, i) for i, (p, fn, c) in enumerate(train)]
    lines += [talk_line(p, a) for p, a in SMALL_TALK.items()] * 3
    random.Random(seed + 1).shuffle(lines)
    return lines


def score(message: Any, function: str, city: str) -> tuple[bool, bool]:
    """(a valid call to the right function, and with the prompt's city) for an openai SDK message or a dict."""
    calls = message.get("tool_calls") if isinstance(message, dict) else message.tool_calls
    if not calls or len(calls) != 1:
        return False, False
    call = calls[0] if isinstance(calls[0], dict) else calls[0].model_dump()
    try:
        arguments = json.loads(call["function"]["arguments"])
    except ValueError:
        return False, False
    valid = call["function"]["name"] == function and isinstance(arguments, dict)
    valid = valid and set(arguments) == {"city"} and isinstance(arguments["city"], str)
    return valid, valid and arguments["city"] == city


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _, held_out = prompts(args.seed)
    (args.out / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in training_lines(args.seed)))
    test = [call_line(p, fn, c, i) for i, (p, fn, c) in enumerate(held_out)]
    (args.out / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in test))


if __name__ == "__main__":
    main()
