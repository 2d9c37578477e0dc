"""A job measured against its base (Hone's `evaluation` on job creation): refusals at creation, the held-out slice
the trainer is told to skip, and, after training, the side-by-side summary on the job, in its events and in a
result file, with `deploy_if_better` keeping or retiring the tuned model's endpoint.

The trainer and the engines here are the FAKE ones (tests/fake_trainer, tests/fake_engine): what is tested is
the control plane's evaluation flow. The fake engine answers "answer base" for hone-tiny and "answer <digest of
the adapter>" for a tuned model, so criteria over those answers decide who wins. The real tuned model is measured
against the real base in tests/tuned_tickets/test_evals.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import openai
import pytest

from tests.support import FAKE_ENGINE_PYTHON, HoneServer, chat_dataset, fake_trainer_env, jsonl, wait_for, wait_job

# The openai SDK warns that OpenAI is retiring its hosted Evals API (2026-11-30); the SDK's client is what Hone serves.
pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")

NOT_BASE = {
    "type": "string_check",
    "name": "not_base",
    "input": "{{ sample.output_text }}",
    "reference": "answer base",
    "operation": "ne",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, moto):
    env = {
        **moto.env(),  # the buckets a Vertex evaluationConfig writes its results to (Hone's own storage: files)
        **fake_trainer_env(step_s=0.01),
        "HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON,
        "HONE_AUTO_DEPLOY": "true",
        "HONE_LOCAL_SLOTS": "1",
        "HONE_EVAL_POLL_S": "0.3",
    }
    srv = HoneServer(tmp_path_factory.mktemp("job-evaluation"), env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def project(server):
    return server.new_project("evaluated")


def wait_evaluation(client, job_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        evaluation = job.model_extra["evaluation"]
        if evaluation["status"] in ("completed", "failed", "skipped") or time.monotonic() > deadline:
            return job, evaluation
        time.sleep(0.3)


def create(client, training: str, **evaluation):
    return client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training,
        seed=5,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={"evaluation": evaluation},
    )


def test_a_held_out_slice_is_not_trained_on_and_the_winner_stays_deployed(server, project):
    client = project.openai()
    training = client.files.create(file=("t.jsonl", chat_dataset(40)), purpose="fine-tune").id
    job = create(client, training, testing_criteria=[NOT_BASE], deploy_if_better=True, max_rows=50)
    assert job.model_extra["evaluation"]["status"] == "pending"
    assert job.model_extra["evaluation"]["source"] == "holdout"
    job = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=120)
    spec = json.loads((server.data_dir / "blobs" / "jobs" / job.id / "spec.json").read_text())
    held = spec["training_file"]["exclude_examples"]
    assert len(held) == 4 and held == sorted(set(held)) and all(0 <= i < 40 for i in held)  # 10% of 40

    job, evaluation = wait_evaluation(client, job.id)
    assert evaluation["status"] == "completed", evaluation
    tuned, base = evaluation["results"]["tuned"], evaluation["results"]["compare"]
    assert (tuned["model"], base["model"]) == (job.fine_tuned_model, "hone-tiny")
    assert (tuned["score"], base["score"], tuned["total"]) == (1.0, 0.0, 4)
    assert evaluation["improvement"] == 1.0 and evaluation["deployed"] is True
    assert "holdout" not in evaluation  # the held-out line numbers stay inside
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=50)]
    assert any(
        m.startswith("Evaluation: ") and "100.0% vs hone-tiny 0.0% on 4 rows (+100.0 points)" in m for m in messages
    )
    # The comparison is an eval of the project, its runs and output items readable through the Evals API.
    ev = client.evals.retrieve(evaluation["eval_id"])
    assert ev.metadata == {"fine_tuning_job_id": job.id}
    items = list(client.evals.runs.output_items.list(evaluation["runs"]["tuned"], eval_id=ev.id))
    assert len(items) == 4 and all(i.status == "pass" for i in items)
    # A result file with the same summary.
    result = next(f for f in job.result_files if client.files.retrieve(f).filename == "evaluation.json")
    saved = json.loads(base64.b64decode(client.files.content(result).read()))  # result files come base64, as OpenAI's
    assert saved["results"] == evaluation["results"]
    with project.http() as http:
        states = {e["model"]: e["state"] for e in http.get("/v1/endpoints").json()["data"]}
    # the tuned model won and stays; the base was deployed for the evaluation only, and is retired after it
    assert (states[job.fine_tuned_model], states["hone-tiny"]) == ("ready", "stopped")
    # The CLI prints the comparison side by side.
    env = {**os.environ, "HONE_BASE_URL": server.base_url, "HONE_API_KEY": project.api_key}
    shown = subprocess.run(
        [sys.executable, "-m", "hone", "jobs", "evaluation", job.id, "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "evaluation: completed (holdout, against hone-tiny)"
    assert lines[2].split()[:3] == ["tuned", job.fine_tuned_model, "100.0%"]
    assert lines[3].split()[:3] == ["compared", "hone-tiny", "0.0%"]
    assert "improvement +100.0 points over hone-tiny" in shown.stdout and "deployed: yes" in shown.stdout


def test_a_tuned_model_that_does_not_beat_its_base_is_not_deployed_and_the_job_says_why(server, project):
    client = project.openai()
    training = client.files.create(file=("t.jsonl", chat_dataset(20)), purpose="fine-tune").id
    valid = client.files.create(file=("v.jsonl", chat_dataset(6)), purpose="fine-tune").id
    is_base = {**NOT_BASE, "name": "is_base", "operation": "eq"}
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training,
        validation_file=valid,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={"evaluation": {"testing_criteria": [is_base], "deploy_if_better": True, "min_improvement": 0.05}},
    )
    assert job.model_extra["evaluation"]["source"] == "validation_file"
    job, evaluation = wait_evaluation(client, wait_job(client, job.id, lambda j: j.status == "succeeded", 120).id)
    assert evaluation["status"] == "completed", evaluation
    assert (evaluation["results"]["tuned"]["score"], evaluation["results"]["compare"]["score"]) == (0.0, 1.0)
    assert evaluation["deployed"] is False
    assert evaluation["reason"] == "not deployed: -100.0 points over hone-tiny, 5.0 needed"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=50)]
    assert any(evaluation["reason"] in m for m in messages)
    with project.http() as http:
        tuned = [e for e in http.get("/v1/endpoints").json()["data"] if e["model"] == job.fine_tuned_model]
    assert [e["state"] for e in tuned] == ["stopped"]


def test_a_job_that_asked_not_to_be_deployed_is_served_for_its_evaluation_only(server, project):
    client = project.openai()
    training = client.files.create(file=("t.jsonl", chat_dataset(20)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={"evaluation": {"testing_criteria": [NOT_BASE]}, "auto_deploy": False},
    )
    job, evaluation = wait_evaluation(client, wait_job(client, job.id, lambda j: j.status == "succeeded", 120).id)
    assert evaluation["status"] == "completed" and evaluation["results"]["tuned"]["score"] == 1.0, evaluation
    with project.http() as http:
        states = [e["state"] for e in http.get("/v1/endpoints").json()["data"] if e["model"] == job.fine_tuned_model]
    assert states == ["stopped"]


def test_a_reinforcement_job_is_compared_by_its_graders_mean_reward(server, project):
    """The job's own grader (a multi one, which eval testing criteria alone do not allow) grades both models on the
    validation prompts, each whole line the item: the fake engine's base answers score 0.25, the tuned model's 0.75."""
    client = project.openai()
    prompts = [
        {"messages": [{"role": "user", "content": f"Ticket {i}"}], "base_answer": "answer base"} for i in range(14)
    ]
    check = {**NOT_BASE, "reference": "{{ item.base_answer }}"}
    grader = {
        "type": "multi",
        "name": "reward",
        "graders": {"is_base": {**check, "name": "is_base", "operation": "eq"}, "not_base": check},
        "calculate_output": "0.25 * is_base + 0.75 * not_base",
    }
    body = {
        "model": "hone-tiny",
        "training_file": client.files.create(file=("p.jsonl", jsonl(prompts[:11])), purpose="fine-tune").id,
        "validation_file": client.files.create(file=("v.jsonl", jsonl(prompts[11:])), purpose="fine-tune").id,
        "method": {"type": "reinforcement", "reinforcement": {"grader": grader}},
        "evaluation": {"deploy_if_better": True, "min_improvement": 0.4},
    }
    with project.http() as http:  # plain HTTP: OpenAI's schema of the echoed job has no multi grader's map
        created = http.post("/v1/fine_tuning/jobs", json=body)
        assert created.status_code == 200, created.text
        assert created.json()["evaluation"]["metric"] == "mean_reward"
        job = wait_for(
            lambda: (
                (got := http.get(f"/v1/fine_tuning/jobs/{created.json()['id']}").json())["evaluation"]["status"]
                in ("completed", "failed", "skipped")
                and got
            ),
            timeout=120,
            interval=0.3,
        )
    evaluation, method = job["evaluation"], job["method"]
    assert job["status"] == "succeeded" and evaluation["status"] == "completed", (job["error"], evaluation)
    tuned, base = evaluation["results"]["tuned"], evaluation["results"]["compare"]
    assert (tuned["score"], tuned["reward_mean"], base["score"], tuned["total"]) == (0.75, 0.75, 0.25, 3)
    assert (tuned["passed"], base["passed"]) == (0, 0)  # a reward below 1 does not pass: the mean is the measure
    assert evaluation["improvement"] == 0.5 and evaluation["deployed"] is True
    assert evaluation["testing_criteria"] == [grader]
    # Answers as long as the job's own (its resolved max_completion_tokens), greedy with the job's seed.
    assert evaluation["max_completion_tokens"] == method["reinforcement"]["hyperparameters"]["max_completion_tokens"]
    items = list(client.evals.runs.output_items.list(evaluation["runs"]["tuned"], eval_id=evaluation["eval_id"]))
    assert sorted(i.datasource_item["messages"][0]["content"] for i in items) == ["Ticket 11", "Ticket 12", "Ticket 13"]
    assert all(i.datasource_item["base_answer"] == "answer base" for i in items)
    assert {(i.sample.temperature, i.sample.max_completion_tokens) for i in items} == {
        (0.0, evaluation["max_completion_tokens"])
    }
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job["id"], limit=50)]
    assert any(m.endswith("mean reward 0.750 vs hone-tiny 0.250 on 3 rows (+0.500 mean reward)") for m in messages)


@pytest.mark.parametrize(
    ("evaluation", "files", "param"),
    [
        ({"holdout_fraction": 0.5}, {}, "evaluation.holdout_fraction"),  # 6 of 12 left: fewer than 10
        ({"deploy_if_better": True}, {"auto_deploy": False}, "evaluation.deploy_if_better"),
        ({"compare_to": "ft:nobody:else::ftjob-x"}, {}, "evaluation.compare_to"),
        ({"file": "file-missing"}, {}, "evaluation.file"),
        ({"holdout_fraction": 0.9}, {}, "evaluation.holdout_fraction"),
        ({"testing_criteria": [{"type": "multi"}]}, {}, "evaluation.testing_criteria[0].type"),
        ({"judge": "strict"}, {}, "evaluation.judge"),
    ],
)
def test_evaluations_that_cannot_be_done_are_refused_at_creation(project, evaluation, files, param):
    client = project.openai()
    training = client.files.create(file=("t.jsonl", chat_dataset(12)), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="hone-tiny", training_file=training, extra_body={"evaluation": evaluation, **files}
        )
    assert err.value.body["param"] == param, err.value.body


def test_a_raw_text_file_has_no_answer_to_evaluate(project):
    client = project.openai()
    lines = b"".join(json.dumps({"text": f"line {i} of text"}).encode() + b"\n" for i in range(12))
    training = client.files.create(file=("raw.jsonl", lines), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=training, extra_body={"evaluation": {}})
    assert err.value.body["param"] == "evaluation.file" and "raw_text" in err.value.body["message"]


def test_a_vertex_evaluation_config_reports_its_metrics_where_vertex_puts_them(server, project, moto):
    """google-genai's `evaluation_config` on a tuning job: exact match and ROUGE-L over the validation dataset,
    aggregated as the SDK asks (average, standard deviation), answered in `evaluateDatasetRuns`, and the rows and
    aggregates written under the output prefix, which the project was granted."""
    from google.genai import types

    from tests.test_vertex_api import genai_client

    moto.client().create_bucket(Bucket="hone-eval-out")  # gs://hone-eval-out/ reads and writes it (unmapped)
    with server.admin() as admin:
        granted = admin.post(
            f"/v1/organization/projects/{project.project_id}/dataset_grants", json={"uri": "gs://hone-eval-out/runs/"}
        )
        assert granted.status_code == 200, granted.text
    files = project.openai().files
    training = files.create(file=("t.jsonl", chat_dataset(20)), purpose="fine-tune").id
    valid = files.create(file=("v.jsonl", chat_dataset(5)), purpose="fine-tune").id
    client = genai_client(server, project.api_key, project.project_id)

    def config(prefix: str, metrics=(types.Metric(name="exact_match"), types.Metric(name="rouge_l"))):
        return types.CreateTuningJobConfig(
            epoch_count=1,
            validation_dataset=types.TuningValidationDataset(gcs_uri=valid),
            evaluation_config=types.EvaluationConfig(
                metrics=list(metrics),
                output_config=types.OutputConfig(gcs_destination=types.GcsDestination(output_uri_prefix=prefix)),
            ),
        )

    with pytest.raises(Exception) as outside:  # a prefix the project was not granted reads as missing
        client.tunings.tune(
            base_model="hone-tiny",
            training_dataset=types.TuningDataset(gcs_uri=training),
            config=config("gs://hone-eval-out/other/"),
        )
    assert getattr(outside.value, "code", None) == 404, outside.value
    job = client.tunings.tune(
        base_model="hone-tiny",
        training_dataset=types.TuningDataset(gcs_uri=training),
        config=config("gs://hone-eval-out/runs/"),
    )
    job_id = job.name.rsplit("/", 1)[-1]
    _, evaluation = wait_evaluation(
        project.openai(), wait_job(project.openai(), job_id, lambda j: j.status == "succeeded", 120).id
    )
    assert evaluation["status"] == "completed", evaluation
    job = client.tunings.get(name=job.name)
    (run,) = job.evaluate_dataset_runs
    results = {
        (r.aggregation_metric, "exact" if r.exact_match_metric_value else "rouge"): (
            r.exact_match_metric_value or r.rouge_metric_value
        ).score
        for r in run.evaluate_dataset_response.aggregation_output.aggregation_results
    }
    assert set(results) == {(a, m) for a in ("AVERAGE", "STANDARD_DEVIATION") for m in ("exact", "rouge")}, results
    tuned = evaluation["results"]["tuned"]["aggregates"]
    assert results[("AVERAGE", "exact")] == tuned["exact_match"]["AVERAGE"]
    assert results[("AVERAGE", "rouge")] == tuned["rougel"]["AVERAGE"]
    directory = run.evaluate_dataset_response.output_info.gcs_output_directory
    assert directory == f"gs://hone-eval-out/runs/{job_id}/"
    written = json.loads(
        moto.client().get_object(Bucket="hone-eval-out", Key=f"runs/{job_id}/evaluation_results.json")["Body"].read()
    )
    assert written["aggregates"] == tuned and len(written["rows"]) == 5
    with pytest.raises(Exception) as judged:  # model-judged metrics: refused, not ignored
        client.tunings.tune(
            base_model="hone-tiny",
            training_dataset=types.TuningDataset(gcs_uri=training),
            config=config(
                "gs://hone-eval-out/runs/", metrics=[types.Metric(name="fluency", prompt_template="Rate: {response}")]
            ),
        )
    assert getattr(judged.value, "code", None) == 400, judged.value
