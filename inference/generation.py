"""What a request asks the engine for and what the engine answers, without torch: sampling parameters, the
generation job, and its events. The engine (`inference.engine`) runs them; the HTTP side (`handlers`, `models`)
builds and reads them, so it imports no torch, and neither does anything else that speaks the protocol."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inference.adapters import ServingProfile, profile_from, read_serving_file

GREEDY_EPSILON = 1e-5  # vLLM: temperature below this is greedy


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # vLLM's penalties: presence and frequency on the tokens generated so far, repetition on the prompt's too
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None  # each generated token's log-probability and this many alternatives; None: none

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPSILON


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (vLLM's raw logprobs: before penalties and temperature),
    and the `logprobs` most likely tokens at that step with theirs."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Delta:
    index: int
    text: str
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens since the last event (logprobs asked)


@dataclass
class Finished:
    index: int
    text: str  # the last piece of text, sent with the finish reason
    finish_reason: str  # "stop" | "length" | "abort"
    stop_reason: str | int | None
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)  # every generated id, stop/EOS id included
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens since the last event (logprobs asked)


@dataclass
class Failed:
    message: str


@dataclass
class GenerationJob:
    """One HTTP request. Its sequences run one after another: `n` per prompt, choice index = prompt_i * n + j."""

    prompts: list[list[int]]
    params: SamplingParams
    n: int
    profile: ServingProfile
    adapter_key: str | None = None  # resident-set key; None = base model
    adapter_path: str | None = None  # to reload an evicted adapter
    adapter_name: str | None = None  # for the LoRA metric labels
    grammar: Any = None  # an xgrammar grammar every answer is held to (response_format: hone_kernel/structured.py)
    pixel_values: Any = None  # a vision model's prompt images, in the order of their token runs (hone_kernel.vision)
    emit: Callable[[Any], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrival: float = field(default_factory=time.monotonic)


def find_stop(text: str, new_chars: int, stops: tuple[str, ...]) -> tuple[str, int] | None:
    """The first stop string that ends within the last `new_chars` characters, and where it starts."""
    for stop in stops:
        start = max(0, len(text) - new_chars - len(stop) + 1)
        at = text.find(stop, start)
        if at >= 0:
            return stop, at
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def model_serving(
    folder: Path, eos_token_id: int | None, tokenizer_template: str | None, chat_template: str | None = None
) -> tuple[dict[str, Any], ServingProfile]:
    """What a model folder sets for serving: server-side defaults for omitted sampling parameters, from its
    generation_config.json (the file, without library defaults: `do_sample: false` means greedy, otherwise its
    temperature/top_p/top_k where given), and the base profile. Precedence: the folder's pinned profile over the
    tokenizer's template and stop ids (its EOS, then generation_config's); an explicit --chat-template over both."""
    generation_config = _read_json(folder / "generation_config.json")
    if generation_config.get("do_sample") is False:
        defaults: dict[str, Any] = {"temperature": 0.0}
    else:
        defaults = {k: generation_config[k] for k in ("temperature", "top_p", "top_k") if k in generation_config}
    stops = [*([eos_token_id] if eos_token_id is not None else []), *_ids(generation_config.get("eos_token_id"))]
    profile = profile_from(read_serving_file(folder), ServingProfile(tokenizer_template, tuple(dict.fromkeys(stops))))
    if chat_template is not None:
        profile = replace(profile, chat_template=chat_template)
    return defaults, profile
