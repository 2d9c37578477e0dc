"""Grading: one grader, one sample, one item -> a reward and what went wrong, in the shape of OpenAI's
`/fine_tuning/alpha/graders/run` response. Evals and reinforcement fine-tuning call `grade` the same way.

A grade never raises for what the grader, the sample or a model did: each failure sets its flag in
`metadata.errors` (OpenAI's names) and the reward is 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from hone_kernel.graders import formula, similarity, spec, templates
from hone_kernel.graders.sandbox import SandboxLimits, run_python

# metadata.errors, in OpenAI's order: the flags, each detail after its flag.
ERROR_FIELDS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "model_grader_server_error_details",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_runtime_error_details",
    "python_grader_server_error",
    "python_grader_server_error_type",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
_DETAILS = tuple(f for f in ERROR_FIELDS if not f.endswith("_error"))
ERROR_FLAGS = tuple(f for f in ERROR_FIELDS if f not in _DETAILS)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class ModelReply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


class ModelCallFailed(Exception):
    """The grader's model could not answer (not deployed, unreachable, an error): model_grader_server_error."""


class ModelCaller(Protocol):
    async def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> ModelReply:
        """One chat completion of `model`; raises ModelCallFailed."""
        ...


@dataclass(frozen=True)
class GradingEnv:
    """What grading may use beyond the grader itself: the sandbox's limits, and who answers model graders."""

    limits: SandboxLimits = SandboxLimits()
    models: ModelCaller | None = None
    python: str | None = None  # the sandbox's interpreter (default: this one)
    python_slots: asyncio.Semaphore | None = None  # python grades at once (each is a process)


@dataclass
class Grade:
    name: str
    type: str
    reward: float = 0.0
    errors: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(ERROR_FLAGS, False))
    execution_time: float = 0.0
    sub_rewards: dict[str, float] = field(default_factory=dict)
    token_usage: int | None = None
    sampled_model_name: str | None = None
    usage_per_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def fail(self, flag: str, detail_key: str | None = None, detail: str | None = None) -> Grade:
        self.errors[flag] = True
        if detail_key:
            self.errors[detail_key] = detail
        self.reward = 0.0
        return self

    @property
    def failed(self) -> bool:
        return any(self.errors[f] for f in ERROR_FLAGS)

    def error_text(self) -> str | None:
        """One line saying what went wrong, for an eval's output item."""
        flags = [f for f in ERROR_FLAGS if self.errors[f]]
        details = [str(self.errors[d]) for d in _DETAILS if self.errors.get(d)]
        return "; ".join(flags + details) or None

    def response(self) -> dict[str, Any]:
        """OpenAI's GraderRunResponse."""
        errors = {f: self.errors.get(f, None if f in _DETAILS else False) for f in ERROR_FIELDS}
        errors.update({k: v for k, v in self.errors.items() if k not in errors})  # other_error_details
        return {
            "reward": self.reward,
            "metadata": {
                "name": self.name,
                "type": self.type,
                "errors": errors,
                "execution_time": self.execution_time,
                "scores": dict(self.sub_rewards),
                "token_usage": self.token_usage,
                "sampled_model_name": self.sampled_model_name,
            },
            "sub_rewards": dict(self.sub_rewards),
            "model_grader_token_usage_per_model": {m: dict(u) for m, u in self.usage_per_model.items()},
        }


def sample_from_text(text: str, *, tool_calls: list | None = None, choices: list | None = None) -> dict[str, Any]:
    """The `sample` namespace for a model's output: output_json is filled when the text is valid JSON."""
    try:
        output_json = json.loads(text)
    except ValueError:
        output_json = None
    return {
        "output_text": text,
        "output_json": output_json,
        "output_tools": tool_calls or [],
        "choices": choices or [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }


async def grade(grader: Any, sample: dict[str, Any], item: Any, env: GradingEnv) -> Grade:
    started = time.perf_counter()
    result = Grade(grader.name, grader.type)
    namespaces = {"item": item, "sample": sample}
    try:
        if isinstance(grader, spec.MultiGrader):
            await _multi(grader, sample, item, env, result)
        elif isinstance(grader, spec.StringCheckGrader):
            result.reward = _string_check(grader, namespaces)
        elif isinstance(grader, spec.TextSimilarityGrader):
            text, reference = templates.render(grader.input, namespaces), templates.render(grader.reference, namespaces)
            result.reward = similarity.similarity(grader.evaluation_metric, text, reference)
        elif isinstance(grader, spec.PythonGrader):
            await _python(grader, sample, item, env, result)
        else:
            await _model(grader, namespaces, env, result)
    except templates.TemplateError as exc:
        result.fail(exc.kind)
        result.errors.setdefault("other_error_details", str(exc))
    result.execution_time = time.perf_counter() - started
    return result


def _string_check(grader: spec.StringCheckGrader, namespaces: dict[str, Any]) -> float:
    text, reference = templates.render(grader.input, namespaces), templates.render(grader.reference, namespaces)
    if grader.operation == "eq":
        return float(text == reference)
    if grader.operation == "ne":
        return float(text != reference)
    if grader.operation == "like":
        return float(reference in text)
    return float(reference.casefold() in text.casefold())  # ilike


async def _python(grader: spec.PythonGrader, sample: dict, item: Any, env: GradingEnv, result: Grade) -> None:
    async with env.python_slots or contextlib.nullcontext():
        outcome = await run_python(grader.source, sample, item, env.limits, env.python)
    if outcome.score is not None:
        result.reward = outcome.score
    elif outcome.limit is not None:
        result.fail("python_grader_server_error", "python_grader_server_error_type", outcome.limit)
        result.errors["python_grader_runtime_error_details"] = outcome.error
    else:
        result.fail("python_grader_runtime_error", "python_grader_runtime_error_details", outcome.error)


async def _model(grader: Any, namespaces: dict[str, Any], env: GradingEnv, result: Grade) -> None:
    messages = [{"role": m.role, "content": templates.render(m.text(), namespaces)} for m in grader.input]
    params: dict[str, Any] = {}
    sampling = getattr(grader, "sampling_params", None)
    if sampling is not None:
        params = {k: v for k, v in sampling.model_dump(exclude_none=True).items() if k != "max_completions_tokens"}
        if sampling.max_completions_tokens is not None:
            params["max_tokens"] = sampling.max_completions_tokens
    if env.models is None:
        result.fail("model_grader_server_error", "model_grader_server_error_details", "no model is reachable here")
        return
    try:
        reply = await env.models.chat(grader.model, messages, params)
    except ModelCallFailed as exc:
        result.fail("model_grader_server_error", "model_grader_server_error_details", str(exc))
        return
    result.sampled_model_name = grader.model
    result.token_usage = reply.prompt_tokens + reply.completion_tokens
    result.usage_per_model[grader.model] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": result.token_usage,
        "cached_tokens": 0,
    }
    if reply.finish_reason == "content_filter":
        result.fail("model_grader_refusal_error")
        return
    if isinstance(grader, spec.ScoreModelGrader):
        score = parse_score(reply.text, *grader.bounds())
        if score is None:
            result.fail("model_grader_parse_error")
        else:
            result.reward = score
        return
    label = parse_label(reply.text, grader.labels)
    if label is None:
        result.fail("model_grader_parse_error")
    else:
        result.reward = float(label in grader.passing_labels)


def parse_score(text: str, low: float, high: float) -> float | None:
    """A score model's answer: `{"result": x}` (OpenAI's structured form) or the first number of its text; None
    when there is none or it lies outside the grader's range."""
    value: Any = None
    try:
        parsed = json.loads(text)
        value = parsed.get("result") if isinstance(parsed, dict) else parsed
    except ValueError:
        pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        found = _NUMBER.search(text)
        value = float(found.group()) if found else None
    if value is None or not math.isfinite(value) or not low <= value <= high:
        return None
    return float(value)


def parse_label(text: str, labels: list[str]) -> str | None:
    """A label model's answer: one of `labels`, as its whole text, or as `{"result": label}`; case is forgiven only
    when that makes one label match."""
    answer = text.strip()
    try:
        parsed = json.loads(answer)
        if isinstance(parsed, dict) and isinstance(parsed.get("result"), str):
            answer = parsed["result"].strip()
    except ValueError:
        pass
    if answer in labels:
        return answer
    folded = [label for label in labels if label.casefold() == answer.casefold()]
    return folded[0] if len(folded) == 1 else None


async def _multi(grader: spec.MultiGrader, sample: dict, item: Any, env: GradingEnv, result: Grade) -> None:
    names = list(grader.graders)
    parts = await asyncio.gather(*(grade(grader.graders[n], sample, item, env) for n in names))
    for name, part in zip(names, parts):
        result.sub_rewards[name] = part.reward
        for key, value in part.errors.items():
            if value and (key not in result.errors or not result.errors[key]):
                result.errors[key] = value
        if part.token_usage is not None:
            result.token_usage = (result.token_usage or 0) + part.token_usage
            result.sampled_model_name = part.sampled_model_name
        for model, usage in part.usage_per_model.items():
            total = result.usage_per_model.setdefault(model, dict.fromkeys(usage, 0))
            for key, count in usage.items():
                total[key] += count
    if result.failed:
        result.reward = 0.0
        return
    try:
        result.reward = formula.evaluate(grader.calculate_output, result.sub_rewards)
    except formula.FormulaError as exc:
        result.fail("formula_parse_error")
        result.errors["other_error_details"] = str(exc)
