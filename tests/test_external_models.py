"""External models: a project registers an OpenAI-compatible endpoint outside Hone (URL within the admin's
allow-list, key sealed at rest) and measures against it, in an eval run and in a model grader, as it would the
OpenAI model it runs today. The "external" endpoint here is the FAKE engine (tests/fake_engine) on its own port
with its own API key: it speaks OpenAI's chat completions and answers "answer base"; what is tested is Hone
calling it, not a model."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

import httpx
import pytest

from tests.support import (
    FAKE_ENGINE_PYTHON,
    HoneServer,
    chat_dataset,
    fake_trainer_env,
    free_port,
    start_python,
    wait_http,
    wait_job,
)

KEY = "sk-incumbent-secret-7391"
pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def incumbent(tmp_path_factory):
    from tests.test_engine_protocol import base_model

    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_"))}, "VLLM_API_KEY": KEY}
    argv = [
        sys.executable,
        "-m",
        "tests.fake_engine",
        "--model",
        str(base_model()),
        "--served-model-name",
        "gpt-incumbent",
    ]
    proc = start_python(
        [*argv, "--host", "127.0.0.1", "--port", str(port)], env, tmp_path_factory.mktemp("incumbent") / "log"
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def server(tmp_path_factory, incumbent):
    env = {
        "HONE_EXTERNAL_MODEL_URLS": json.dumps([incumbent]),
        "HONE_EVAL_POLL_S": "0.3",
        # a job measured against the incumbent: the FAKE trainer, and the FAKE engine for the tuned model
        **fake_trainer_env(step_s=0.01),
        "HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON,
        "HONE_AUTO_DEPLOY": "true",
    }
    srv = HoneServer(tmp_path_factory.mktemp("external-models"), env)
    yield srv
    srv.stop()


def register(http: httpx.Client, base_url: str, name: str = "incumbent", key: str = KEY) -> httpx.Response:
    return http.post(
        "/v1/external_models", json={"name": name, "base_url": base_url, "model": "gpt-incumbent", "api_key": key}
    )


def test_registered_with_its_key_sealed_and_never_answered(server, incumbent):
    project, other = server.new_project("movers"), server.new_project("others")
    with project.http() as http:
        created = register(http, incumbent).json()
        assert (created["name"], created["api_key"], created["base_url"]) == ("ext:incumbent", "...7391", incumbent)
        assert [m["id"] for m in http.get("/v1/external_models").json()["data"]] == [created["id"]]
        assert http.get(f"/v1/external_models/{created['id']}").json()["api_key"] == "...7391"
        again = register(http, incumbent)
        assert again.status_code == 400 and again.json()["error"]["param"] == "name"
    with other.http() as http:  # another project's external model does not exist for this one
        assert http.get(f"/v1/external_models/{created['id']}").status_code == 404
        assert http.get("/v1/external_models").json()["data"] == []
    stored = (
        sqlite3.connect(server.data_dir / "hone.db").execute("SELECT api_key_sealed FROM external_models").fetchone()[0]
    )
    assert KEY not in stored and "7391" not in stored  # sealed at rest
    with project.http() as http:
        assert http.delete(f"/v1/external_models/{created['id']}").json()["deleted"] is True
        assert http.get(f"/v1/external_models/{created['id']}").status_code == 404


@pytest.mark.parametrize("suffix", ["evil", "/../../other", ""])
def test_only_urls_under_the_allow_list(server, incumbent, suffix):
    url = {"evil": incumbent + "evil", "/../../other": "http://127.0.0.1:1/v1", "": "ftp://" + incumbent[7:]}[suffix]
    with server.new_project("outside").http() as http:
        refused = register(http, url)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "base_url", refused.text


def test_an_eval_run_and_a_grader_call_the_external_model(server, incumbent):
    project = server.new_project("comparing")
    with project.http() as http:
        assert register(http, incumbent).status_code == 200
        assert register(http, incumbent, name="wrong-key", key="sk-not-it").status_code == 200
    client = project.openai()
    ev = client.evals.create(
        name="incumbent",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "answer",
                "input": "{{ sample.output_text }}",
                "reference": "answer base",
                "operation": "eq",
            }
        ],
    )

    def run(model: str):
        source = {
            "type": "completions",
            "model": model,
            "source": {"type": "file_content", "content": [{"item": {"q": f"q{i}"}} for i in range(3)]},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{ item.q }}"}]},
        }
        created = client.evals.runs.create(ev.id, data_source=source)
        deadline = time.monotonic() + 60
        while (got := client.evals.runs.retrieve(created.id, eval_id=ev.id)).status not in ("completed", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        return got

    good = run("ext:incumbent")
    assert good.status == "completed" and (good.result_counts.passed, good.result_counts.total) == (3, 3)
    (usage,) = good.per_model_usage
    assert (usage.model_name, usage.invocation_count) == ("ext:incumbent", 3) and usage.prompt_tokens > 0
    refused = run("ext:wrong-key")  # the endpoint refuses the key: every row errored, saying so
    assert refused.result_counts.errored == 3
    item = next(iter(client.evals.runs.output_items.list(refused.id, eval_id=ev.id)))
    assert "HTTP 401" in item.sample.error.message
    label = {
        "type": "label_model",
        "name": "judge",
        "model": "ext:incumbent",
        "input": [{"role": "user", "content": "{{ sample.output_text }}"}],
        "labels": ["answer base", "other"],
        "passing_labels": ["answer base"],
    }
    assert client.fine_tuning.alpha.graders.run(grader=label, model_sample="x").reward == 1.0
    with pytest.raises(Exception) as err:  # a name the project did not register
        client.evals.runs.create(
            ev.id,
            data_source={
                **{"type": "completions"},
                "model": "ext:nope",
                "source": {"type": "file_content", "content": [{"item": {}}]},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "x"}]},
            },
        )
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "data_source.model"


def test_a_job_is_measured_against_the_external_model_it_would_replace(server, incumbent):
    project = server.new_project("replacing")
    with project.http() as http:
        assert register(http, incumbent, name="today").status_code == 200
    client = project.openai()
    training = client.files.create(file=("t.jsonl", chat_dataset(20)), purpose="fine-tune").id
    criterion = {
        "type": "string_check",
        "name": "answer",
        "input": "{{ sample.output_text }}",
        "reference": "answer base",
        "operation": "eq",
    }
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={
            "evaluation": {"compare_to": "ext:today", "testing_criteria": [criterion], "deploy_if_better": True}
        },
    )
    wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=120)
    deadline = time.monotonic() + 60
    while (evaluation := client.fine_tuning.jobs.retrieve(job.id).model_extra["evaluation"])["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline, evaluation
        time.sleep(0.3)
    assert evaluation["status"] == "completed", evaluation
    results = evaluation["results"]
    assert (results["compare"]["model"], results["compare"]["score"], results["tuned"]["score"]) == (
        "ext:today",
        1.0,
        0.0,
    )
    assert evaluation["deployed"] is False and "over ext:today" in evaluation["reason"]
