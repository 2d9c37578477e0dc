"""The Vertex AI–compatible API, driven by Google's own SDK: google-genai with vertexai=True, an explicit project
and location, a bearer credential (the Hone API key) and base_url pointing at the server.

One job is tuned for the whole module (PostgreSQL, moto's S3, a real trainer and engine): it is started by the
fixture, so the cheap tests run while it trains, and their jobs queue behind it and are cancelled there. Its tuned
model (which answers every ticket with the label) is then the teacher of a distillationSpec job."""

from __future__ import annotations

import base64
import json
import random
import time

import google.oauth2.credentials
import httpx
import pytest
from google import genai
from google.genai import errors, types

from examples.support_tickets import SYSTEM, ticket
from tests.support import HoneServer, PostgresDatabase, jsonl, wait_for

GCS_BUCKET, S3_BUCKET = "tuning-data", "vertex-datasets"
LOCATION = "us-central1"
pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")  # tunings.* say so
LABEL = "Billing"  # every training answer: the tuned endpoint must answer it, which the base model never does


def _ticket_row(rng: random.Random) -> dict:
    return {
        "systemInstruction": {"role": "system", "parts": [{"text": SYSTEM}]},
        "contents": [
            {"role": "user", "parts": [{"text": ticket(rng, LABEL)}]},
            {"role": "model", "parts": [{"text": LABEL}]},
        ],
    }


def _ticket_prompt(rng: random.Random) -> dict:
    """A Gemini prompt line (a distillationSpec's promptDatasetUri): the ticket, with no answer."""
    row = _ticket_row(rng)
    return {**row, "contents": row["contents"][:1]}


def genai_client(server: HoneServer, api_key: str, project: str) -> genai.Client:
    """The client exactly as the README shows it."""
    return genai.Client(
        vertexai=True,
        project=project,
        location=LOCATION,
        credentials=google.oauth2.credentials.Credentials(token=api_key),
        http_options=types.HttpOptions(base_url=server.base_url, api_version="v1"),
    )


@pytest.fixture(scope="module")
def vertex(tmp_path_factory, moto):
    rng = random.Random(11)
    s3 = moto.client()
    s3.create_bucket(Bucket=S3_BUCKET)
    objects = {
        "gcs/tickets/train.jsonl": jsonl([_ticket_row(rng) for _ in range(24)]),  # as gs://tuning-data/tickets/...
        "direct/valid.jsonl": jsonl([{"input_text": ticket(rng, LABEL), "output_text": LABEL} for _ in range(4)]),
        "gcs/bad.jsonl": jsonl(
            [
                _ticket_row(rng),
                {
                    "contents": [
                        {"role": "user", "parts": [{"text": "hi"}]},
                        {"role": "assistant", "parts": [{"text": LABEL}]},
                    ]
                },
                {"systemInstruction": {"parts": [{"text": SYSTEM}]}},
            ]
        ),
        "direct/legacy-bad.jsonl": jsonl([{"input_text": "hello", "output_text": LABEL}, {"input_text": "no answer"}]),
        "gcs/tickets/prompts.jsonl": jsonl([_ticket_prompt(rng) for _ in range(12)]),
        "direct/valid-prompts.jsonl": jsonl([_ticket_prompt(rng) for _ in range(2)]),
    }
    for key, body in objects.items():
        s3.put_object(Bucket=S3_BUCKET, Key=key, Body=body)
    postgres = PostgresDatabase()
    env = {
        **moto.env(),
        "HONE_DATABASE_URL": postgres.url,
        "HONE_STORAGE_URL": "s3://hone-vertex/blobs",
        "HONE_LOCAL_SLOTS": "1",
        "HONE_AUTO_DEPLOY": "true",
        "HONE_GCS_BUCKET_MAP": json.dumps({GCS_BUCKET: f"{S3_BUCKET}/gcs"}),
    }
    server = HoneServer(tmp_path_factory.mktemp("vertex"), env)
    try:
        project, other = server.new_project("vertex suite"), server.new_project("other team")
        # Dataset URIs read only what an admin granted (tests/test_dataset_grants.py): the suite's project may read
        # the gs:// bucket (mapped to s3://vertex-datasets/gcs/) and the direct s3:// prefix; the other team nothing.
        with server.admin() as admin:
            for uri in (f"gs://{GCS_BUCKET}/", f"s3://{S3_BUCKET}/direct/"):
                granted = admin.post(
                    f"/v1/organization/projects/{project.project_id}/dataset_grants", json={"uri": uri}
                )
                assert granted.status_code == 200, granted.text
        client = genai_client(server, project.api_key, project.project_id)
        job = client.tunings.tune(
            base_model="hone-tiny",
            training_dataset=types.TuningDataset(gcs_uri=f"gs://{GCS_BUCKET}/tickets/train.jsonl"),
            config=types.CreateTuningJobConfig(
                tuned_model_display_name="ticket labeller",
                epoch_count=2,
                batch_size=4,
                learning_rate_multiplier=2.0,
                adapter_size="ADAPTER_SIZE_EIGHT",
                labels={"suite": "vertex"},
                validation_dataset=types.TuningValidationDataset(gcs_uri=f"s3://{S3_BUCKET}/direct/valid.jsonl"),
            ),
        )
        yield {"server": server, "project": project, "other": other, "client": client, "job": job, "s3": s3}
    finally:
        server.stop()
        postgres.drop()


def _http(vertex, key: str | None = None, **headers) -> httpx.Client:
    auth = {"Authorization": f"Bearer {key or vertex['project'].api_key}"} if key is not False else {}
    return httpx.Client(base_url=vertex["server"].base_url, headers={**auth, **headers}, timeout=30)


def _parent(vertex, version: str = "v1", project: str | None = None) -> str:
    return f"/{version}/projects/{project or vertex['project'].project_id}/locations/{LOCATION}"


def _keys(value) -> set[str]:
    """Every key in a JSON value, outside `labels` (whose keys are the user's)."""
    if isinstance(value, dict):
        return set(value) | {k for key, v in value.items() if key != "labels" for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_fixture_job_was_created_in_vertex_shape(vertex):
    job = vertex["job"]
    assert job.name.startswith(f"projects/{vertex['project'].project_id}/locations/{LOCATION}/tuningJobs/ftjob-")
    assert job.state in (types.JobState.JOB_STATE_PENDING, types.JobState.JOB_STATE_QUEUED)
    assert job.base_model == "hone-tiny" and job.tuned_model_display_name == "ticket labeller"
    spec = job.supervised_tuning_spec
    assert spec.training_dataset_uri == f"gs://{GCS_BUCKET}/tickets/train.jsonl"
    assert spec.validation_dataset_uri == f"s3://{S3_BUCKET}/direct/valid.jsonl"
    assert (
        spec.hyper_parameters.epoch_count,
        spec.hyper_parameters.learning_rate_multiplier,
        spec.hyper_parameters.adapter_size,
    ) == (2, 2.0, types.AdapterSize.ADAPTER_SIZE_EIGHT)
    # The same job through the OpenAI API: the datasets were imported as files, the adapter size is the LoRA rank.
    job_id = job.name.rsplit("/", 1)[-1]
    openai_job = vertex["project"].openai().fine_tuning.jobs.retrieve(job_id)
    assert openai_job.method.supervised.hyperparameters.model_extra["lora_rank"] == 8
    assert openai_job.metadata == {"suite": "vertex"} and openai_job.user_provided_suffix == "ticket-labeller"
    with vertex["project"].http() as http:
        imported = http.get(f"/v1/files/{openai_job.training_file}").json()
    assert imported["filename"] == "train.jsonl" and imported["dataset"] == {"format": "vertex_gemini", "examples": 24}


def test_request_variants_are_accepted(vertex):
    """snake_case keys, enum numbers and int64 strings (vertexai's REST encoding) on v1beta1, x-goog-api-key."""
    openai_client = vertex["project"].openai()
    job_id = vertex["job"].name.rsplit("/", 1)[-1]
    training_file = openai_client.fine_tuning.jobs.retrieve(job_id).training_file  # the gs:// dataset, imported
    preference = openai_client.files.create(
        purpose="fine-tune",
        file=(
            "prefs.jsonl",
            jsonl(
                [
                    {
                        "input": {"messages": [{"role": "user", "content": f"Ticket {i}"}]},
                        "preferred_output": [{"role": "assistant", "content": LABEL}],
                        "non_preferred_output": [{"role": "assistant", "content": "Sales"}],
                    }
                    for i in range(12)
                ]
            ),
        ),
    )
    variants = [
        (
            {
                "base_model": "hone-tiny",
                "tuned_model_display_name": "snake",
                "supervised_tuning_spec": {
                    "training_dataset_uri": training_file,
                    "hyper_parameters": {"epoch_count": "2", "adapter_size": 6, "learning_rate_multiplier": "0.5"},
                },
            },
            "supervisedTuningSpec",
            {"epochCount": "2", "adapterSize": "ADAPTER_SIZE_TWO", "learningRateMultiplier": 0.5},
            2,
        ),
        (
            {
                "baseModel": "hone-tiny",
                "supervisedTuningSpec": {
                    "trainingDatasetUri": training_file,
                    "hyperParameters": {"epochCount": 3, "adapterSize": 5},
                },
            },
            "supervisedTuningSpec",
            {"epochCount": "3", "adapterSize": "ADAPTER_SIZE_THIRTY_TWO"},
            32,
        ),
        (
            {
                "baseModel": "hone-tiny",
                "preferenceOptimizationSpec": {
                    "trainingDatasetUri": preference.id,
                    "hyperParameters": {"epochCount": "1", "beta": "0.2", "adapterSize": "ADAPTER_SIZE_FOUR"},
                },
            },
            "preferenceOptimizationSpec",
            {"epochCount": "1", "beta": 0.2, "adapterSize": "ADAPTER_SIZE_FOUR"},
            4,
        ),
    ]
    api_key = vertex["project"].api_key
    with _http(vertex, key=False, **{"x-goog-api-key": api_key}) as http:
        for body, spec_field, hyper_parameters, rank in variants:
            reply = http.post(
                _parent(vertex, "v1beta1") + "/tuningJobs", params={"$alt": "json;enum-encoding=int"}, json=body
            )
            assert reply.status_code == 200, reply.text
            job = reply.json()
            assert all("_" not in key for key in _keys(job)), _keys(job)  # camelCase out, whatever came in
            assert job[spec_field]["hyperParameters"] == hyper_parameters
            assert job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_QUEUED") and "experiment" not in job
            job_id = job["name"].rsplit("/", 1)[-1]
            method = openai_client.fine_tuning.jobs.retrieve(job_id).method
            section = method.dpo if spec_field == "preferenceOptimizationSpec" else method.supervised
            assert method.type == ("dpo" if spec_field == "preferenceOptimizationSpec" else "supervised")
            assert section.hyperparameters.model_extra["lora_rank"] == rank
            cancelled = http.post(f"/v1beta1/{job['name']}:cancel", json={})
            assert (cancelled.status_code, cancelled.json()) == (200, {})
            again = http.get(f"/v1beta1/{job['name']}").json()
            assert again["state"] == "JOB_STATE_CANCELLED" and again["error"]["code"] == 1
            refused = http.post(f"/v1beta1/{job['name']}:cancel")
            assert refused.status_code == 400 and refused.json()["error"]["status"] == "FAILED_PRECONDITION"


def _google_error(reply: httpx.Response, status: int, google_status: str) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"code", "message", "status", "details"}
    assert error["code"] == status and error["status"] == google_status
    return error


def _violations(error: dict) -> list[dict]:
    [bad_request] = [d for d in error["details"] if d["@type"] == "type.googleapis.com/google.rpc.BadRequest"]
    return bad_request["fieldViolations"]


def test_bad_datasets_and_requests_get_google_shaped_400s(vertex):
    client, field = vertex["client"], "supervisedTuningSpec.trainingDatasetUri"
    with vertex["project"].http() as http:
        files_before = http.get("/v1/files").json()["data"]
    with pytest.raises(errors.ClientError) as caught:
        client.tunings.tune(
            base_model="hone-tiny", training_dataset=types.TuningDataset(gcs_uri=f"gs://{GCS_BUCKET}/bad.jsonl")
        )
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert "line 2, field contents[1].role" in caught.value.message
    violations = _violations(caught.value.details["error"])
    assert [v["field"] for v in violations] == [field] * 3
    assert [v["description"] for v in violations] == [
        "line 2, field contents[1].role: role must be 'user' or 'model', got 'assistant'",
        "line 2, field contents: example has no 'model' turn to train on",
        "line 3, field contents: contents must be a non-empty array",
    ]

    base = {"baseModel": "hone-tiny"}
    with _http(vertex) as http:
        legacy = _google_error(
            http.post(
                _parent(vertex) + "/tuningJobs",
                json={
                    **base,
                    "supervisedTuningSpec": {"trainingDatasetUri": f"s3://{S3_BUCKET}/direct/legacy-bad.jsonl"},
                },
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert _violations(legacy) == [
            {"field": field, "description": "line 2, field output_text: missing required key 'output_text'"}
        ]
        [info] = [d for d in legacy["details"] if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
        assert info["reason"] == "INVALID_DATASET" and info["metadata"]["line"] == "2"
        missing = _google_error(
            http.post(
                _parent(vertex) + "/tuningJobs",
                json={**base, "supervisedTuningSpec": {"trainingDatasetUri": f"gs://{GCS_BUCKET}/nowhere.jsonl"}},
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert "does not exist" in missing["message"] and _violations(missing)[0]["field"] == field
        not_jsonl = _google_error(
            http.post(
                _parent(vertex) + "/tuningJobs",
                json={**base, "supervisedTuningSpec": {"trainingDatasetUri": "gs://b/data.csv"}},
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert "JSONL" in not_jsonl["message"]
        own_storage = _google_error(
            http.post(
                _parent(vertex) + "/tuningJobs",
                json={**base, "supervisedTuningSpec": {"trainingDatasetUri": "s3://hone-vertex/blobs/files/x.jsonl"}},
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert "file's id" in own_storage["message"]
        bad_size = _google_error(
            http.post(
                _parent(vertex) + "/tuningJobs",
                json={
                    **base,
                    "supervisedTuningSpec": {
                        "trainingDatasetUri": f"gs://{GCS_BUCKET}/tickets/train.jsonl",
                        "hyperParameters": {"adapter_size": "ADAPTER_SIZE_THREE"},
                    },
                },
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert _violations(bad_size)[0]["field"] == "supervisedTuningSpec.hyperParameters.adapterSize"
        # A good dataset with a job Hone refuses: the file imported for it is removed again.
        no_model = _google_error(
            http.post(
                _parent(vertex) + "/tuningJobs",
                json={
                    "baseModel": "gemini-9-ultra",
                    "supervisedTuningSpec": {"trainingDatasetUri": f"gs://{GCS_BUCKET}/tickets/train.jsonl"},
                },
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert _violations(no_model)[0]["field"] == "baseModel"
        # preTunedModel continues a tuned model (tests/tuned_tickets/test_continuation.py); with a baseModel too it is ambiguous
        both = _google_error(
            http.post(
                _parent(vertex) + "/tuningJobs",
                json={
                    **base,
                    "preTunedModel": {"tunedModelName": "projects/p/locations/l/models/1@1"},
                    "supervisedTuningSpec": {"trainingDatasetUri": "gs://b/x.jsonl"},
                },
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert _violations(both)[0]["field"].startswith(("baseModel", "preTunedModel"))
        for body, field in (
            ({"reinforcementTuningSpec": {"trainingDatasetUri": "gs://b/x.jsonl"}}, "reinforcementTuningSpec"),
            (
                {
                    "supervisedTuningSpec": {
                        "trainingDatasetUri": "gs://b/x.jsonl",
                        "hyperParameters": {"learningRate": 0.001},
                    }
                },
                "supervisedTuningSpec.hyperParameters.learningRate",
            ),
        ):
            unsupported = _google_error(
                http.post(_parent(vertex) + "/tuningJobs", json={**base, **body}), 400, "INVALID_ARGUMENT"
            )
            assert _violations(unsupported)[0]["field"] == field and "not supported" in unsupported["message"]
    with vertex["project"].http() as http:
        assert http.get("/v1/files").json()["data"] == files_before  # nothing half-written
        # a query parameter the route does not read (Google's pageSize is; page_size is not)
        unread = _google_error(http.get(_parent(vertex) + "/tuningJobs?page_size=1"), 400, "INVALID_ARGUMENT")
        assert "'page_size'" in unread["message"] and "pageSize" in unread["message"]
        assert _violations(unread)[0]["field"] == "page_size"
        proto = _google_error(http.get(_parent(vertex) + "/tuningJobs?$alt=proto"), 400, "INVALID_ARGUMENT")
        assert _violations(proto)[0]["field"] == "$alt" and "answer JSON" in proto["message"]


def test_another_projects_job_is_404(vertex):
    job_name, other = vertex["job"].name, vertex["other"]
    job_id = job_name.rsplit("/", 1)[-1]
    with _http(vertex, key=other.api_key) as http:
        own_path = _google_error(
            http.get(f"{_parent(vertex, project=other.project_id)}/tuningJobs/{job_id}"), 404, "NOT_FOUND"
        )
        assert job_id in own_path["message"]
        _google_error(http.get(f"/v1/{job_name}"), 404, "NOT_FOUND")  # the owner's project in the path
        _google_error(http.post(f"/v1/{job_name}:cancel"), 404, "NOT_FOUND")
        assert http.get(f"{_parent(vertex, project=other.project_id)}/tuningJobs").json() == {}
    with _http(vertex, key=False) as http:
        _google_error(http.get(f"/v1/{job_name}"), 401, "UNAUTHENTICATED")
    with _http(vertex) as http:  # the project's slug is an alias of its id
        by_slug = http.get(f"{_parent(vertex, project='vertex-suite')}/tuningJobs/{job_id}")
        assert by_slug.status_code == 200 and by_slug.json()["name"] == job_name
        _google_error(http.get(f"{_parent(vertex, project='other-team')}/tuningJobs/{job_id}"), 404, "NOT_FOUND")


def test_sdk_lists_with_paging_and_filters_and_cancels(vertex):
    client = vertex["client"]
    second = client.tunings.tune(
        base_model="hone-tiny",
        training_dataset=types.TuningDataset(gcs_uri=f"gs://{GCS_BUCKET}/tickets/train.jsonl"),
        config=types.CreateTuningJobConfig(tuned_model_display_name="to cancel", labels={"suite": "cancel"}),
    )
    client.tunings.cancel(name=second.name)
    cancelled = client.tunings.get(name=second.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED and cancelled.has_ended
    assert cancelled.error.code == 1 and cancelled.end_time is not None

    pager = client.tunings.list(config={"page_size": 2})
    assert len(pager.page) == 2 and pager.page_size == 2
    listed = [job.name for job in pager]
    assert len(listed) == len(set(listed)) >= 5  # fixture's, three variants, this one: at least three pages
    assert listed.index(second.name) < listed.index(vertex["job"].name)  # newest first

    def names(filter_text: str) -> list[str]:
        return [job.name for job in client.tunings.list(config={"page_size": 2, "filter": filter_text})]

    assert second.name in names('state="JOB_STATE_CANCELLED"')
    assert vertex["job"].name not in names('state="JOB_STATE_CANCELLED"')
    assert names("labels.suite=vertex") == [vertex["job"].name]
    assert names('labels.suite="cancel" AND base_model="hone-tiny"') == [second.name]
    assert names('create_time<"2001-01-01T00:00:00Z"') == []
    created = vertex["job"].create_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert vertex["job"].name in names(f'create_time>="{created}" AND base_model=hone-tiny')
    with pytest.raises(errors.ClientError) as caught:
        names("colour=red")
    assert caught.value.status == "INVALID_ARGUMENT" and "colour" in caught.value.message


def _ended(client: genai.Client, job: types.TuningJob, timeout: float = 300) -> types.TuningJob:
    deadline = time.monotonic() + timeout
    while not job.has_ended:
        assert time.monotonic() < deadline, f"still {job.state}"
        time.sleep(0.5)
        job = client.tunings.get(name=job.name)
    return job


def test_sdk_tunes_and_the_tuned_endpoint_answers_with_the_trained_label(vertex):
    client = vertex["client"]
    job = _ended(client, vertex["job"])
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED, job.error
    assert job.start_time <= job.end_time and job.tuned_model.model.endswith("@1")
    endpoint = job.tuned_model.endpoint
    assert endpoint.startswith(f"projects/{vertex['project'].project_id}/locations/{LOCATION}/endpoints/ep-")
    stats = job.tuning_data_stats.supervised_tuning_data_stats
    assert (stats.tuning_dataset_example_count, stats.tuning_step_count) == (24, 12)  # 2 epochs of 6 batches
    assert stats.total_billable_token_count > 0
    assert [(c.epoch, c.step) for c in job.tuned_model.checkpoints] == [(1, 6), (2, 12)]

    question = ticket(random.Random(99), LABEL)
    config = types.GenerateContentConfig(system_instruction=SYSTEM, temperature=0, max_output_tokens=8)
    reply = client.models.generate_content(model=endpoint, contents=question, config=config)
    assert reply.text.strip() == LABEL
    assert reply.candidates[0].finish_reason == types.FinishReason.STOP
    usage = reply.usage_metadata
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count > 0
    chunks = list(client.models.generate_content_stream(model=endpoint, contents=question, config=config))
    assert "".join(chunk.text or "" for chunk in chunks).strip() == LABEL
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count == usage.candidates_token_count
    counted = client.models.count_tokens(
        model=endpoint, contents=question, config=types.CountTokensConfig(system_instruction=SYSTEM)
    )
    assert counted.total_tokens == usage.prompt_token_count

    cut = client.models.generate_content(
        model=endpoint,
        contents=question,
        config=types.GenerateContentConfig(
            system_instruction=SYSTEM, temperature=0, max_output_tokens=8, stop_sequences=["ll"]
        ),
    )
    assert cut.text == LABEL[: LABEL.index("ll")]
    short = client.models.generate_content(
        model=endpoint,
        contents=question,
        config=types.GenerateContentConfig(system_instruction=SYSTEM, temperature=0, max_output_tokens=1),
    )
    assert short.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS

    with _http(vertex) as http:
        described = http.get(f"/v1/{endpoint}").json()
        image = http.post(
            f"/v1/{endpoint}:generateContent",
            json={"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]},
        )
        array = http.post(
            f"/v1/{endpoint}:streamGenerateContent",
            json={
                "contents": [{"role": "user", "parts": [{"text": question}]}],
                "system_instruction": {"parts": [{"text": SYSTEM}]},
                "generation_config": {"temperature": 0},
            },
        )
    assert described["deployedModels"][0]["model"] == job.tuned_model.model
    assert _violations(_google_error(image, 400, "INVALID_ARGUMENT"))[0]["field"] == "contents[0].parts[0]"
    chunks = array.json()  # without alt=sse: one JSON array, as Vertex streams it
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks).strip() == LABEL
    with _http(vertex, key=vertex["other"].api_key) as http:
        foreign = http.post(
            f"/v1/projects/{vertex['other'].project_id}/locations/{LOCATION}/endpoints/"
            f"{endpoint.rsplit('/', 1)[-1]}:generateContent",
            json={"contents": [{"parts": [{"text": question}]}]},
        )
    _google_error(foreign, 404, "NOT_FOUND")


def test_structured_output_from_the_sdk_is_held_to_its_schema(vertex):
    """generationConfig responseMimeType application/json with a responseSchema (the SDK's conversion of a pydantic
    model) or a responseJsonSchema: the tuned endpoint's answer parses into the schema (service/vertex/
    response_schema.py turns it into the engine's response_format); a schema field Vertex does not define, or a
    schema without the JSON mime type, is a 400 naming the field."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Ticket(BaseModel):
        label: Literal["Billing", "Account", "Sales"]
        priority: int = Field(ge=1, le=3)

    client = vertex["client"]
    endpoint = _ended(client, vertex["job"]).tuned_model.endpoint
    question = ticket(random.Random(99), LABEL)
    for schema in ({"response_schema": Ticket}, {"response_json_schema": Ticket.model_json_schema()}):
        config = types.GenerateContentConfig(
            system_instruction=SYSTEM,
            temperature=0,
            max_output_tokens=48,
            response_mime_type="application/json",
            **schema,
        )
        reply = client.models.generate_content(model=endpoint, contents=question, config=config)
        assert reply.candidates[0].finish_reason == types.FinishReason.STOP, reply.text
        assert isinstance(Ticket.model_validate_json(reply.text), Ticket), reply.text
    # The JSON mime type alone is any JSON object: its keys are free text, which this model (trained to say one label)
    # need not ever close in 16 tokens, but what it says is JSON from the first token on.
    plain = types.GenerateContentConfig(temperature=0, max_output_tokens=16, response_mime_type="application/json")
    assert client.models.generate_content(model=endpoint, contents=question, config=plain).text.startswith("{")
    with _http(vertex) as http:
        for config, field in (
            (
                {"responseMimeType": "application/json", "responseSchema": {"type": "OBJECT", "oneOf": []}},
                "responseSchema.oneOf",
            ),
            ({"responseSchema": {"type": "STRING"}}, "responseMimeType"),
            ({"responseMimeType": "text/x.enum"}, "responseMimeType"),
        ):
            refused = http.post(
                f"/v1/{endpoint}:generateContent",
                json={"contents": [{"role": "user", "parts": [{"text": question}]}], "generationConfig": config},
            )
            assert (
                _violations(_google_error(refused, 400, "INVALID_ARGUMENT"))[0]["field"] == f"generationConfig.{field}"
            )


# --- distillationSpec: Hone's distillation (the teacher answers the prompts, the student trains on the answers) ---


def _hone_job(vertex, name: str) -> dict:
    with vertex["project"].http() as http:  # plain HTTP: OpenAI's SDK has no distillation method
        return http.get(f"/v1/fine_tuning/jobs/{name.rsplit('/', 1)[-1]}").json()


def test_sdk_distills_the_tuned_model_into_a_student(vertex):
    """google-genai's DISTILLATION method: the module's tuned model (it answers every ticket with the label) is the
    teacher, named as Hone names it (baseTeacherModel) or as Vertex does (tunedTeacherModelSource)."""
    client = vertex["client"]
    tuned = _ended(client, vertex["job"])
    assert tuned.state == types.JobState.JOB_STATE_SUCCEEDED, tuned.error
    teacher = _hone_job(vertex, tuned.name)["fine_tuned_model"]
    question = types.GenerateContentConfig(system_instruction=SYSTEM, temperature=0, max_output_tokens=8)
    wait_for(  # its endpoint answers: the student's trainer asks it through the gateway
        lambda: client.models.generate_content(model=tuned.tuned_model.endpoint, contents="x", config=question),
        timeout=120,
    )
    prompts = f"gs://{GCS_BUCKET}/tickets/prompts.jsonl"
    job = client.tunings.tune(
        base_model="hone-tiny",
        training_dataset=types.TuningDataset(gcs_uri=prompts),
        config=types.CreateTuningJobConfig(
            method="DISTILLATION",
            base_teacher_model=teacher,
            tuned_model_display_name="student",
            epoch_count=2,
            batch_size=4,
            learning_rate_multiplier=2.0,
            adapter_size="ADAPTER_SIZE_EIGHT",
            validation_dataset=types.TuningValidationDataset(gcs_uri=f"s3://{S3_BUCKET}/direct/valid-prompts.jsonl"),
        ),
    )
    spec = job.distillation_spec
    assert (spec.prompt_dataset_uri, spec.base_teacher_model, spec.tuned_teacher_model_source) == (
        prompts,
        teacher,
        None,
    )
    assert spec.validation_dataset_uri == f"s3://{S3_BUCKET}/direct/valid-prompts.jsonl"
    assert (spec.hyper_parameters.epoch_count, spec.hyper_parameters.adapter_size) == (
        2,
        types.AdapterSize.ADAPTER_SIZE_EIGHT,
    )
    hone = _hone_job(vertex, job.name)
    assert hone["method"]["type"] == "distillation" and hone["method"]["distillation"]["teacher"] == teacher
    hp = hone["method"]["distillation"]["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"], hp["lora_rank"]) == (2, 4, 2.0, 8)
    with vertex["project"].http() as http:
        imported = http.get(f"/v1/files/{hone['training_file']}").json()
    assert imported["dataset"] == {"format": "vertex_prompts", "examples": 12}

    # The same teacher by its Vertex name: it resolves to the same Hone model, and the view says it as given.
    by_name = client.tunings.tune(
        base_model="hone-tiny",
        training_dataset=types.TuningDataset(gcs_uri=prompts),
        config=types.CreateTuningJobConfig(method="DISTILLATION", tuned_teacher_model_source=tuned.tuned_model.model),
    )
    client.tunings.cancel(name=by_name.name)
    assert by_name.distillation_spec.tuned_teacher_model_source == tuned.tuned_model.model
    assert by_name.distillation_spec.base_teacher_model is None
    assert _hone_job(vertex, by_name.name)["method"]["distillation"]["teacher"] == teacher

    job = _ended(client, job, timeout=400)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED, job.error
    assert job.distillation_spec.prompt_dataset_uri == prompts and job.distillation_spec.base_teacher_model == teacher
    stats = job.tuning_data_stats.distillation_data_stats.training_dataset_stats
    assert (stats.tuning_dataset_example_count, stats.tuning_step_count) == (12, 6)  # 2 epochs of 3 batches
    assert job.tuned_model.model.endswith("@1") and job.supervised_tuning_spec is None
    sdk = vertex["project"].openai()
    results = {sdk.files.retrieve(f).filename: f for f in _hone_job(vertex, job.name)["result_files"]}
    answers = [
        json.loads(line)
        for line in base64.b64decode(sdk.files.content(results["teacher_answers.jsonl"]).text).splitlines()
    ]
    assert len(answers) == 12  # the Gemini prompts as chat: the system instruction, the ticket, the teacher's label
    assert [[m["role"] for m in a["messages"]] for a in answers] == [["system", "user", "assistant"]] * 12
    assert answers[0]["messages"][0]["content"] == SYSTEM
    assert [a["messages"][-1]["content"] for a in answers] == [LABEL] * 12


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        ({"hyperParameters": {"learningRate": 0.001}}, "hyperParameters.learningRate", "learningRateMultiplier"),
        ({"hyperParameters": {"sftLossWeightMultiplier": 0.5}}, "hyperParameters.sftLossWeightMultiplier", "SFT loss"),
        ({"exportLastCheckpointOnly": True}, "exportLastCheckpointOnly", "every checkpoint"),
        ({"studentModel": "hone-tiny"}, "studentModel", "baseModel"),
        ({"trainingDatasetUri": "gs://b/x.jsonl"}, "trainingDatasetUri", "promptDatasetUri"),
        ({"pipelineRootDirectory": "gs://b/pipeline"}, "pipelineRootDirectory", "no pipeline"),
        ({"evaluationConfig": {"metrics": []}}, "evaluationConfig", "prompts only"),
        ({"hyperParameters": {"generationConfig": {"topP": 0.9}}}, "hyperParameters.generationConfig.topP", "topP"),
        ({"baseTeacherModel": None}, "baseTeacherModel", "exactly one of"),
        ({"tunedTeacherModelSource": "projects/p/locations/l/models/m"}, "tunedTeacherModelSource", "exactly one"),
        ({"baseTeacherModel": "gemini-9-ultra"}, "baseTeacherModel", "does not exist"),
        ({"baseTeacherModel": "projects/p/locations/l/models/m@1"}, "baseTeacherModel", "tunedTeacherModelSource"),
        (
            {"baseTeacherModel": None, "tunedTeacherModelSource": "projects/{project}/locations/l/models/ftjob-none"},
            "tunedTeacherModelSource",
            "does not exist",
        ),
        (
            {"promptDatasetUri": f"gs://{GCS_BUCKET}/tickets/train.jsonl"},  # answers, not prompts
            "promptDatasetUri",
            "prompts for its teacher to answer",
        ),
        (
            {"validationDatasetUri": f"s3://{S3_BUCKET}/direct/valid.jsonl"},
            "validationDatasetUri",
            "prompts for its teacher to answer",
        ),
    ],
    ids=[
        "learningRate",
        "sftLossWeightMultiplier",
        "exportLastCheckpointOnly",
        "studentModel",
        "trainingDatasetUri",
        "pipelineRootDirectory",
        "evaluationConfig",
        "teacher-topP",
        "no-teacher",
        "two-teachers",
        "unknown-teacher",
        "tuned-teacher-as-base",
        "unknown-tuned-teacher",
        "examples-as-prompts",
        "examples-as-validation-prompts",
    ],
)
def test_what_a_distillation_spec_asks_that_hone_does_not_do_is_refused(vertex, spec, field, says):
    """Each refusal names the Vertex field; a dataset imported for a refused job is removed again."""
    project = vertex["project"].project_id
    body = {
        "baseModel": "hone-tiny",
        "distillationSpec": {
            "promptDatasetUri": f"gs://{GCS_BUCKET}/tickets/prompts.jsonl",
            "baseTeacherModel": "hone-tiny",
            **json.loads(json.dumps(spec).replace("{project}", project)),
        },
    }
    body["distillationSpec"] = {k: v for k, v in body["distillationSpec"].items() if v is not None}
    with _http(vertex) as http:
        files_before = http.get("/v1/files").json()["data"]
        error = _google_error(http.post(_parent(vertex) + "/tuningJobs", json=body), 400, "INVALID_ARGUMENT")
        assert _violations(error)[0]["field"] == f"distillationSpec.{field}"
        assert says in error["message"], error["message"]
        assert http.get("/v1/files").json()["data"] == files_before


def test_a_prompts_dataset_is_refused_for_supervised_tuning_and_an_openai_distillation_reads_as_vertex(vertex):
    with _http(vertex) as http:
        refused = _google_error(
            http.post(
                _parent(vertex) + "/tuningJobs",
                json={
                    "baseModel": "hone-tiny",
                    "supervisedTuningSpec": {"trainingDatasetUri": f"gs://{GCS_BUCKET}/tickets/prompts.jsonl"},
                },
            ),
            400,
            "INVALID_ARGUMENT",
        )
    assert _violations(refused)[0]["field"] == "supervisedTuningSpec.trainingDatasetUri"
    assert "Vertex/Gemini prompts" in refused["message"] and "'distillation' method" in refused["message"]
    # A distillation job made on the OpenAI route shows its teacher as Vertex's baseTeacherModel.
    openai = vertex["project"].openai()
    prompts = [{"messages": [{"role": "user", "content": f"Ticket {i}"}]} for i in range(10)]
    file_id = openai.files.create(file=("prompts.jsonl", jsonl(prompts)), purpose="fine-tune").id
    with vertex["project"].http() as http:
        created = http.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "hone-tiny",
                "training_file": file_id,
                "method": {"type": "distillation", "distillation": {"teacher": "hone-tiny"}},
            },
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
    client = vertex["client"]
    name = f"projects/{vertex['project'].project_id}/locations/{LOCATION}/tuningJobs/{job_id}"
    client.tunings.cancel(name=name)
    spec = client.tunings.get(name=name).distillation_spec
    assert (spec.prompt_dataset_uri, spec.base_teacher_model) == (file_id, "hone-tiny")
    # How the teacher answers: Vertex's generationConfig is the method's temperature, samples and answer length.
    with _http(vertex) as http:
        created = http.post(
            _parent(vertex) + "/tuningJobs",
            json={
                "baseModel": "hone-tiny",
                "distillationSpec": {
                    "promptDatasetUri": f"gs://{GCS_BUCKET}/tickets/prompts.jsonl",
                    "baseTeacherModel": "hone-tiny",
                    "hyperParameters": {
                        "generationConfig": {"temperature": 0.5, "candidateCount": 2, "maxOutputTokens": 8}
                    },
                },
            },
        )
        assert created.status_code == 200, created.text
    client.tunings.cancel(name=created.json()["name"])
    hp = _hone_job(vertex, created.json()["name"])["method"]["distillation"]["hyperparameters"]
    assert (hp["temperature"], hp["samples_per_prompt"], hp["max_completion_tokens"]) == (0.5, 2, 8)
    shown = client.tunings.get(name=created.json()["name"]).distillation_spec.hyper_parameters.generation_config
    assert (shown.temperature, shown.candidate_count, shown.max_output_tokens) == (0.5, 2, 8)
