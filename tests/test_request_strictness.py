"""Hone refuses what it does not do: unknown fields (with "did you mean"), fields it does not honour, and numbers
that are not finite answer 400 naming the field, in OpenAI's envelope or Google's, and a refused create leaves no
row behind. Against both backends, through the real openai SDK where it can send the request."""

from __future__ import annotations

import json
import math

import openai
import pytest
from sqlalchemy import create_engine, text

from tests.support import chat_dataset

LOCATION = "us-central1"


@pytest.fixture
def training_file(client):
    return client.files.create(file=("train.jsonl", chat_dataset(12)), purpose="fine-tune")


@pytest.mark.parametrize(
    "kwargs, param, hint",
    [
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_rnk": 8}}}},
            "method.supervised.hyperparameters.lora_rnk",
            "lora_rank",
        ),
        ({"hyperparameters": {"n_epoch": 2}}, "hyperparameters.n_epoch", "n_epochs"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"bta": 0.1}}}},
            "method.dpo.hyperparameters.bta",
            "beta",
        ),
        ({"method": {"type": "supervised", "supervisd": {}}}, "method.supervisd", "supervised"),
        (
            {"integrations": [{"type": "wandb", "wandb": {"project": "p", "tag": ["a"]}}]},
            "integrations[0].wandb.tag",
            "tags",
        ),
        ({"extra_body": {"sufix": "demo"}}, "sufix", "suffix"),
        ({"extra_body": {"zzz_unheard_of": 1}}, "zzz_unheard_of", None),
    ],
)
def test_unknown_fields_are_400_naming_the_full_path(client, training_file, kwargs, param, hint):
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id, **kwargs)
    assert (err.value.param, err.value.code) == (param, "unknown_parameter"), err.value.message
    assert f"'{param}'" in err.value.message
    if hint:
        assert err.value.message.endswith(f"did you mean '{hint}'?")
    else:
        assert "did you mean" not in err.value.message


def test_sections_and_integrations_hone_does_not_honour_are_refused(client, training_file):
    with pytest.raises(openai.BadRequestError) as err:  # would train supervised and drop the section
        client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=training_file.id,
            method={"type": "supervised", "reinforcement": {"grader": {}}},
        )
    assert (err.value.param, err.value.code) == ("method.reinforcement", "invalid_value")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=training_file.id,
            integrations=[{"type": "comet", "wandb": {"project": "p"}}],
        )
    assert err.value.param == "integrations[0].type" and "wandb" in err.value.message


def test_other_create_bodies_refuse_unknown_fields(server, project):
    with project.http() as http:
        endpoint = http.post("/v1/endpoints", json={"model": "hone-tiny", "idle_timeout": 60})
    with server.admin() as admin:
        created = admin.post("/v1/organization/projects", json={"name": "strict", "title": "x"})
        account = admin.post(
            f"/v1/organization/projects/{project.project_id}/service_accounts", json={"name": "bot", "role": "owner"}
        )
    for resp, param in ((endpoint, "idle_timeout"), (created, "title"), (account, "role")):
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param and resp.json()["error"]["code"] == "unknown_parameter"
    assert "did you mean 'idle_timeout_s'?" in endpoint.json()["error"]["message"]


def test_infinity_as_pythons_json_writes_it_is_400_naming_the_field(project, training_file):
    # json.dumps (httpx's json=, older openai SDKs) writes float("inf") as the token Infinity; the openai SDK
    # installed here refuses to, so the request is sent as they send it.
    body = json.dumps(
        {
            "model": "hone-tiny",
            "training_file": training_file.id,
            "hyperparameters": {"learning_rate_multiplier": math.inf},
        }
    )
    assert "Infinity" in body
    with project.http() as http:
        resp = http.post("/v1/fine_tuning/jobs", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("hyperparameters.learning_rate_multiplier", "invalid_value")
    assert "Infinity is not a finite number" in error["message"]


@pytest.mark.parametrize(
    "body, param, token",
    [
        (b'{"model": "hone-tiny", "training_file": "%s", "seed": NaN}', "seed", "NaN"),
        (
            b'{"model": "hone-tiny", "training_file": "%s", "method": {"type": "dpo", "dpo": {"hyperparameters": '
            b'{"beta": -Infinity}}}}',
            "method.dpo.hyperparameters.beta",
            "-Infinity",
        ),
        (
            b'{"model": "hone-tiny", "training_file": "%s", "hyperparameters": {"n_epochs": 1e999}}',
            "hyperparameters.n_epochs",
            "1e999",
        ),
        (
            b'{"model": "hone-tiny", "training_file": "%s", "metadata": {"k": "v"}, "integrations": [{"type": "wandb", '
            b'"wandb": {"project": "p", "tags": [1e400]}}]}',
            "integrations[0].wandb.tags[0]",
            "1e400",
        ),
    ],
)
def test_nan_and_infinity_anywhere_in_a_body_are_400(project, training_file, body, param, token):
    with project.http() as http:
        resp = http.post(
            "/v1/fine_tuning/jobs",
            content=body % training_file.id.encode(),
            headers={"content-type": "application/json"},
        )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_value", "invalid_request_error")
    assert f"{token} is not a finite number" in error["message"]


def _vertex(project, body: dict | bytes):
    path = f"/v1/projects/{project.project_id}/locations/{LOCATION}/tuningJobs"
    with project.http() as http:
        if isinstance(body, bytes):
            return http.post(path, content=body, headers={"content-type": "application/json"})
        return http.post(path, json=body)


def _google_400(resp) -> tuple[str, str]:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    [bad_request] = [d for d in error["details"] if d["@type"].endswith("BadRequest")]
    return bad_request["fieldViolations"][0]["field"], error["message"]


OUTPUT = {"gcsDestination": {"outputUriPrefix": "gs://results/evals/"}}


@pytest.mark.parametrize(
    "spec, field, words",
    [
        (  # evaluationConfig is honoured (tests/test_job_evaluation.py), but not what Hone does not compute
            {"evaluationConfig": {"metrics": [{"pointwiseMetricSpec": {}}], "outputConfig": OUTPUT}},
            "supervisedTuningSpec.evaluationConfig.metrics[0].pointwiseMetricSpec",
            "model-judged metrics are not supported",
        ),
        (
            {
                "evaluation_config": {
                    "metrics": [{"exact_match_spec": {}}],
                    "output_config": OUTPUT,
                    "autorater_config": {},
                }
            },
            "supervisedTuningSpec.evaluationConfig.autoraterConfig",
            "no autorater",
        ),
        (
            {"hyperParameters": {"epochCunt": 2}},
            "supervisedTuningSpec.hyperParameters.epochCunt",
            "did you mean 'epochCount'?",
        ),
        (
            {"hyperParameters": {"learningRateMultiplier": 1e7}},
            "supervisedTuningSpec.hyperParameters.learningRateMultiplier",
            "less than or equal to 1000000",
        ),
        ({"exportLastCheckpointOnly": True}, "supervisedTuningSpec.exportLastCheckpointOnly", "not supported"),
    ],
)
def test_vertex_fields_hone_does_not_honour_are_400(project, training_file, spec, field, words):
    resp = _vertex(
        project, {"baseModel": "hone-tiny", "supervisedTuningSpec": {"trainingDatasetUri": training_file.id, **spec}}
    )
    violation, message = _google_400(resp)
    assert violation == field and words in message, message


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"encryptionSpec": {"kmsKeyName": "k"}}, "encryptionSpec"),
        ({"serviceAccount": "sa@x"}, "serviceAccount"),
        ({"state": "JOB_STATE_SUCCEEDED"}, "state"),
        ({"tunedModelDisplayNam": "x"}, "tunedModelDisplayNam"),
    ],
)
def test_vertex_top_level_fields_are_honoured_or_refused(project, training_file, extra, field):
    resp = _vertex(
        project, {"baseModel": "hone-tiny", "supervisedTuningSpec": {"trainingDatasetUri": training_file.id}, **extra}
    )
    assert _google_400(resp)[0] == field


def test_vertex_tuning_mode_is_honoured(project, training_file):
    resp = _vertex(
        project,
        {
            "baseModel": "hone-tiny",
            "supervisedTuningSpec": {"trainingDatasetUri": training_file.id, "tuningMode": "TUNING_MODE_FULL"},
        },
    )
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["name"].rsplit("/", 1)[-1]
    with project.http() as http:
        job = http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert job["method"]["supervised"]["hyperparameters"]["tuning_mode"] == "full"


def test_vertex_infinity_is_400_in_googles_envelope(project, training_file):
    body = (
        b'{"baseModel": "hone-tiny", "supervisedTuningSpec": {"trainingDatasetUri": "%s", '
        b'"hyperParameters": {"learningRateMultiplier": Infinity}}}' % training_file.id.encode()
    )
    field, message = _google_400(_vertex(project, body))
    assert field == "supervisedTuningSpec.hyperParameters.learningRateMultiplier" and "Infinity" in message


def _counts(server, project_id: str) -> dict[str, int]:
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return {
                table: conn.execute(text(query), {"p": project_id}).scalar_one()
                for table, query in {
                    "jobs": "SELECT count(*) FROM jobs WHERE project_id = :p",
                    "job_events": "SELECT count(*) FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE j.project_id = :p",
                    "job_metadata": "SELECT count(*) FROM job_metadata",
                    "idempotency_keys": "SELECT count(*) FROM idempotency_keys WHERE project_id = :p",
                    "files": "SELECT count(*) FROM files WHERE project_id = :p",
                }.items()
            }
    finally:
        engine.dispose()


def test_a_refused_create_leaves_no_row_behind(server, project, client, training_file):
    before = _counts(server, project.project_id)
    base = {"model": "hone-tiny", "training_file": training_file.id, "metadata": {"team": "x"}}
    refused_bodies = [
        b'{"model": "hone-tiny", "training_file": "%s", "metadata": {"team": "x"}, "hyperparameters": '
        b'{"learning_rate_multiplier": Infinity}}' % training_file.id.encode(),
        b'{"model": "hone-tiny", "training_file": "%s", "seed": 1e999}' % training_file.id.encode(),
    ]
    with project.http() as http:
        for i, body in enumerate(refused_bodies):
            resp = http.post(
                "/v1/fine_tuning/jobs",
                content=body,
                headers={"content-type": "application/json", "idempotency-key": f"refused-{i}"},
            )
            assert resp.status_code == 400, resp.text
        for i, extra in enumerate(
            (
                {"hyperparameters": {"lora_rnk": 8}},
                {"method": {"type": "reinforcement"}},
                {"model": "gpt-9"},
                {"hyperparameters": {"batch_size": 1000}},
            )
        ):
            resp = http.post("/v1/fine_tuning/jobs", json={**base, **extra}, headers={"idempotency-key": f"json-{i}"})
            assert resp.status_code == 400, resp.text
    for spec in ({"evaluationConfig": {}}, {"hyperParameters": {"learningRateMultiplier": 1e9}}):
        _google_400(
            _vertex(
                project,
                {
                    "baseModel": "hone-tiny",
                    "labels": {"team": "x"},
                    "supervisedTuningSpec": {"trainingDatasetUri": training_file.id, **spec},
                },
            )
        )
    assert _counts(server, project.project_id) == before
    assert client.fine_tuning.jobs.list().data == []
