"""Fine-tuning jobs through the real openai SDK, on both backends."""

from __future__ import annotations

import time

import openai
import pytest
from sqlalchemy import create_engine, insert

from service.db.tables import Checkpoint
from tests.openai_schemas import CHECKED
from tests.support import chat_dataset, jsonl


@pytest.fixture
def training_file(client):
    return client.files.create(file=("train.jsonl", chat_dataset(12)), purpose="fine-tune")


def wait_status(client, job_id: str, status: str, timeout: float = 15) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status == status:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {job.status}, expected {status}")


def test_create_then_validated_into_queue(client, training_file):
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training_file.id,
        suffix="my-model",
        seed=42,
        metadata={"team": "search"},
        integrations=[{"type": "wandb", "wandb": {"project": "p"}}],
    )
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert job.status == "validating_files"
    assert (job.model, job.training_file, job.validation_file, job.seed) == ("hone-tiny", training_file.id, None, 42)
    assert job.metadata == {"team": "search"} and job.integrations[0].wandb.project == "p"
    assert job.method.type == "supervised"
    assert job.hyperparameters.n_epochs == "auto" and job.fine_tuned_model is None and job.error is None
    assert job.model_extra["user_provided_suffix"] == "my-model"

    queued = wait_status(client, job.id, "queued")
    assert queued.finished_at is None and queued.trained_tokens is None and queued.result_files == []
    # Nothing trains jobs yet (the trainer lands later); the job must stay queued.
    time.sleep(1.0)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"

    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert [e.message for e in events] == [
        "Files validated, moving job to queued state",
        f"Validating training file: {training_file.id}",
        f"Created fine-tuning job: {job.id}",
    ]
    assert all(e.level == "info" and e.type == "message" for e in events)


def test_seed_is_generated_and_validation_file_accepted(client, training_file):
    valid = client.files.create(file=("valid.jsonl", chat_dataset(3)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="acme/tiny-chat", training_file=training_file.id, validation_file=valid.id
    )
    assert isinstance(job.seed, int) and 0 <= job.seed <= 2147483647
    assert job.validation_file == valid.id and job.model == "acme/tiny-chat"
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert f"Validating training file: {training_file.id} and validation file: {valid.id}" in events


def test_methods_and_hyperparameters(client, training_file):
    job = client.fine_tuning.jobs.create(
        model="hone-tiny", training_file=training_file.id, hyperparameters={"n_epochs": 3, "batch_size": 4}
    )
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.n_epochs == 3
    assert (
        job.hyperparameters.n_epochs,
        job.hyperparameters.batch_size,
        job.hyperparameters.learning_rate_multiplier,
    ) == (3, 4, "auto")

    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training_file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 0.5}}},
    )
    assert job.hyperparameters.learning_rate_multiplier == 0.5

    pref = jsonl(
        [
            {
                "input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                "preferred_output": [{"role": "assistant", "content": "good"}],
                "non_preferred_output": [{"role": "assistant", "content": "bad"}],
            }
            for i in range(10)
        ]
    )
    pref_file = client.files.create(file=("pref.jsonl", pref), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="hone-tiny", training_file=pref_file.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    assert job.hyperparameters.n_epochs == "auto"


@pytest.mark.parametrize(
    "resources,method,param",
    [
        ({"gpus": 2, "nodes": 1}, None, "resources"),
        ({"gpus": 0}, None, "resources.gpus"),
        ({"gpu": 2}, None, "resources.gpu"),
        ({}, None, "resources"),
        ({"nodes": 2, "gpus_per_node": 2}, None, "resources.nodes"),  # the local executor is one machine
        ({"gpus": 2, "nodes": 2}, {"type": "dpo"}, "resources"),
        (
            {"gpus_per_node": 2},
            {
                "type": "reinforcement",
                "reinforcement": {
                    "grader": {
                        "type": "string_check",
                        "name": "g",
                        "input": "{{ sample.output_text }}",
                        "reference": "{{ item.label }}",
                        "operation": "eq",
                    }
                },
            },
            "resources.gpus_per_node",
        ),
    ],
)
def test_resources_that_cannot_be_honoured_are_refused(client, training_file, resources, method, param):
    args = {"model": "hone-tiny", "training_file": training_file.id, "extra_body": {"resources": resources}}
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(**args, **({"method": method} if method else {}))
    assert err.value.param == param, err.value.message


def test_resources_are_kept_and_shown(client, training_file):
    two = client.fine_tuning.jobs.create(
        model="hone-tiny", training_file=training_file.id, extra_body={"resources": {"gpus": 2}}
    )
    assert two.model_extra["resources"] == {"nodes": 1, "gpus_per_node": 2}
    assert client.fine_tuning.jobs.retrieve(two.id).model_extra["resources"] == {"nodes": 1, "gpus_per_node": 2}
    one = client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id)
    assert one.model_extra["resources"] == {"nodes": 1, "gpus_per_node": 1}


@pytest.mark.parametrize(
    "kwargs, param, code",
    [
        ({"model": "gpt-9"}, "model", "model_not_available"),
        ({"training_file": "file-doesnotexist"}, "training_file", "invalid_training_file"),
        ({"validation_file": "file-doesnotexist"}, "validation_file", "invalid_validation_file"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "invalid_value"),
        ({"hyperparameters": {"n_epochs": 2.5}}, "hyperparameters.n_epochs", "invalid_value"),
        ({"hyperparameters": {"batch_size": 257}}, "hyperparameters.batch_size", "invalid_value"),
        (
            {"hyperparameters": {"learning_rate_multiplier": 0}},
            "hyperparameters.learning_rate_multiplier",
            "invalid_value",
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}},
            "method.dpo.hyperparameters.beta",
            "invalid_value",
        ),
        ({"method": {"type": "unsupervised"}}, "method.type", "invalid_value"),
        (
            {"method": {"type": "reinforcement", "reinforcement": {}}},
            "method.reinforcement.grader",
            "missing_required_parameter",
        ),
        ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo", "invalid_value"),
        ({"method": {"type": "dpo"}}, "training_file", "invalid_training_file"),
        (
            {
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
                "hyperparameters": {"n_epochs": 3},
            },
            "hyperparameters",
            "invalid_value",
        ),
        ({"suffix": "has:colon"}, "suffix", "invalid_value"),
        ({"suffix": "x" * 65}, "suffix", "invalid_value"),
        ({"seed": -1}, "seed", "invalid_value"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k", "invalid_value"),
        (
            {"integrations": [{"type": "wandb", "wandb": {}}]},
            "integrations[0].wandb.project",
            "missing_required_parameter",
        ),
    ],
)
def test_bad_create_requests(client, training_file, kwargs, param, code):
    args = {"model": "hone-tiny", "training_file": training_file.id, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(**args)
    assert (err.value.param, err.value.code) == (param, code), err.value.message
    assert err.value.type == "invalid_request_error"


def test_missing_fields_and_bad_json_are_400_not_422(project):
    with project.http() as http:
        resp = http.post("/v1/fine_tuning/jobs", json={"model": "hone-tiny"})
        assert resp.status_code == 400
        assert resp.json()["error"] | {"message": None} == {
            "message": None,
            "type": "invalid_request_error",
            "param": "training_file",
            "code": "missing_required_parameter",
        }
        resp = http.post("/v1/fine_tuning/jobs", content=b"{not json", headers={"content-type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"


def test_too_few_examples(client):
    few = client.files.create(file=("few.jsonl", chat_dataset(3)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=few.id)
    assert (err.value.param, err.value.code) == ("training_file", "invalid_n_examples")
    assert "has 3 example(s), but must have at least 10 examples" in err.value.message


def test_list_pagination_and_metadata_filter(client, training_file):
    ids = []
    for i in range(5):
        meta = {"batch": "a" if i % 2 == 0 else "b"}
        ids.append(client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id, metadata=meta).id)
    plain = client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id).id

    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [plain, ids[4]] and page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == [plain] + ids[::-1]
    assert [j.id for j in client.fine_tuning.jobs.list(after=ids[3], limit=10)] == ids[2::-1]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"batch": "a"})] == [ids[4], ids[2], ids[0]]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"batch": "a", "x": "y"})] == []
    last = client.fine_tuning.jobs.list(after=ids[0])
    assert last.data == [] and last.has_more is False
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.list(limit=0)
    assert err.value.param == "limit"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.list(after="ftjob-nope")
    assert err.value.param == "after"


def test_list_filters_by_status_and_model_in_the_query_and_refuses_what_it_does_not_read(client, training_file):
    """Hone's `status` (repeatable) and `model` filters narrow the query itself: a page holds `limit` matching jobs
    and `has_more` speaks of matching ones. A query parameter no route reads is a 400 naming it, not an unfiltered
    answer the caller would take for the filtered one."""
    paused, cancelled, queued = (
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id).id for _ in range(3)
    )
    for job_id in (paused, cancelled, queued):
        wait_status(client, job_id, "queued")
    client.fine_tuning.jobs.pause(paused)
    client.fine_tuning.jobs.cancel(cancelled)

    def listed(limit: int = 100, **query) -> list[str]:
        return [j.id for j in client.fine_tuning.jobs.list(limit=limit, extra_query=query).data]

    assert listed(status="paused")[:1] == [paused] and paused not in listed(status="queued")
    both = listed(status=["paused", "cancelled"])
    assert both[:2] == [cancelled, paused] and queued not in both
    assert all(client.fine_tuning.jobs.retrieve(i).status in ("paused", "cancelled") for i in both)
    page = client.fine_tuning.jobs.list(limit=1, extra_query={"status": "cancelled"})
    assert [j.id for j in page.data] == [cancelled] and page.has_more is (len(listed(status="cancelled")) > 1)
    assert listed(model="hone-tiny", status="queued")[:1] == [queued]
    assert listed(model="ft:hone-tiny:nobody") == []
    with pytest.raises(openai.BadRequestError) as err:
        listed(status="done")
    assert (err.value.param, err.value.code) == ("status", "invalid_value") and "'done'" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        listed(state="paused")
    assert (err.value.param, err.value.code) == ("state", "unknown_parameter")
    assert "takes: after, limit, model, status, metadata[key], status[])" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.files.list(extra_query={"sort": "size"})
    assert (err.value.param, err.value.code) == ("sort", "unknown_parameter")
    before = listed()
    with pytest.raises(openai.BadRequestError) as err:  # a sync route (run in a worker thread): refused there too
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id, extra_query={"dry_run": 1})
    assert (err.value.param, err.value.code) == ("dry_run", "unknown_parameter")
    assert listed() == before  # and nothing was created


def test_cancel_pause_resume(client, training_file):
    job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id)
    wait_status(client, job.id, "queued")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.resume(job.id)
    assert err.value.code == "invalid_job_status" and "'queued'" in err.value.message

    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.pause(job.id)
    assert "its status is 'paused'" in err.value.message
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    for action in (client.fine_tuning.jobs.cancel, client.fine_tuning.jobs.pause, client.fine_tuning.jobs.resume):
        with pytest.raises(openai.BadRequestError) as err:
            action(job.id)
        assert err.value.code == "invalid_job_status" and "'cancelled'" in err.value.message

    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=2)]
    assert len(messages) == 6 and messages[0] == "Fine-tuning job cancelled"
    assert messages[1:3] == ["Fine-tuning job resumed, moving job to queued state", "Fine-tuning job paused"]
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more


def test_unknown_job_is_404(client):
    for call in (
        client.fine_tuning.jobs.retrieve,
        client.fine_tuning.jobs.cancel,
        client.fine_tuning.jobs.list_events,
        client.fine_tuning.jobs.checkpoints.list,
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call("ftjob-missing")
        assert err.value.code == "not_found"


def test_checkpoints_list(client, training_file, server):
    job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id, suffix="ck")
    empty = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert empty.data == [] and empty.has_more is False
    # The trainer that records checkpoints lands later; rows are written straight to the database here.
    engine = create_engine(server.database_url)
    with engine.begin() as conn:
        for step in (10, 20, 30):
            conn.execute(
                insert(Checkpoint).values(
                    id=f"ftckpt_{job.id[-8:]}{step}",
                    job_id=job.id,
                    created_at=1,
                    step_number=step,
                    fine_tuned_model_checkpoint=f"ft:hone-tiny:p:ck:{job.id}:ckpt-step-{step}",
                    metrics={"step": step, "train_loss": 1.0 / step},
                    storage_prefix=f"jobs/{job.id}/checkpoints/step-{step}/",
                )
            )
    engine.dispose()
    page = client.fine_tuning.jobs.checkpoints.list(job.id, limit=2)
    assert [c.step_number for c in page.data] == [30, 20] and page.has_more
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=2)] == [30, 20, 10]
    assert page.data[0].fine_tuned_model_checkpoint.endswith(":ckpt-step-30")
    assert page.data[0].metrics.train_loss == pytest.approx(1 / 30)


def test_cancel_right_after_create_races_validation_safely(client, training_file):
    # The validation loop moves each job to queued while the cancel runs; the row lock orders them.
    for _ in range(15):
        job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id)
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
        assert messages[0] == "Fine-tuning job cancelled"


def test_idempotency_key_replays_the_first_job(client, training_file, other_project):
    key = {"Idempotency-Key": "retry-7f3a"}
    first = client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id, extra_headers=key)
    again = client.fine_tuning.jobs.create(model="hone-tiny", training_file=training_file.id, extra_headers=key)
    assert again.id == first.id
    assert [j.id for j in client.fine_tuning.jobs.list()] == [first.id]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="hone-tiny", training_file=training_file.id, suffix="other", extra_headers=key
        )
    assert (err.value.param, err.value.code) == ("Idempotency-Key", "idempotency_key_reused")
    # Keys are per project.
    other = other_project.openai()
    other_file = other.files.create(file=("t.jsonl", chat_dataset(10)), purpose="fine-tune")
    assert (
        other.fine_tuning.jobs.create(model="hone-tiny", training_file=other_file.id, extra_headers=key).id != first.id
    )


def test_every_response_was_schema_checked():
    # The SDK client in these tests validates each body it receives; make sure that really happened.
    for name in (
        "FineTuningJob",
        "ListPaginatedFineTuningJobsResponse",
        "ListFineTuningJobEventsResponse",
        "ListFineTuningJobCheckpointsResponse",
        "OpenAIFile",
        "ErrorResponse",
    ):
        assert name in CHECKED
