"""The built-in engine's sampling surface beyond temperature and top-p: logprobs and top_logprobs (chat and text
completions, streamed or not), presence, frequency and repetition penalties, seeds, and the 400s for what is out of
range, each answer held to OpenAI's schemas. The real engine (hone-tiny) in process, over its HTTP app."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from service.gateway_bodies import openai_shape  # what callers get through the gateway
from tests.openai_schemas import validator
from tests.support import MODEL_CACHE

CHAT = [{"role": "user", "content": "hello there, please help me with my invoice"}]


@pytest.fixture(scope="module")
def client():
    from hone_kernel.tiny_model import build
    from inference.engine import Engine
    from inference.models import ServingModels
    from inference.server import create_app

    path = str(build(MODEL_CACHE / "hone-tiny"))
    engine = Engine(path, "base")
    try:
        yield TestClient(create_app(ServingModels(engine, "base", path), api_key=None, allow_runtime_lora=False))
    finally:
        engine.stop()


def _chat(client, **params) -> dict:
    reply = client.post("/v1/chat/completions", json={"model": "base", "messages": CHAT, "max_tokens": 8, **params})
    assert reply.status_code == 200, reply.text
    return reply.json()


def _stream(client, path: str, **params) -> list[dict]:
    reply = client.post(path, json={"model": "base", "max_tokens": 8, "stream": True, **params})
    assert reply.status_code == 200, reply.text
    events = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_chat_logprobs_name_each_answer_token_with_its_alternatives(client):
    reply = _chat(client, temperature=0, logprobs=True, top_logprobs=3)
    errors = list(validator("CreateChatCompletionResponse").iter_errors(openai_shape(json.loads(json.dumps(reply)))))
    assert not errors, errors[0].message
    choice = reply["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == reply["usage"]["completion_tokens"] - (choice["finish_reason"] == "stop")  # no EOS
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    for entry in content:
        assert entry["bytes"] == list(entry["token"].encode()) and entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        # greedy: the chosen token is the likeliest
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"])
    assert _chat(client, temperature=0)["choices"][0]["logprobs"] is None  # not asked, not sent


def test_streamed_logprobs_are_the_whole_answers(client):
    whole = _chat(client, temperature=0, logprobs=True, top_logprobs=2)["choices"][0]["logprobs"]["content"]
    chunks = _stream(client, "/v1/chat/completions", messages=CHAT, temperature=0, logprobs=True, top_logprobs=2)
    schema = validator("CreateChatCompletionStreamResponse")
    for chunk in chunks:
        errors = list(schema.iter_errors(chunk))
        assert not errors, errors[0].message
    streamed = [entry for chunk in chunks[1:] for entry in (chunk["choices"][0]["logprobs"] or {}).get("content", [])]
    assert streamed == whole


def test_completion_logprobs_offsets_follow_the_text_streamed_or_not(client):
    reply = client.post(
        "/v1/completions", json={"model": "base", "prompt": "hello", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    ).json()
    errors = list(validator("CreateCompletionResponse").iter_errors(openai_shape(json.loads(json.dumps(reply)))))
    assert not errors, errors[0].message
    choice = reply["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert all(len(top) == 2 for top in lp["top_logprobs"])
    chunks = _stream(client, "/v1/completions", prompt="hello", temperature=0, logprobs=2, max_tokens=6)
    offsets = [o for c in chunks for o in (c["choices"][0]["logprobs"] or {}).get("text_offset", [])]
    assert offsets == lp["text_offset"]


def test_penalties_change_greedy_answers_and_frequency_cuts_repeats(client):
    def most_repeated(**params) -> int:
        ids = _chat(client, temperature=0, max_tokens=24, return_token_ids=True, ignore_eos=True, **params)
        return max(Counter(ids["choices"][0]["token_ids"]).values())

    plain = most_repeated()
    assert plain > 3  # the untrained model repeats itself
    assert most_repeated(frequency_penalty=2.0) < plain
    assert most_repeated(presence_penalty=2.0) < plain
    assert most_repeated(repetition_penalty=3.0) < plain


def test_a_seed_gives_the_same_sample(client):
    first, again = (_chat(client, temperature=1.0, seed=11)["choices"][0]["message"]["content"] for _ in range(2))
    assert first == again
    others = {_chat(client, temperature=1.0, seed=s)["choices"][0]["message"]["content"] for s in range(12, 16)}
    assert len(others | {first}) > 1


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        ({"top_logprobs": 2}, "top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true."),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "greater than max allowed: 20"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "must be a positive value"),
        ({"presence_penalty": 2.5}, "presence_penalty", "presence_penalty must be in [-2, 2], got 2.5."),
        ({"frequency_penalty": -3}, "frequency_penalty", "frequency_penalty must be in [-2, 2]"),
        ({"repetition_penalty": 0}, "repetition_penalty", "repetition_penalty must be greater than zero"),
    ],
)
def test_out_of_range_sampling_is_a_400_naming_the_field(client, params, param, message):
    reply = client.post("/v1/chat/completions", json={"model": "base", "messages": CHAT, "max_tokens": 2, **params})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == param and message in error["message"]
    bad = client.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2, "logprobs": 21})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logprobs"
