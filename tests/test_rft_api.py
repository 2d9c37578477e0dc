"""Reinforcement fine-tuning through the API: the real server, the real trainer (`python -m trainer`) on hone-tiny,
the openai SDK. A job's grader reads each prompt's own fields; its model grader is answered through the trainer
contract's MODEL_CHAT route, as the project: here by an external model the project registered, which is the FAKE
engine (tests/fake_engine: it answers "answer base" to everything), since no real second model runs here. What
the job learns is measured by benchmarks/reinforcement.py; these check what the API promises."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import sys

import openai
import pytest

from tests.support import (
    HoneServer,
    all_events,
    free_port,
    jsonl,
    one_label_tickets,
    start_python,
    tune_hone_tiny,
    wait_for,
    wait_http,
    wait_job,
)

TERMINAL = ("succeeded", "failed", "cancelled")

KEY = "sk-judge-5150"
LABELS = ["Billing", "Sales"]
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}
LABEL_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": LABELS}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}
JUDGE = {
    "type": "label_model",
    "name": "judge",
    "model": "ext:judge",
    "input": [{"role": "user", "content": "Is this a label? {{ sample.output_text }}"}],
    "labels": ["answer base", "other"],
    "passing_labels": ["answer base"],
}


def prompts(n: int, **extra) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Ticket {i}: my card"}], "label": LABELS[i % 2], **extra}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    from tests.test_engine_protocol import base_model

    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_"))}, "VLLM_API_KEY": KEY}
    argv = [sys.executable, "-m", "tests.fake_engine", "--model", str(base_model()), "--served-model-name", "judge"]
    proc = start_python([*argv, "--host", "127.0.0.1", "--port", str(port)], env, tmp_path_factory.mktemp("j") / "log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def server(tmp_path_factory, judge):
    env = {"HONE_LOCAL_SLOTS": "1", "HONE_AUTO_DEPLOY": "false", "HONE_EXTERNAL_MODEL_URLS": json.dumps([judge])}
    srv = HoneServer(tmp_path_factory.mktemp("rft"), env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def project(server, judge):
    project = server.new_project("rft")
    with project.http() as http:
        body = {"name": "judge", "base_url": judge, "model": "judge", "api_key": KEY}
        assert http.post("/v1/external_models", json=body).status_code == 200
    return project


def upload(client, rows: list[dict], name: str = "prompts.jsonl") -> str:
    return client.files.create(file=(name, jsonl(rows)), purpose="fine-tune").id


def test_a_graded_job_trains_reports_rewards_and_checkpoints(project):
    client = project.openai()
    grader = {
        "type": "multi",
        "name": "both",
        # the answers are JSON held to LABEL_SCHEMA: the exact grader reads the label out of them
        "graders": {"exact": {**EXACT, "input": "{{ sample.output_json.label }}"}, "judge": JUDGE},
        "calculate_output": "(exact + judge) / 2",
    }
    body = {
        "model": "hone-tiny",
        "training_file": upload(client, prompts(10)),
        "validation_file": upload(client, prompts(2), "valid.jsonl"),
        "seed": 3,
        "method": {
            "type": "reinforcement",
            "reinforcement": {
                "grader": grader,
                "hyperparameters": {"n_epochs": 1, "batch_size": 5, "compute_multiplier": 0.5, "eval_interval": 1},
                "response_format": LABEL_SCHEMA,
            },
        },
    }
    # Plain HTTP for this job: its multi grader's `graders` is a map of named graders, as OpenAI's grader guide
    # writes it, which OpenAI's own JSON Schema (a single grader there) would refuse in the echo.
    with project.http() as http:
        job = http.post("/v1/fine_tuning/jobs", json=body).json()
        done = wait_for(
            lambda: (got := http.get(f"/v1/fine_tuning/jobs/{job['id']}").json())["status"] in TERMINAL and got,
            timeout=300,
            interval=0.3,
        )
    assert done["status"] == "succeeded", done["error"]
    hp = done["method"]["reinforcement"]["hyperparameters"]
    assert [hp[k] for k in ("n_epochs", "batch_size", "compute_multiplier", "eval_interval", "eval_samples")] == [
        1,
        5,
        0.5,
        1,
        1,
    ]
    assert (
        hp["reasoning_effort"] == "default" and hp["beta"] == 0.04 and hp["max_completion_tokens"] == 64
    )  # hone-tiny's 16, made room for JSON
    assert done["method"]["reinforcement"]["grader"] == grader
    assert done["method"]["reinforcement"]["response_format"] == LABEL_SCHEMA
    steps = [e.data for e in all_events(client, done["id"]) if e.type == "metrics"]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        scores = s["train_grader_scores"]
        assert scores["judge"] == 1.0  # every answer judged through MODEL_CHAT, by the project's external model
        assert 0.0 <= scores["exact"] <= 1.0 and s["train_grader_errors"] == 0
        assert s["train_reward_mean"] == pytest.approx((scores["exact"] + 1.0) / 2)
        assert "valid_reward_mean" in s and s["train_sample"]["prompt"].startswith("Ticket")
        assert json.loads(s["train_sample"]["output"])["label"] in LABELS  # hone-tiny untrained, held to the schema
    assert "full_valid_reward_mean" in steps[-1]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(done["id"]).data
    assert [c.step_number for c in checkpoints] == [2]
    (result,) = done["result_files"]
    text = base64.b64decode(client.files.content(result).text).decode()  # result files are base64, as OpenAI's
    header = next(csv.reader(io.StringIO(text)))
    assert header == [
        "step",
        "train_loss",
        "train_reward_mean",
        "train_kl",
        "valid_reward_mean",
        "full_valid_reward_mean",
    ]
    assert done["fine_tuned_model"] and done["trained_tokens"] > 0


@pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")  # the SDK Hone serves
def test_a_jobs_evaluation_grades_the_tuned_model_and_its_parent_with_the_jobs_grader(project):
    """Hone's `evaluation` of a reinforcement job: after training, the tuned model and the model it was continued
    from (`compare_to` the parent) are served (this server has auto_deploy off: both only for the evaluation) and
    answer the validation prompts, greedy and as long as the job's answers; the job's grader scores each answer
    against the line's own label, and the summary is each model's mean reward. The parent is a supervised model
    that learnt to answer one label and stop: an endpoint passes the parity gate only if its model stops, which
    hone-tiny's base weights, and so a couple of reinforcement steps from them, do not."""
    client = project.openai()
    tickets, _ = one_label_tickets(seed=7)
    parent = tune_hone_tiny(client, tickets, n_epochs=3, batch_size=4, learning_rate_multiplier=3).fine_tuned_model
    job = client.fine_tuning.jobs.create(
        model=parent,
        training_file=upload(client, prompts(10)),
        validation_file=upload(client, prompts(3), "valid.jsonl"),
        seed=4,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": EXACT,
                "hyperparameters": {"n_epochs": 1, "batch_size": 5, "compute_multiplier": 0.25},
            },
        },
        extra_body={"evaluation": {"compare_to": parent}},
    )
    assert job.model_extra["evaluation"]["metric"] == "mean_reward"
    done = wait_job(client, job.id, lambda j: j.status in TERMINAL, timeout=300)
    assert done.status == "succeeded", done.error

    def finished():
        evaluation = client.fine_tuning.jobs.retrieve(job.id).model_extra["evaluation"]
        return evaluation["status"] in ("completed", "failed", "skipped") and evaluation

    evaluation = wait_for(finished, timeout=240, interval=0.5, what="the evaluation")
    assert evaluation["status"] == "completed", evaluation.get("reason")
    assert evaluation["testing_criteria"] == [EXACT]  # the job's grader
    assert evaluation["max_completion_tokens"] == 16  # the job's own (hone-tiny's "auto")
    results = evaluation["results"]
    assert (results["tuned"]["model"], results["compare"]["model"]) == (done.fine_tuned_model, parent)
    for side in results.values():
        assert side["status"] == "completed" and side["total"] == 3 and side["errored"] == 0
        items = list(client.evals.runs.output_items.list(side["run_id"], eval_id=evaluation["eval_id"]))
        assert sorted(i.datasource_item["label"] for i in items) == ["Billing", "Billing", "Sales"]  # whole lines
        rewards = []
        for item in items:
            (result,) = item.results
            answer = item.sample.output[0].content
            assert result.name == "exact" and result.score == float(answer == item.datasource_item["label"])
            assert (item.sample.temperature, item.sample.max_completion_tokens) == (0.0, 16)
            rewards.append(result.score)
        assert side["score"] == side["reward_mean"] == round(sum(rewards) / 3, 4)
    assert results["compare"]["score"] > 0  # the parent answers "Billing", the label of two prompts in three
    assert evaluation["improvement"] == round(results["tuned"]["score"] - results["compare"]["score"], 4)
    events = [e.message for e in all_events(client, job.id)]
    assert any(m.startswith(f"Evaluation: {done.fine_tuned_model} mean reward ") for m in events), events
    with project.http() as http:  # served for the evaluation only (auto_deploy is off here): stopped after it
        states = {e["model"]: e["state"] for e in http.get("/v1/endpoints").json()["data"]}
    assert (states[done.fine_tuned_model], states[parent]) == ("stopped", "stopped")


def test_a_prompt_without_the_graders_field_fails_the_job_naming_its_line(project):
    client = project.openai()
    rows = prompts(12)
    del rows[4]["label"], rows[9]["label"]
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=upload(client, rows),
        method={"type": "reinforcement", "reinforcement": {"grader": EXACT}},
    )
    failed = wait_job(client, job.id, lambda j: j.status == "failed", timeout=60)
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "line 5 has no {{item.label}}; line 10 has no {{item.label}}" in failed.error.message


@pytest.mark.parametrize(
    ("method", "param", "code"),
    [
        ({"type": "reinforcement"}, "method.reinforcement.grader", "missing_required_parameter"),
        (
            {
                "type": "reinforcement",
                "reinforcement": {"grader": EXACT, "hyperparameters": {"reasoning_effort": "high"}},
            },
            "method.reinforcement.hyperparameters.reasoning_effort",
            "invalid_value",
        ),
        (  # a format that is not one (json_object and json_schema are honoured: tests/test_rft_core.py)
            {"type": "reinforcement", "reinforcement": {"grader": EXACT, "response_format": {"type": "xml"}}},
            "method.reinforcement.response_format.type",
            "invalid_value",
        ),
        (
            {
                "type": "reinforcement",
                "reinforcement": {"grader": EXACT, "response_format": {"type": "json_schema", "json_schema": {}}},
            },
            "method.reinforcement.response_format.json_schema.name",
            "invalid_value",
        ),
        (
            {"type": "reinforcement", "reinforcement": {"grader": {**JUDGE, "model": "ext:nobody"}}},
            "method.reinforcement.grader.model",
            "model_not_found",
        ),
        (
            {
                "type": "reinforcement",
                "reinforcement": {"grader": EXACT, "hyperparameters": {"compute_multiplier": 11}},
            },
            "method.reinforcement.hyperparameters.compute_multiplier",
            None,
        ),
        (
            {"type": "reinforcement", "reinforcement": {"grader": {**EXACT, "reference": "{{ itm.label }}"}}},
            "method.reinforcement.grader",
            None,
        ),
        ({"type": "supervised"}, "training_file", "invalid_training_file"),
    ],
)
def test_what_a_reinforcement_job_cannot_do_is_refused(project, method, param, code):
    client = project.openai()
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=upload(client, prompts(10)), method=method)
    assert err.value.param is not None and err.value.param.startswith(param), err.value.body
    if code:
        assert err.value.code == code


def test_chat_data_is_refused_for_reinforcement(project):
    client = project.openai()
    chat = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(10)
    ]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=upload(client, chat, "chat.jsonl"),
            method={"type": "reinforcement", "reinforcement": {"grader": EXACT}},
        )
    assert (err.value.param, err.value.code) == ("training_file", "invalid_training_file")
    assert "prompts" in err.value.message.lower() or "reinforcement" in err.value.message


# --- distillation (a Hone method: the job is read over plain HTTP, as OpenAI's schema has no such method) -------


def test_a_distillation_job_trains_the_student_on_the_teachers_answers(project):
    client = project.openai()
    body = {
        "model": "hone-tiny",
        "training_file": upload(client, prompts(10)),
        "validation_file": upload(client, prompts(2), "valid.jsonl"),
        "method": {
            "type": "distillation",
            "distillation": {"teacher": "ext:judge", "hyperparameters": {"n_epochs": 2, "batch_size": 5}},
        },
    }
    with project.http() as http:
        job = http.post("/v1/fine_tuning/jobs", json=body)
        assert job.status_code == 200, job.text
        job_id = job.json()["id"]
        done = wait_for(
            lambda: (got := http.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"] in TERMINAL and got,
            timeout=300,
            interval=0.3,
        )
    assert done["status"] == "succeeded", done["error"]
    hp = done["method"]["distillation"]["hyperparameters"]
    assert (hp["samples_per_prompt"], hp["temperature"], hp["max_completion_tokens"]) == (1, 0.0, 16)
    files = {client.files.retrieve(f).filename: f for f in done["result_files"]}
    assert set(files) == {"step_metrics.csv", "teacher_answers.jsonl"}
    lines = [
        json.loads(line)
        for line in base64.b64decode(client.files.content(files["teacher_answers.jsonl"]).text).splitlines()
    ]
    assert len(lines) == 10
    assert lines[0]["messages"] == [
        {"role": "user", "content": "Ticket 0: my card"},
        {"role": "assistant", "content": "answer base"},  # the teacher's answer, not the line's label
    ]
    events = [e.message for e in all_events(client, job_id)]
    assert "Teacher ext:judge answered 10/10 prompts of the training file" in events
    steps = [e.data for e in all_events(client, job_id) if e.type == "metrics"]
    assert len(steps) == 4 and "full_valid_loss" in steps[-1]  # validated on the teacher's answers to its prompts


@pytest.mark.parametrize(
    ("distill", "param", "code"),
    [
        (None, "method.distillation.teacher", "missing_required_parameter"),
        ({"teacher": "ext:nobody"}, "method.distillation.teacher", "model_not_found"),
        ({"teacher": "ext:judge", "hyperparameters": {"samples_per_prompt": 17}}, "method.distillation", None),
    ],
)
def test_what_a_distillation_job_cannot_do_is_refused(project, distill, param, code):
    client = project.openai()
    method = {"type": "distillation", **({"distillation": distill} if distill else {})}
    with project.http() as http:
        got = http.post(
            "/v1/fine_tuning/jobs",
            json={"model": "hone-tiny", "training_file": upload(client, prompts(10)), "method": method},
        )
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert error["param"].startswith(param) and (code is None or error["code"] == code), error
