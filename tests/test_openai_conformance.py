"""Conformance of the sampling surface: the same requests (n, seed, stop, max_tokens and max_completion_tokens,
logprobs, penalties, stream_options.include_usage and continuous_usage_stats, tools) sent to both engine paths, each
answer put in the shape the gateway gives callers (service/gateway_bodies.py) and validated against OpenAI's schemas,
and what each parameter promises checked on the answer.

The two paths: the built-in engine (real hone-tiny, in process), and the FAKE engine standing in for vLLM, which
cannot run here: the same protocol modules as the control-plane tests' engine (tests/fake_engine), answers made up.
What only a real model shows (reproducible seeds, penalties changing the text, forced tool calls) is checked on the
built-in engine; tests/test_engine_protocol.py holds both to vLLM's wire protocol."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.gateway_bodies import openai_shape
from tests.openai_schemas import validator
from tests.support import MODEL_CACHE

CHAT = [{"role": "user", "content": "hello there, please help me reset my password"}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
# (name, request fields); every request runs whole and streamed on both engines
REQUESTS = [
    ("plain", {"max_tokens": 6}),
    ("n", {"n": 3, "temperature": 1.0, "seed": 5, "max_tokens": 5}),
    ("stop", {"stop": ["e"], "temperature": 0, "max_tokens": 12}),
    ("max_completion_tokens", {"max_completion_tokens": 3, "max_tokens": 50, "temperature": 0}),
    ("logprobs", {"logprobs": True, "top_logprobs": 2, "temperature": 0, "max_tokens": 4}),
    ("penalties", {"presence_penalty": 1.5, "frequency_penalty": 1.0, "repetition_penalty": 1.2, "max_tokens": 6}),
    ("seed", {"seed": 11, "temperature": 1.2, "max_tokens": 6}),
    ("tools_none", {"tools": [TOOL], "tool_choice": "none", "max_tokens": 4}),
]


def _engine_client(kind: str):
    from hone_kernel.tiny_model import build
    from inference.models import ServingModels
    from inference.server import create_app

    path = str(build(MODEL_CACHE / "hone-tiny"))
    if kind == "builtin":
        from inference.engine import Engine

        engine = Engine(path, "base")
    else:
        from tests.fake_engine.engine import FakeEngine

        engine = FakeEngine(path, "base")  # type: ignore[assignment]
    return engine, TestClient(create_app(ServingModels(engine, "base", path), api_key=None, allow_runtime_lora=False))


@pytest.fixture(scope="module", params=["builtin", "fake-vllm"])
def engine(request):
    engine, client = _engine_client("builtin" if request.param == "builtin" else "fake")
    try:
        yield request.param, client
    finally:
        engine.stop()


def _valid(schema: str, body: dict) -> None:
    errors = list(validator(schema).iter_errors(body))
    assert not errors, f"{schema}: {errors[0].message} at {list(errors[0].absolute_path)}"


def _whole(client, path: str, body: dict) -> dict:
    reply = client.post(path, json={"model": "base", **body})
    assert reply.status_code == 200, reply.text
    return openai_shape(reply.json())


def _streamed(client, path: str, body: dict) -> list[dict]:
    reply = client.post(path, json={"model": "base", **body, "stream": True})
    assert reply.status_code == 200, reply.text
    events = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize(("name", "params"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_chat_answers_hold_openai_schemas_and_their_parameters(engine, name, params):
    _, client = engine
    body = {"messages": CHAT, **params}
    whole = _whole(client, "/v1/chat/completions", body)
    _valid("CreateChatCompletionResponse", whole)
    n = params.get("n", 1)
    assert [c["index"] for c in whole["choices"]] == list(range(n))
    usage = whole["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    assert usage["completion_tokens"] <= n * limit
    for choice in whole["choices"]:
        text = choice["message"]["content"]
        assert all(stop not in text for stop in params.get("stop", ()))
        if choice["finish_reason"] == "length" and n == 1:
            assert usage["completion_tokens"] == limit
    if params.get("logprobs"):
        for choice in whole["choices"]:
            assert "".join(e["token"] for e in choice["logprobs"]["content"]) == choice["message"]["content"]
    else:
        assert all(c["logprobs"] is None for c in whole["choices"])

    chunks = _streamed(client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    for chunk in chunks:
        _valid("CreateChatCompletionStreamResponse", chunk)
    *answer, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == usage["completion_tokens"]
    assert all("usage" not in c for c in answer)  # only the last chunk carries usage without continuous stats
    texts = {i: "" for i in range(n)}
    for chunk in answer:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    if params.get("temperature", 1) == 0 or "seed" in params:  # the same answer, streamed
        assert [texts[i] for i in range(n)] == [c["message"]["content"] for c in whole["choices"]]


@pytest.mark.parametrize("logprobs", [None, 2])
def test_text_completions_hold_openai_schemas(engine, logprobs):
    _, client = engine
    body = {"prompt": ["hello", "reset my"], "n": 2, "temperature": 0.8, "seed": 3, "max_tokens": 4}
    if logprobs:
        body["logprobs"] = logprobs
    whole = _whole(client, "/v1/completions", body)
    _valid("CreateCompletionResponse", whole)
    assert [c["index"] for c in whole["choices"]] == [0, 1, 2, 3]  # prompt-major, n each
    chunks = _streamed(client, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    # OpenAI streams text completions as CreateCompletionResponse objects whose finish_reason is null until the end
    # (its schema has no chunk type of their own): the choices that end are held to it whole
    ends = [c for c in chunks[:-1] if c["choices"][0]["finish_reason"] is not None]
    assert sorted(c["choices"][0]["index"] for c in ends) == [0, 1, 2, 3]
    for chunk in ends:
        _valid("CreateCompletionResponse", chunk)
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


def test_continuous_usage_stats_put_usage_on_every_chunk(engine):
    _, client = engine
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = _streamed(client, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 4, "stream_options": options})
    assert all("usage" in c for c in chunks)
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[-1] == chunks[-1]["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 0}, "n"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 100000}, "max_tokens"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"n": 2, "temperature": 0}, "n"),  # greedy has one answer
    ],
)
def test_what_an_engine_cannot_do_is_the_same_400_on_both(engine, params, param):
    _, client = engine
    reply = client.post("/v1/chat/completions", json={"model": "base", "messages": CHAT, **params})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param, reply.json()


def test_the_real_engine_seeds_and_penalties_change_what_it_samples():
    """Only a real model shows these: runs on the built-in engine alone."""
    engine, client = _engine_client("builtin")
    try:
        body = {"messages": CHAT, "temperature": 1.3, "max_tokens": 12}
        first = [_whole(client, "/v1/chat/completions", {**body, "seed": s})["choices"][0] for s in (1, 1, 2)]
        texts = [c["message"]["content"] for c in first]
        assert texts[0] == texts[1] and texts[0] != texts[2]
        greedy = {"messages": CHAT, "temperature": 0, "max_tokens": 16}
        plain = _whole(client, "/v1/chat/completions", greedy)["choices"][0]["message"]["content"]
        penalised = _whole(client, "/v1/chat/completions", {**greedy, "frequency_penalty": 2.0})["choices"][0]
        assert penalised["message"]["content"] != plain
    finally:
        engine.stop()
