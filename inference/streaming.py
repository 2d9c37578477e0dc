"""The generation plumbing the OpenAI handlers share: a job's choices collected whole, its usage, and its SSE
stream (role chunks first, deltas, the usage chunk, `[DONE]`), shaped as vLLM 0.33 shapes them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from inference.errors import APIError, internal
from inference.generation import Failed, Finished, GenerationJob


async def collect(engine: Any, job: GenerationJob) -> dict[int, dict]:
    texts: dict[int, str] = {}
    logprobs: dict[int, list] = {}  # each choice's tokens' logprobs, in order
    results: dict[int, dict] = {}
    async for event in engine.generate(job):
        if isinstance(event, Failed):
            raise internal(event.message)
        texts[event.index] = texts.get(event.index, "") + event.text
        logprobs.setdefault(event.index, []).extend(event.logprobs)
        if isinstance(event, Finished):
            results[event.index] = {
                "text": texts[event.index],
                "finish_reason": event.finish_reason,
                "stop_reason": event.stop_reason,
                "tokens": event.completion_tokens,
                "token_ids": event.token_ids,
                "logprobs": logprobs[event.index],
            }
    return results


def usage(job: GenerationJob, results: dict[int, dict]) -> dict:
    prompt = sum(len(p) for p in job.prompts)
    completion = sum(r["tokens"] for r in results.values())
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


async def stream(
    engine: Any, fingerprint: str, job: GenerationJob, body: Any, rid: str, created: int, model: str, obj: str
) -> AsyncIterator[Any]:
    """Yields ("role", index, usage) for each choice first, then ("event", Delta|Finished, usage), then the
    usage chunk and `[DONE]` as ready SSE strings. Errors mid-stream become an error event, then `[DONE]`."""
    options = body.stream_options
    include_usage = bool(options and options.include_usage)
    continuous = include_usage and bool(options.continuous_usage_stats)
    prompt_tokens = sum(len(p) for p in job.prompts)
    done_tokens: dict[int, int] = {}

    def running_usage(index: int, tokens: int) -> dict | None:
        if not continuous:
            return None
        return {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}

    try:
        for index in range(len(job.prompts) * job.n):
            yield ("role", index, running_usage(index, 0))
        async for event in engine.generate(job):
            if isinstance(event, Failed):
                raise internal(event.message)
            if isinstance(event, Finished):
                done_tokens[event.index] = event.completion_tokens
                yield ("event", event, running_usage(event.index, event.completion_tokens))
            else:
                yield ("event", event, running_usage(event.index, event.completion_tokens))
        if include_usage:
            completion = sum(done_tokens.values())
            yield sse(
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion,
                        "total_tokens": prompt_tokens + completion,
                    },
                    "system_fingerprint": fingerprint,
                }
            )
    except APIError as e:
        yield sse(e.body())
    except Exception as e:  # never break the SSE framing: report, then terminate
        yield sse(internal(f"{type(e).__name__}: {e}").body())
    yield "data: [DONE]\n\n"


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
