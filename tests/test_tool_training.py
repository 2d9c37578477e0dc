"""A model tuned on tool calls calls tools: hone-tiny tuned through the API on examples/tool_use.py's set (calls
rendered by its chat template in Llama 3's JSON format), served by the built-in engine behind the gateway with its
family's parser (llama3_json), asked held-out prompts with `tools` and tool_choice "auto" through the openai SDK,
and measured against its base. A real server (SQLite, local storage), the real trainer and engine processes."""

from __future__ import annotations

import json

import pytest

from examples import tool_use
from tests.support import HoneServer, jsonl, wait_endpoint, wait_job


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    server = HoneServer(tmp_path_factory.mktemp("tools"), {"HONE_AUTO_DEPLOY": "true", "HONE_LOCAL_SLOTS": "1"})
    try:
        project = server.new_project("tools")
        client = project.openai()
        train_file = client.files.create(file=("tools.jsonl", jsonl(tool_use.training_lines())), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=train_file.id,
            seed=1,
            hyperparameters={"n_epochs": 15, "batch_size": 8, "learning_rate_multiplier": 2},
        )
        job = wait_job(client, job.id, lambda j: j.status in ("succeeded", "failed"), timeout=900)
        assert job.status == "succeeded", job.error
        with project.http() as http:
            endpoint = wait_endpoint(http, job.fine_tuned_model)
        assert endpoint["state"] == "ready", endpoint
        _, held_out = tool_use.prompts()
        yield {"client": client, "model": job.fine_tuned_model, "held_out": held_out}
    finally:
        server.stop()


def _ask(client, model: str, prompt: str, **params):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        tools=tool_use.TOOLS,
        temperature=0,
        max_tokens=32,
        **params,
    )


def test_the_tuned_model_calls_the_right_tool_on_held_out_prompts_and_its_base_does_not(tuned):
    client, rows = tuned["client"], tuned["held_out"]
    scores = {"tuned": [], "base": []}
    for prompt, function, city in rows:
        for name, model in (("tuned", tuned["model"]), ("base", "hone-tiny")):
            reply = _ask(client, model, prompt)
            scores[name].append(tool_use.score(reply.choices[0].message, function, city))
            if name == "tuned" and reply.choices[0].message.tool_calls:
                assert reply.choices[0].finish_reason == "tool_calls"
    rates = {name: (sum(v for v, _ in s) / len(s), sum(c for _, c in s) / len(s)) for name, s in scores.items()}
    print(f"held-out prompts ({len(rows)}): valid call to the right function, and with the right city: {rates}")
    assert rates["tuned"][0] >= 0.90
    assert rates["base"][0] <= 0.10


def test_streamed_calls_are_the_whole_ones(tuned):
    client, model = tuned["client"], tuned["model"]
    for prompt, _, _ in tuned["held_out"][:4]:
        whole = _ask(client, model, prompt).choices[0].message
        calls: dict[int, dict] = {}
        for chunk in _ask(client, model, prompt, stream=True):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
        assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
            (c.function.name, json.loads(c.function.arguments)) for c in whole.tool_calls or []
        ]


def test_small_talk_is_answered_in_words_and_none_never_calls(tuned):
    client, model = tuned["client"], tuned["model"]
    reply = _ask(client, model, "hello")
    assert not reply.choices[0].message.tool_calls and reply.choices[0].message.content
    prompt = tuned["held_out"][0][0]
    assert not _ask(client, model, prompt, tool_choice="none").choices[0].message.tool_calls
    # a tool result goes back in and the conversation goes on
    call = _ask(client, model, prompt).choices[0].message.tool_calls[0]
    follow = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": prompt},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=tool_use.TOOLS,
        max_tokens=8,
    )
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_the_openai_sdks_parse_helper_reads_typed_arguments(tuned):
    """`client.chat.completions.parse` with `openai.pydantic_function_tool` (strict tools), as the libraries built on
    the SDK call tools: a named function's arguments come back parsed into the caller's type."""
    import openai
    from pydantic import BaseModel

    class GetWeather(BaseModel):
        city: str

    client, model = tuned["client"], tuned["model"]
    prompt, _, city = next(row for row in tuned["held_out"] if row[1] == "get_weather")
    reply = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=32,
    )
    (call,) = reply.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert call.function.parsed_arguments.city == city
