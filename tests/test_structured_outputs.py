"""Structured outputs on the built-in engine: `response_format` `json_object` and `json_schema` answers parse and
validate, by constrained decoding (xgrammar, hone_kernel/structured.py), even from hone-tiny untrained, whose free
answers are not JSON at all; streamed or not, on the base or an adapter, chat or text completions; a format that
is not one, or a schema xgrammar cannot enforce, is a 400 naming the field.

A real engine subprocess (started as the control plane starts one) and plain HTTP; the format's reading
(hone_kernel/output_format.py) is tested in-process."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from hone_kernel.output_format import FormatError, OutputFormat, parse
from tests.test_engine_protocol import CHAT, MAX_MODEL_LEN, SERVED, EngineProcess, make_adapter, sse_events

TICKET = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["Billing", "Account", "Sales"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 3},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["label", "priority", "tags"],
    "additionalProperties": False,
}
STRICT = {"type": "json_schema", "json_schema": {"name": "ticket", "strict": True, "schema": TICKET}}
SEEDS = range(6)
JSON_OBJ = {"type": "json_object"}


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    logs = tmp_path_factory.mktemp("structured")
    engine = EngineProcess(
        logs / "engine.log", max_loras=1, max_cpu_loras=1, max_lora_rank=16, max_model_len=MAX_MODEL_LEN
    ).wait()
    adapter = make_adapter(logs / "adapter", 11)
    try:
        with httpx.Client(base_url=engine.url, timeout=120) as client:
            loaded = client.post("/v1/load_lora_adapter", json={"lora_name": "tuned", "lora_path": str(adapter)})
            assert loaded.status_code == 200, loaded.text
            yield client
    finally:
        engine.stop()


def chat(http, **body) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": SERVED, "messages": CHAT, "max_tokens": 120, **body})


def answers(http, **body) -> list[tuple[str, str]]:
    """(text, finish_reason) of one answer per seed, sampled at temperature 1."""
    out = []
    for seed in SEEDS:
        response = chat(http, temperature=1.0, seed=seed, **body)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        out.append((choice["message"]["content"], choice["finish_reason"]))
    return out


def parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


QUESTIONS = ["hello, can you reset my password please?", "my invoice is wrong", "Label this: login fails", "2+2?"]


def test_untrained_free_answers_are_not_json_and_json_object_answers_are(http):
    free = answers(http)
    assert not any(parses(text) for text, _ in free), free  # what the grammar has to overcome
    # Greedy: a JSON object's keys and strings are free text, which an untrained model sampled at temperature 1
    # need not ever end (it runs to max_tokens, finish_reason "length", as on vLLM); a bounded schema always ends.
    for question in QUESTIONS:
        reply = chat(http, messages=[{"role": "user", "content": question}], temperature=0, response_format=JSON_OBJ)
        choice = reply.json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        assert isinstance(json.loads(choice["message"]["content"]), dict), choice


@pytest.mark.parametrize("model", [SERVED, "tuned"])
def test_json_schema_answers_validate_against_the_schema(http, model):
    for text, finish in answers(http, model=model, response_format=STRICT):
        assert finish == "stop", (text, finish)
        jsonschema.validate(json.loads(text), TICKET)


def test_a_streamed_answer_is_the_same_valid_json(http):
    body = {"response_format": STRICT, "temperature": 1.0, "seed": 3}
    whole = chat(http, **body).json()["choices"][0]["message"]["content"]
    streamed = chat(http, stream=True, **body)
    assert streamed.status_code == 200, streamed.text
    chunks = [json.loads(e) for e in sse_events(streamed) if e != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole
    jsonschema.validate(json.loads(text), TICKET)


def test_text_completions_take_response_format_too(http):
    response = http.post(
        "/v1/completions",
        json={"model": SERVED, "prompt": "The ticket:", "max_tokens": 80, "seed": 1, "response_format": STRICT},
    )
    assert response.status_code == 200, response.text
    jsonschema.validate(json.loads(response.json()["choices"][0]["text"]), TICKET)


def test_text_is_free_text(http):
    plain = chat(http, temperature=0, max_tokens=12).json()["choices"][0]["message"]["content"]
    text = chat(http, temperature=0, max_tokens=12, response_format={"type": "text"}).json()
    assert text["choices"][0]["message"]["content"] == plain


@pytest.mark.parametrize(
    "response_format, param, words",
    [
        ({"type": "xml"}, "response_format.type", "must be one of"),
        ({"type": "json_schema"}, "response_format.json_schema", "is required"),
        ({"type": "json_schema", "json_schema": {"schema": TICKET}}, "response_format.json_schema.name", "name"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}},
            "response_format.json_schema.schema",
            "cannot be enforced",
        ),
        ({"type": "json_object", "schema": TICKET}, "response_format.schema", "takes no 'schema'"),
    ],
)
def test_a_format_that_is_not_one_is_a_400_naming_the_field(http, response_format, param, words):
    response = chat(http, response_format=response_format)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_ignore_eos_leaves_a_json_answer_no_end(http):
    response = chat(http, response_format=JSON_OBJ, ignore_eos=True)
    assert response.status_code == 400 and "ignore_eos" in response.json()["error"]["message"]


# --- the format's reading, in-process ----------------------------------------------------------------------------


def test_formats_read_as_openai_documents_them():
    assert parse(None) is None and parse({"type": "text"}) is None
    assert parse({"type": "json_object"}) == OutputFormat("json_object")
    strict = parse(STRICT)
    assert strict is not None and strict.kind == "json_schema" and strict.strict
    assert json.loads(strict.schema or "") == TICKET
    # key order does not make another grammar
    reordered = {**STRICT, "json_schema": {**STRICT["json_schema"], "schema": dict(reversed(list(TICKET.items())))}}
    assert parse(reordered) == strict
    # no schema: any JSON object (OpenAI makes the schema optional)
    assert parse({"type": "json_schema", "json_schema": {"name": "free"}}) == OutputFormat("json_object")
    assert parse(strict.to_response_format()) == strict
    for bad, param in [
        ("json", "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}, "response_format.json_schema.strict"),
        ({"type": "json_schema", "json_schema": {"name": "x", "format": 1}}, "response_format.json_schema.format"),
        ({"type": "json_schema", "json_schema": {"name": "x" * 65}}, "response_format.json_schema.name"),
    ]:
        with pytest.raises(FormatError) as refused:
            parse(bad)
        assert refused.value.param == param, (bad, refused.value.param)
