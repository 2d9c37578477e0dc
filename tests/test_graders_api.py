"""The graders API through the real openai SDK (`client.fine_tuning.alpha.graders`), on both backends: run and
validate, refusals that name the field, a hostile python grader answered with an error while the server stays
healthy, and model graders that call a served model through the gateway (a FAKE engine: what is tested is the
call, its retries and its accounting, not a model's judgement; see tests/fake_engine)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.support import FAKE_ENGINE_PYTHON, HoneServer, wait_endpoint
from tests.test_models_api import add_tuned_model

TICKET = {
    "type": "string_check",
    "name": "label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}


def test_run_a_string_check_through_the_sdk(client):
    graded = client.fine_tuning.alpha.graders.run(grader=TICKET, model_sample="Billing", item={"label": "Billing"})
    assert graded.reward == 1.0
    assert graded.metadata.name == "label" and graded.metadata.type == "string_check"
    assert not graded.metadata.errors.invalid_variable_error and graded.metadata.execution_time >= 0
    missed = client.fine_tuning.alpha.graders.run(grader=TICKET, model_sample="Shipping", item={"label": "Billing"})
    assert missed.reward == 0.0
    unknown = client.fine_tuning.alpha.graders.run(grader=TICKET, model_sample="Billing", item={"other": 1})
    assert unknown.reward == 0.0 and unknown.metadata.errors.invalid_variable_error


def test_run_a_multi_grader_with_its_sub_rewards(client):
    grader = {
        "type": "multi",
        "name": "both",
        "graders": {
            "exact": TICKET,
            "close": {
                "type": "text_similarity",
                "name": "close",
                "input": "{{ sample.output_text }}",
                "reference": "{{ item.label }}",
                "evaluation_metric": "fuzzy_match",
            },
        },
        "calculate_output": "0.25 * exact + 0.75 * close",
    }
    graded = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="Billing", item={"label": "Billing"})
    assert graded.sub_rewards == {"exact": 1.0, "close": 1.0} and graded.reward == 1.0


def test_validate_returns_the_grader_and_refusals_name_the_field(client):
    assert client.fine_tuning.alpha.graders.validate(grader=TICKET).grader.name == "label"
    cases = [
        ({**TICKET, "operation": "contains"}, "grader.operation", "invalid_value"),
        ({**TICKET, "input": "{{ row.label }}"}, "grader.input", "invalid_value"),
        ({**TICKET, "weight": 2}, "grader.weight", "unknown_parameter"),
        ({"type": "python", "name": "p", "source": "def score(s, i): return 1"}, "grader.source", "invalid_value"),
        (
            {"type": "python", "name": "p", "source": "def grade(s, i): return 1", "image_tag": "x"},
            "grader.image_tag",
            "invalid_value",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": TICKET}, "calculate_output": "a + b"},
            "grader.calculate_output",
            "invalid_value",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": {**TICKET, "opration": "eq"}}, "calculate_output": "a"},
            "grader.graders.a.opration",
            "unknown_parameter",
        ),
        (
            {"type": "score_model", "name": "s", "model": "gpt-4o", "input": [{"role": "user", "content": "x"}]},
            "grader.model",
            "model_not_found",
        ),
    ]
    for grader, param, code in cases:
        for call in (client.fine_tuning.alpha.graders.validate, client.fine_tuning.alpha.graders.run):
            extra = {} if call == client.fine_tuning.alpha.graders.validate else {"model_sample": "x"}
            with pytest.raises(openai.BadRequestError) as err:
                call(grader=grader, **extra)
            body = err.value.body
            assert (body["param"], body["code"]) == (param, code), body


def test_a_hostile_python_grader_gets_an_error_and_the_server_stays_healthy(server, client):
    attempts = {
        "reads /etc/passwd": ("return len(open('/etc/passwd').read())", "python_grader_runtime_error"),
        "opens a socket": (
            "import socket\n    socket.create_connection(('127.0.0.1', 5432))\n    return 1",
            "python_grader_runtime_error",
        ),
        "loops forever": ("while True:\n        pass", "python_grader_server_error"),
        "allocates 4 GiB": ("x = bytearray(4 << 30)\n    return 1", "python_grader_server_error"),
    }
    for what, (body, flag) in attempts.items():
        grader = {"type": "python", "name": what, "source": f"def grade(sample, item):\n    {body}\n"}
        graded = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="x")
        errors = graded.metadata.errors
        assert graded.reward == 0.0 and getattr(errors, flag), (what, errors)
        assert httpx.get(server.base_url + "/healthz", timeout=5).status_code == 200
    fine = {"type": "python", "name": "ok", "source": "def grade(sample, item):\n    return 0.25\n"}
    assert client.fine_tuning.alpha.graders.run(grader=fine, model_sample="x").reward == 0.25


def test_another_projects_model_cannot_grade(server, client, other_project):
    """A model grader may name only models its project can call: another project's tuned model does not exist
    for it (the same answer as a name that exists nowhere), while its own project validates it."""
    theirs = add_tuned_model(server, other_project, other_project.openai())
    grader = {"type": "score_model", "name": "s", "model": theirs, "input": [{"role": "user", "content": "x"}]}
    assert other_project.openai().fine_tuning.alpha.graders.validate(grader=grader).grader.model == theirs
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.alpha.graders.validate(grader=grader)
    assert err.value.body["code"] == "model_not_found" and "does not exist" in err.value.body["message"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server whose engines are the FAKE engine, and an endpoint of hone-tiny (it answers "answer base")."""
    server = HoneServer(tmp_path_factory.mktemp("graders"), {"HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON})
    try:
        project = server.new_project("graders")
        with project.http() as http:
            assert http.post("/v1/endpoints", json={"model": "hone-tiny"}).status_code == 200
            assert wait_endpoint(http, "hone-tiny")["state"] == "ready"
        yield server, project
    finally:
        server.stop()


def test_model_graders_call_a_served_model_through_the_gateway(served):
    server, project = served
    client = project.openai()
    prompt = [{"role": "user", "content": "Is '{{ sample.output_text }}' the label {{ item.label }}?"}]
    label = {
        "type": "label_model",
        "name": "judge",
        "model": "hone-tiny",
        "input": prompt,
        "labels": ["answer base", "no"],
        "passing_labels": ["answer base"],
    }
    graded = client.fine_tuning.alpha.graders.run(grader=label, model_sample="Billing", item={"label": "Billing"})
    assert graded.reward == 1.0, graded.metadata.errors
    assert graded.metadata.sampled_model_name == "hone-tiny" and graded.metadata.token_usage > 0
    usage = graded.model_grader_token_usage_per_model["hone-tiny"]
    assert usage["total_tokens"] == graded.metadata.token_usage
    # A score model whose model answers no number: a parse error, with the tokens it cost counted all the same.
    score = {"type": "score_model", "name": "s", "model": "hone-tiny", "input": prompt, "sampling_params": {"seed": 1}}
    graded = client.fine_tuning.alpha.graders.run(grader=score, model_sample="x", item={"label": "y"})
    assert graded.metadata.errors.model_grader_parse_error and graded.metadata.token_usage > 0
    # The grader's calls are the project's gateway traffic.
    with project.http() as http:
        endpoint = http.get("/v1/endpoints", params={"model": "hone-tiny"}).json()["data"][0]
    assert endpoint["usage"]["requests"] >= 2, endpoint["usage"]


def test_a_model_grader_whose_model_is_not_deployed_says_so(served):
    server, project = served
    with project.http() as http:
        base = http.get("/v1/models").json()["data"]
    assert any(m["id"] == "hone-tiny" for m in base)
    client = project.openai()
    grader = {"type": "score_model", "name": "s", "model": "hone-tiny", "input": [{"role": "user", "content": "x"}]}
    with project.http() as http:  # stop the only engine of hone-tiny
        endpoint = http.get("/v1/endpoints", params={"model": "hone-tiny"}).json()["data"][0]
        assert http.delete(f"/v1/endpoints/{endpoint['id']}").status_code == 200
    started = time.monotonic()
    graded = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="x")
    assert graded.metadata.errors.model_grader_server_error
    assert "has no endpoint" in graded.metadata.errors.model_grader_server_error_details
    assert time.monotonic() - started < 5  # a 404 is not retried
