"""Jobs really train: real server, real `python -m trainer` subprocesses, the real openai SDK.

Nothing is faked here: hone-tiny is built locally, trainers are killed with real signals, and the
control plane itself is killed and restarted on the same port and data."""

from __future__ import annotations

import base64
import csv
import io
import os
import signal
import time

import boto3
import pytest

from tests.support import (HoneServer, all_events, chat_line, jsonl, trainer_pids, wait_job)

BACKENDS = ["sqlite-fs", "postgres-s3"]


def numbers_dataset(n: int, width: int = 1) -> bytes:
    return jsonl([chat_line(f"Add {i} and {i} please" + " now" * width, f"The sum is {2 * i}.") for i in range(n)])


@pytest.fixture(scope="module", params=BACKENDS)
def trainer_server(request, tmp_path_factory):
    env = {"HONE_LOCAL_SLOTS": "1", "HONE_BASE_MODELS": '{"acme/missing": "/nonexistent/model"}'}
    if request.param == "postgres-s3":
        moto, postgres = request.getfixturevalue("moto"), request.getfixturevalue("postgres")
        env |= {**moto.env(), "HONE_DATABASE_URL": postgres.url, "HONE_STORAGE_URL": "s3://hone-train/blobs"}
    srv = HoneServer(tmp_path_factory.mktemp(f"train-{request.param}"), env)
    srv.backend = request.param
    yield srv
    srv.stop()


def stored_keys(server: HoneServer, prefix: str) -> list[str]:
    if server.backend == "postgres-s3":
        s3 = boto3.client("s3", endpoint_url=server.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        listed = s3.list_objects_v2(Bucket="hone-train", Prefix="blobs/" + prefix).get("Contents", [])
        return sorted(obj["Key"][len("blobs/"):] for obj in listed)
    root = server.data_dir / "blobs"
    return sorted(p.relative_to(root).as_posix() for p in (root / prefix).rglob("*") if p.is_file())


def test_job_trains_to_succeeded_with_events_checkpoints_and_adapter(trainer_server):
    project = trainer_server.new_project("trainer e2e")
    client = project.openai()
    train = client.files.create(file=("train.jsonl", numbers_dataset(12)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", numbers_dataset(4)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=train.id, validation_file=valid.id,
                                         suffix="e2e", method={"type": "supervised", "supervised": {
                                             "hyperparameters": {"n_epochs": 2, "batch_size": 3}}})
    assert job.status == "validating_files"
    done = wait_job(client, job.id, lambda j: j.status == "succeeded")

    slug = "trainer-e2e"
    assert done.fine_tuned_model == f"ft:hone-tiny:{slug}:e2e:{job.id}"
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 3
    assert done.hyperparameters.learning_rate_multiplier == 2.0  # "auto", resolved when the job started
    assert done.method.supervised.hyperparameters.learning_rate_multiplier == 2.0

    messages = [e.message for e in all_events(client, job.id)]
    assert messages[:3] == [f"Created fine-tuning job: {job.id}",
                            f"Validating training file: {train.id} and validation file: {valid.id}",
                            "Files validated, moving job to queued state"]
    assert "Fine-tuning job started" in messages
    steps = [e for e in all_events(client, job.id) if e.type == "metrics"]
    assert [e.data["step"] for e in steps] == list(range(1, 9))  # 12 examples / 3 per step x 2 epochs
    assert all(e.data["total_steps"] == 8 for e in steps)
    assert "full_valid_loss" in steps[-1].data and "valid_loss" in steps[-1].data
    assert steps[-1].message.startswith("Step 8/8: training loss=") and "full validation loss=" in steps[-1].message
    assert messages[-2:] == [f"New fine-tuned model created: {done.fine_tuned_model}",
                             "The job has successfully completed"]

    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(c.step_number for c in ckpts) == [4, 8]  # one per epoch
    assert {c.fine_tuned_model_checkpoint for c in ckpts} == {f"{done.fine_tuned_model}:ckpt-step-{n}" for n in (4, 8)}
    assert all(c.metrics.train_loss is not None for c in ckpts)

    deadline = time.monotonic() + 10  # the log goes up once the executor sees the trainer exit
    while f"jobs/{job.id}/logs/attempt-1.log" not in (keys := stored_keys(trainer_server, f"jobs/{job.id}/")):
        assert time.monotonic() < deadline, keys
        time.sleep(0.2)
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "adapter/chat_template.jinja", "adapter/hone_serving.json", "result.csv", "spec.json",
                 "checkpoints/step-4/trainer_state.pt", "checkpoints/step-8/COMPLETE", "logs/attempt-1.log"):
        assert f"jobs/{job.id}/{name}" in keys, name

    [result_id] = done.result_files
    result = client.files.retrieve(result_id)
    assert result.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(base64.b64decode(client.files.content(result_id).read()).decode())))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert float(rows[-1]["train_loss"]) == pytest.approx(steps[-1].data["train_loss"], rel=1e-4)

    models = {m.id for m in client.models.list()}
    assert done.fine_tuned_model in models


def test_missing_base_model_fails_the_job_with_a_clear_error(trainer_server):
    client = trainer_server.new_project("missing model").openai()
    train = client.files.create(file=("train.jsonl", numbers_dataset(12)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="acme/missing", training_file=train.id)
    failed = wait_job(client, job.id, lambda j: j.status == "failed", timeout=120)
    assert failed.error.code == "model_not_found"
    assert "acme/missing" in failed.error.message and "/nonexistent/model" in failed.error.message
    assert failed.fine_tuned_model is None


def test_cancel_kills_a_running_trainer_within_5_seconds(trainer_server):
    client = trainer_server.new_project("cancel").openai()
    train = client.files.create(file=("train.jsonl", numbers_dataset(60, width=20)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=train.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 1}}})
    wait_job(client, job.id, lambda j: j.status == "running" and j.trained_tokens)
    assert trainer_pids(job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 5
    while trainer_pids(job.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trainer_pids(job.id) == []
    time.sleep(1)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
