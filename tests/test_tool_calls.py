"""Tools on the built-in engine (inference/tool_calls.py, inference/tool_parsers.py): tool_choice none, auto, required
and a named function; calls in OpenAI's shape, whole and streamed; the 400s vLLM answers; hone-tiny's template writing
calls in the format its parser reads. The real engine (untrained hone-tiny) in process, over its HTTP app: forced
calls are valid because the grammar holds them, whatever the weights say. A tuned model that calls tools on its own
("auto") is tests/test_tool_training.py's."""

from __future__ import annotations

import json

import jsonschema
import pytest
from fastapi.testclient import TestClient

from inference.tool_calls import StreamedChoice, ToolPlan
from inference.tool_parsers import BUILTIN_PARSERS, Extracted, ParsedCall
from service.gateway_bodies import openai_shape
from tests.openai_schemas import validator
from tests.support import MODEL_CACHE

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["paris", "oslo", "lima"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["utc", "cet"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
CHAT = [{"role": "user", "content": "what is the weather in paris"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def engine():
    from hone_kernel.tiny_model import build
    from inference.engine import Engine

    path = str(build(MODEL_CACHE / "hone-tiny"))
    engine = Engine(path, "base")
    try:
        yield engine, path
    finally:
        engine.stop()


def _client(engine, parser: str | None) -> TestClient:
    from inference.models import ServingModels
    from inference.server import create_app

    engine, path = engine
    tool_parser = BUILTIN_PARSERS[parser] if parser else None
    return TestClient(
        create_app(ServingModels(engine, "base", path, tool_parser), api_key=None, allow_runtime_lora=False)
    )


@pytest.fixture(scope="module")
def client(engine):
    """hone-tiny's engine: its family's parser, llama3_json, so forced calls are written as its call objects."""
    return _client(engine, "llama3_json")


@pytest.fixture(scope="module")
def bare(engine):
    """An engine without a parser: forced calls in vLLM's forms (bare arguments; an array of calls)."""
    return _client(engine, None)


def _chat(client, **params):
    return client.post("/v1/chat/completions", json={"model": "base", "messages": CHAT, "max_tokens": 48, **params})


def _valid_response(body: dict) -> None:
    errors = list(validator("CreateChatCompletionResponse").iter_errors(openai_shape(json.loads(json.dumps(body)))))
    assert not errors, errors[0].message


def _stream(client, **params) -> list[dict]:
    reply = _chat(client, stream=True, **params)
    assert reply.status_code == 200, reply.text
    events = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        errors = list(validator("CreateChatCompletionStreamResponse").iter_errors(chunk))
        assert not errors, errors[0].message
    return chunks


def _assembled_calls(chunks: list[dict]) -> list[dict]:
    """Tool-call deltas put together as the openai SDK's stream helpers do: by index, strings concatenated."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(delta["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.get("id") or call["id"]
                call["name"] += (delta.get("function") or {}).get("name") or ""
                call["arguments"] += (delta.get("function") or {}).get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("engine_tools", ["client", "bare"])
def test_a_named_function_is_called_with_arguments_its_schema_holds(engine_tools, request):
    client = request.getfixturevalue(engine_tools)
    for seed in range(3):
        reply = _chat(
            client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}, seed=seed
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        _valid_response(body)
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop"  # forced calls keep the sampler's reason, as vLLM and OpenAI
        assert choice["message"]["content"] == ""
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
        assert call["function"]["name"] == "get_time"
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS["get_time"])


def test_required_gives_calls_of_the_given_tools_and_parallel_false_gives_one(client):
    names = set()
    for seed in range(4):
        body = _chat(
            client,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1,
            seed=seed,
            max_tokens=64,
        ).json()
        _valid_response(body)
        assert body["choices"][0]["finish_reason"] == "stop"
        (call,) = body["choices"][0]["message"]["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
        names.add(call["function"]["name"])
    assert names == {"get_weather", "get_time"}
    # llama3_json's call object is one call, parallel or not
    body = _chat(client, tools=TOOLS, tool_choice="required", temperature=1, seed=1).json()
    assert len(body["choices"][0]["message"]["tool_calls"]) == 1


def test_required_in_vllms_array_form(bare):
    """Untrained hone-tiny goes on adding calls to the array; one cut off by max_tokens is what was written, as
    content; parallel_tool_calls false holds the array to one call."""
    single = _chat(bare, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=64).json()
    (call,) = single["choices"][0]["message"]["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
    body = _chat(bare, tools=TOOLS, tool_choice="required", temperature=1, seed=1, max_tokens=24).json()
    choice = body["choices"][0]
    if choice["finish_reason"] == "length":
        assert "tool_calls" not in choice["message"] and choice["message"]["content"].startswith('[{"name": "get_')
    else:
        assert all(c["function"]["name"] in SCHEMAS for c in choice["message"]["tool_calls"])


def test_a_named_call_streams_its_name_first_then_its_arguments(bare):
    chunks = _stream(bare, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = _assembled_calls(chunks)
    assert call["name"] == "get_weather" and call["id"].startswith("chatcmpl-tool-")
    jsonschema.validate(json.loads(call["arguments"]), SCHEMAS["get_weather"])
    first = next(c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls"))
    assert first["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("engine_tools", "choice"),
    [("bare", "required"), ("client", "required"), ("client", {"type": "function", "function": {"name": "get_time"}})],
)
def test_held_calls_stream_whole_at_the_end(engine_tools, choice, request):
    client = request.getfixturevalue(engine_tools)
    chunks = _stream(client, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False, max_tokens=64)
    calls = _assembled_calls(chunks)
    assert len(calls) == 1 and calls[0]["name"] in SCHEMAS
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks if c["choices"])  # no JSON leaks as text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_forced_calls_are_written_as_the_familys_call_object(engine):
    """With llama3_json the grammar holds the answer to `{"name": ..., "arguments": {...}}`, the form hone-tiny is
    trained to write its calls in; the caller gets the same tool_calls as from vLLM's form."""
    from inference.tool_calls import ToolPlan

    plan = ToolPlan("function", tuple(TOOLS), function="get_time", parser=BUILTIN_PARSERS["llama3_json"])
    fmt, field = plan.forced_format()
    schema = json.loads(fmt.schema)
    assert list(schema["properties"]) == ["name", "arguments"] and schema["properties"]["name"] == {"const": "get_time"}
    assert field == "tools[1].function.parameters"
    read = plan.read('{"name": "get_time", "arguments": {"zone": "cet"}}')
    assert read == Extracted("", (ParsedCall("get_time", '{"zone": "cet"}'),))


def test_auto_and_none_answer_content_when_the_model_writes_no_call(client):
    """Untrained hone-tiny writes no call: auto answers its text as content, none never reads calls."""
    for choice in ("auto", "none"):
        body = _chat(client, tools=TOOLS, tool_choice=choice, temperature=0).json()
        _valid_response(body)
        message = body["choices"][0]["message"]
        assert "tool_calls" not in message and isinstance(message["content"], str)
        assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_tools_are_in_the_prompt_for_every_choice(client):
    plain = client.post("/tokenize", json={"model": "base", "messages": CHAT}).json()["count"]
    with_tools = client.post("/tokenize", json={"model": "base", "messages": CHAT, "tools": TOOLS}).json()["count"]
    assert with_tools > plain + 20
    body = _chat(client, tools=TOOLS, tool_choice="none", max_tokens=1).json()
    assert body["usage"]["prompt_tokens"] == with_tools


@pytest.mark.parametrize(
    ("params", "param", "words"),
    [
        ({"tool_choice": "required"}, "tool_choice", "`tools` must be set"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "Invalid value for `tool_choice`"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "does not match any of the specified `tools`",
        ),
        ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice", "Invalid value for `function`"),
        ({"tools": [{"type": "retrieval"}]}, "body.tools.0.type", "validation error"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "body.tools.0.function.name", "name"),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
            "cannot be combined",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
            "tools[0].function.parameters",
            "cannot be enforced",
        ),
    ],
)
def test_what_cannot_be_done_is_a_400_naming_the_field(client, params, param, words):
    reply = _chat(client, **params)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_auto_without_a_parser_is_refused_as_vllm_refuses_it(bare):
    reply = _chat(bare, tools=TOOLS)  # tools without tool_choice mean "auto"
    assert reply.status_code == 400
    assert reply.json()["error"]["message"].startswith('"auto" tool choice requires --enable-auto-tool-choice')
    forced = _chat(bare, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=64)
    assert forced.status_code == 200 and forced.json()["choices"][0]["message"]["tool_calls"]


# --- the format hone-tiny is trained on is the one served answers are read in --------------------------------------


def test_hone_tiny_writes_calls_in_the_format_its_parser_reads():
    from hone_kernel.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "oslo"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone":"cet"}'}},
    ]
    messages = [*CHAT, {"role": "assistant", "content": None, "tool_calls": calls}]
    prompt = tokenizer.apply_chat_template(CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    assert whole.startswith(prompt) and 'get_weather{"city": {"type": "string", "enum"' in prompt
    answer = whole[len(prompt) :].removesuffix("<|im_end|>\n")
    read = BUILTIN_PARSERS["llama3_json"].extract(answer)
    assert read.content is None
    assert [(c.name, json.loads(c.arguments)) for c in read.calls] == [
        ("get_weather", {"city": "oslo"}),
        ("get_time", {"zone": "cet"}),
    ]


@pytest.mark.parametrize(
    ("parser", "text", "content", "calls"),
    [
        ("llama3_json", '{"name": "f", "parameters": {"a": 1}}', None, [("f", {"a": 1})]),
        (
            "llama3_json",
            '<|python_tag|>{"name": "f", "arguments": {}}; {"name": "g", "arguments": {}}',
            None,
            ["f", "g"],
        ),
        (
            "llama3_json",
            '{"name": "f", "arguments": {}} and some words',
            '{"name": "f", "arguments": {}} and some words',
            [],
        ),
        ("llama3_json", "just words", "just words", []),
        ("llama3_json", '{"arguments": {}}', '{"arguments": {}}', []),
        (
            "hermes",
            'Sure. <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>',
            "Sure. ",
            [("f", {"a": 1})],
        ),
        ("hermes", "<tool_call>{bad json}</tool_call>", "<tool_call>{bad json}</tool_call>", []),
        ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}]', None, [("f", {"a": 1})]),
    ],
)
def test_parsers_read_calls_or_leave_the_text_as_content(parser, text, content, calls):
    read = BUILTIN_PARSERS[parser].extract(text)
    assert read.content == content
    got = (
        [(c.name, json.loads(c.arguments)) if isinstance(calls[0], tuple) else c.name for c in read.calls]
        if calls
        else []
    )
    assert got == calls


def test_streamed_auto_answers_hold_back_what_may_be_a_call():
    plan = ToolPlan("auto", tuple(TOOLS), parser=BUILTIN_PARSERS["hermes"])
    state = StreamedChoice(plan)
    sent = [state.delta(piece, [])[0] for piece in ["Let me", " check <tool", "_call>", '{"name": "get_time", ']]
    assert sent == [{"content": "Let me"}, {"content": " check "}, None, None]
    last, _, calls = state.finish('"arguments": {"zone": "utc"}}</tool_call>', [])
    assert calls and "content" not in last
    (call,) = last["tool_calls"]
    assert call["index"] == 0 and call["function"] == {"name": "get_time", "arguments": '{"zone": "utc"}'}
    # text that never becomes a call is sent whole at the end
    state = StreamedChoice(ToolPlan("auto", tuple(TOOLS), parser=BUILTIN_PARSERS["llama3_json"]))
    assert state.delta("{not", [])[0] is None
    assert state.finish(" json", [])[0] == {"content": "{not json"}


def test_auto_with_parallel_false_keeps_the_first_call():
    plan = ToolPlan("auto", tuple(TOOLS), parser=BUILTIN_PARSERS["llama3_json"], parallel=False)
    read = plan.read('{"name": "a", "arguments": {}}; {"name": "b", "arguments": {}}')
    assert read == Extracted(None, (ParsedCall("a", "{}"),))


# --- which parser an engine gets ----------------------------------------------------------------------------------


def test_engines_are_started_with_the_base_models_parser():
    from inference.launcher import engine_command

    for engine in ("vllm", "builtin"):
        argv = engine_command(
            engine,
            "/m",
            "m",
            host="h",
            port=1,
            max_loras=1,
            max_cpu_loras=1,
            max_lora_rank=8,
            tool_call_parser="hermes",
        ).argv
        at = argv.index("--enable-auto-tool-choice")
        assert argv[at + 1 : at + 3] == ["--tool-call-parser", "hermes"]
    plain = engine_command("vllm", "/m", "m", host="h", port=1, max_loras=1, max_cpu_loras=1, max_lora_rank=8).argv
    assert "--enable-auto-tool-choice" not in plain and "--tool-call-parser" not in plain


def test_the_built_in_engine_refuses_auto_without_a_parser_at_start_and_unknown_parsers():
    from inference.__main__ import parse_args

    assert parse_args(["--model", "m", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]).tool_call_parser
    for argv in (["--enable-auto-tool-choice"], ["--tool-call-parser", "pythonic"]):
        with pytest.raises(SystemExit):
            parse_args(["--model", "m", *argv])


def test_a_base_models_parser_comes_from_its_entry_or_its_family():
    from service.base_models import BaseModelRegistry

    registry = BaseModelRegistry(
        {
            "llama": "meta-llama/Llama-3.1-8B-Instruct",
            "qwen": {"source": "Qwen/Qwen2.5-7B-Instruct"},
            "mine": {"source": "/models/mine", "tool_call_parser": "mistral"},
            "none": {"source": "Qwen/Qwen2.5-7B-Instruct", "tool_call_parser": None},
            "odd": "/models/odd",
        }
    )
    parsers = {name: registry.get(name).tool_call_parser for name in ("llama", "qwen", "mine", "none", "odd")}
    assert parsers == {"llama": "llama3_json", "qwen": "hermes", "mine": "mistral", "none": None, "odd": None}
    assert registry.get("hone-tiny").tool_call_parser == "llama3_json"
    with pytest.raises(ValueError, match="tool_call_parser must be one of vLLM's parsers"):
        BaseModelRegistry({"bad": {"source": "/m", "tool_call_parser": "llama3"}})
