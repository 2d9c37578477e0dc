"""Jobs really train: real server, real `python -m trainer` subprocesses, the real openai SDK.

Nothing is faked here: hone-tiny is built locally and trainers are killed with real signals. These are what only
the real trainer shows: a job that trains to an adapter, a missing base model's error, exact resume after SIGKILL
and after a pause, DPO. What the control plane does with trainers (cancel, retries, restarts, queue order) is in
test_training_control.py, on the fake trainer."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import time

import pytest

from tests.support import (
    HoneServer,
    PostgresDatabase,
    all_events,
    chat_line,
    jsonl,
    s3_client,
    trainer_pids,
    wait_job,
    wait_past_step,
)

BACKENDS = ["sqlite-fs", "postgres-s3"]


def numbers_dataset(n: int, width: int = 1) -> bytes:
    return jsonl([chat_line(f"Add {i} and {i} please" + " now" * width, f"The sum is {2 * i}.") for i in range(n)])


def start_job(client, data: bytes, model: str = "hone-tiny", hyperparameters: dict | None = None, **create):
    """Uploads a training file and creates a supervised job on it."""
    train = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    if hyperparameters is not None:
        create["method"] = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    return client.fine_tuning.jobs.create(model=model, training_file=train.id, **create)


@pytest.fixture(scope="module", params=BACKENDS)
def trainer_server(request, tmp_path_factory):
    env = {"HONE_LOCAL_SLOTS": "1", "HONE_BASE_MODELS": '{"acme/missing": "/nonexistent/model"}'}
    postgres = None
    if request.param == "postgres-s3":
        # Its own database: the queue is shared by every server on a database, and the API tests'
        # server leaves queued jobs that this one would otherwise train.
        moto, postgres = request.getfixturevalue("moto"), PostgresDatabase()
        env |= {**moto.env(), "HONE_DATABASE_URL": postgres.url, "HONE_STORAGE_URL": "s3://hone-train/blobs"}
    srv = HoneServer(tmp_path_factory.mktemp(f"train-{request.param}"), env)
    srv.backend = request.param
    yield srv
    srv.stop()
    if postgres is not None:
        postgres.drop()


def _s3(server: HoneServer):
    return s3_client(server.env["AWS_ENDPOINT_URL"])


def stored_bytes(server: HoneServer, key: str) -> bytes:
    if server.backend == "postgres-s3":
        return _s3(server).get_object(Bucket="hone-train", Key="blobs/" + key)["Body"].read()
    return (server.data_dir / "blobs" / key).read_bytes()


def stored_keys(server: HoneServer, prefix: str) -> list[str]:
    if server.backend == "postgres-s3":
        s3 = _s3(server)
        listed = s3.list_objects_v2(Bucket="hone-train", Prefix="blobs/" + prefix).get("Contents", [])
        return sorted(obj["Key"][len("blobs/") :] for obj in listed)
    root = server.data_dir / "blobs"
    return sorted(p.relative_to(root).as_posix() for p in (root / prefix).rglob("*") if p.is_file())


def test_job_trains_to_succeeded_with_events_checkpoints_and_adapter(trainer_server):
    project = trainer_server.new_project("trainer e2e")
    client = project.openai()
    train = client.files.create(file=("train.jsonl", numbers_dataset(12)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", numbers_dataset(4)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=train.id,
        validation_file=valid.id,
        suffix="e2e",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 3}}},
    )
    assert job.status == "validating_files"
    done = wait_job(client, job.id, lambda j: j.status == "succeeded")

    slug = "trainer-e2e"
    assert done.fine_tuned_model == f"ft:hone-tiny:{slug}:e2e:{job.id}"
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 3
    assert done.hyperparameters.learning_rate_multiplier == 1.0  # "auto", resolved when the job started
    resolved = done.method.supervised.hyperparameters.to_dict()
    # every knob the trainer used is on the job, from hone-tiny's defaults in the base-model registry
    assert resolved == {
        "n_epochs": 2,
        "batch_size": 3,
        "learning_rate_multiplier": 1.0,
        "tuning_mode": "lora",
        "lora_rank": 16,
        "lora_alpha": 32.0,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "warmup_ratio": 0.03,
        "lr_scheduler": "cosine",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_length": 2048,
    }

    messages = [e.message for e in all_events(client, job.id)]
    assert messages[:3] == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {train.id} and validation file: {valid.id}",
        "Files validated, moving job to queued state",
    ]
    assert "Fine-tuning job started" in messages
    steps = [e for e in all_events(client, job.id) if e.type == "metrics"]
    assert [e.data["step"] for e in steps] == list(range(1, 9))  # 12 examples / 3 per step x 2 epochs
    assert all(e.data["total_steps"] == 8 for e in steps)
    assert "full_valid_loss" in steps[-1].data and "valid_loss" in steps[-1].data
    assert steps[-1].message.startswith("Step 8/8: training loss=") and "full validation loss=" in steps[-1].message
    assert messages[-2:] == [
        f"New fine-tuned model created: {done.fine_tuned_model}",
        "The job has successfully completed",
    ]

    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(c.step_number for c in ckpts) == [4, 8]  # one per epoch
    assert {c.fine_tuned_model_checkpoint for c in ckpts} == {f"{done.fine_tuned_model}:ckpt-step-{n}" for n in (4, 8)}
    assert all(c.metrics.train_loss is not None for c in ckpts)

    deadline = time.monotonic() + 10  # the log goes up once the executor sees the trainer exit
    while f"jobs/{job.id}/logs/attempt-1.log" not in (keys := stored_keys(trainer_server, f"jobs/{job.id}/")):
        assert time.monotonic() < deadline, keys
        time.sleep(0.2)
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "adapter/chat_template.jinja",
        "adapter/hone_serving.json",
        "result.csv",
        "spec.json",
        "checkpoints/step-4/trainer_state.pt",
        "checkpoints/step-8/COMPLETE",
        "logs/attempt-1.log",
    ):
        assert f"jobs/{job.id}/{name}" in keys, name
    # The trainer's log: JSON lines, each naming the job and attempt (library warnings included).
    log_file = stored_bytes(trainer_server, f"jobs/{job.id}/logs/attempt-1.log")
    log = [json.loads(line) for line in log_file.splitlines()]
    assert any(r["msg"] == f"starting {job.id} attempt 1" for r in log)
    assert all(r["job_id"] == job.id and r["attempt"] == 1 for r in log), log

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
    job = start_job(client, numbers_dataset(12), model="acme/missing")
    failed = wait_job(client, job.id, lambda j: j.status == "failed", timeout=120)
    assert failed.error.code == "model_not_found"
    assert "acme/missing" in failed.error.message and "/nonexistent/model" in failed.error.message
    assert failed.fine_tuned_model is None


STEPS_PER_EPOCH = 50


def _kill_when_mid_epoch(client, job_id: str, per_epoch: int) -> int:
    """Waits until the trainer is past its first checkpoint but short of the next, then SIGKILLs it."""
    wait_past_step(client, job_id, per_epoch + 2)
    [pid] = trainer_pids(job_id)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_sigkilled_trainer_resumes_exactly_from_its_checkpoint(trainer_server):
    client = trainer_server.new_project("sigkill").openai()
    job = start_job(
        client, numbers_dataset(STEPS_PER_EPOCH, width=12), hyperparameters={"n_epochs": 2, "batch_size": 1}, seed=7
    )
    _kill_when_mid_epoch(client, job.id, per_epoch=STEPS_PER_EPOCH)
    done = wait_job(client, job.id, lambda j: j.status == "succeeded")

    events = all_events(client, job.id)
    messages = [e.message for e in events]
    retry = next(m for m in messages if m.startswith("Trainer exited with code -9"))
    assert f"retrying from checkpoint step {STEPS_PER_EPOCH} (attempt 2 of 3)" in retry
    assert f"Resumed from checkpoint at step {STEPS_PER_EPOCH} (attempt 2)" in messages
    metrics = {e.data["step"]: e.data for e in events if e.type == "metrics"}
    assert sorted(metrics) == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # same total steps, every step reported once
    # Steps after the checkpoint ran twice; the first attempt's reported losses must match the
    # second attempt's result file exactly: same optimizer, scheduler, RNG and data position.
    rows = {
        int(r["step"]): float(r["train_loss"])
        for r in csv.DictReader(
            io.StringIO(base64.b64decode(client.files.content(done.result_files[0]).read()).decode())
        )
    }
    assert sorted(rows) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for step in range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1):
        assert rows[step] == pytest.approx(metrics[step]["train_loss"], rel=1e-4, abs=1e-5), step


def test_pause_checkpoints_and_resume_finishes_the_same_steps(trainer_server):
    client = trainer_server.new_project("pause").openai()
    job = start_job(
        client, numbers_dataset(STEPS_PER_EPOCH, width=12), hyperparameters={"n_epochs": 2, "batch_size": 1}
    )
    wait_job(client, job.id, lambda j: j.status == "running" and (j.trained_tokens or 0) > 0, poll=0.05)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    deadline = time.monotonic() + 30
    while trainer_pids(job.id):
        assert time.monotonic() < deadline, "paused trainer did not stop"
        time.sleep(0.1)
    paused_at = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert paused_at, "pause must leave a checkpoint"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"

    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_job(client, job.id, lambda j: j.status == "succeeded")
    events = all_events(client, job.id)
    assert f"Resumed from checkpoint at step {max(paused_at)} (attempt 2)" in [e.message for e in events]
    assert sorted({e.data["step"] for e in events if e.type == "metrics"}) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert done.fine_tuned_model


def test_dpo_job_trains_on_preference_pairs(trainer_server):
    client = trainer_server.new_project("dpo").openai()
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"Tell me about {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"Gladly: {i} is a number."}],
            "non_preferred_output": [{"role": "assistant", "content": "No."}],
        }
        for i in range(12)
    ]
    train = client.files.create(file=("prefs.jsonl", jsonl(rows)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=train.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    done = wait_job(client, job.id, lambda j: j.status == "succeeded")
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.1  # "auto", resolved
    steps = [e.data for e in all_events(client, job.id) if e.type == "metrics"]
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert "train_reward_margin" in steps[-1]
