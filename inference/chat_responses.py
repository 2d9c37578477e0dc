"""Chat completion choices and stream chunks, shaped as vLLM 0.33 shapes them: an answer's text becomes content,
or tool calls as its request's tools ask (inference/tool_calls.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from inference.generation import Delta
from inference.streaming import sse
from inference.tool_calls import StreamedChoice, ToolPlan, calls_json


def choice(index: int, result: dict, tools: ToolPlan | None, logprobs: dict | None, token_ids: bool) -> dict:
    """One choice of a whole (non-streamed) answer."""
    read = tools.read(result["text"]) if tools is not None else None
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result["text"] if read is None else read.content,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    finish = result["finish_reason"]
    if read is not None and read.calls:
        message["tool_calls"] = calls_json(read.calls)  # vLLM leaves the key out when there are none
        if tools is not None and tools.calls_finish:
            finish = "tool_calls"
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish,
        "stop_reason": result["stop_reason"],
        "token_ids": result["token_ids"] if token_ids else None,
        "routed_experts": None,
        "weight_versions": None,
    }


async def chunks(
    events: AsyncIterator[Any],
    tools: ToolPlan | None,
    logprobs: Callable[[list], dict | None],
    rid: str,
    created: int,
    model: str,
) -> AsyncIterator[str]:
    """The SSE chunks of a streamed answer, from inference/streaming.py's events."""

    def chunk(choice: dict, usage: dict | None) -> str:
        data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
        if usage is not None:
            data["usage"] = usage
        return sse(data)

    streamed: dict[int, StreamedChoice] = {}
    async for item in events:
        if isinstance(item, str):
            yield item
            continue
        kind, event, usage = item
        if kind == "role":
            role = {"role": "assistant", "content": ""}
            yield chunk({"index": event, "delta": role, "logprobs": None, "finish_reason": None}, usage)
            continue
        if tools is None:
            delta, lps, calls = {"content": event.text}, event.logprobs, False
        else:
            state = streamed.setdefault(event.index, StreamedChoice(tools))
            if isinstance(event, Delta):
                found, lps = state.delta(event.text, event.logprobs)
                if found is None:
                    continue
                delta, calls = found, False
            else:
                delta, lps, calls = state.finish(event.text, event.logprobs)
        body: dict[str, Any] = {"index": event.index, "delta": delta, "logprobs": logprobs(lps), "finish_reason": None}
        if not isinstance(event, Delta):
            body["finish_reason"] = "tool_calls" if calls else event.finish_reason
            body["stop_reason"] = event.stop_reason
        yield chunk(body, usage)
