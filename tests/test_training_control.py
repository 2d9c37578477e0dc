"""What the control plane does with trainers: real servers, trainer subprocesses killed with real signals, the
real openai SDK, the control plane itself killed and restarted on the same port and data.

The trainers here are the FAKE one (tests/fake_trainer: the real entry point, reporter, storage, checkpoint layout
and exit codes; no torch, fake steps), or a script that crashes at once: these tests check cancel kills, the
internal API's checks, the base-model registry, adoption and retries after a control-plane restart, queue order
and quotas, none of which needs a model. What only a real trainer shows is in test_training.py."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from tests.support import HoneServer, PostgresDatabase, all_events, fake_trainer_env, trainer_pids, wait_job
from tests.test_training import BACKENDS, numbers_dataset, start_job, stored_bytes


@pytest.fixture(scope="module", params=BACKENDS)
def fake_server(request, tmp_path_factory):
    """As test_training.py's `trainer_server`, on the FAKE trainer."""
    env = {"HONE_LOCAL_SLOTS": "1", "HONE_BASE_MODELS": '{"acme/missing": "/nonexistent/model"}', **fake_trainer_env()}
    postgres = None
    if request.param == "postgres-s3":
        moto, postgres = request.getfixturevalue("moto"), PostgresDatabase()
        env |= {**moto.env(), "HONE_DATABASE_URL": postgres.url, "HONE_STORAGE_URL": "s3://hone-train/blobs"}
    srv = HoneServer(tmp_path_factory.mktemp(f"fake-train-{request.param}"), env)
    srv.backend = request.param
    yield srv
    srv.stop()
    if postgres is not None:
        postgres.drop()


def test_cancel_kills_a_running_trainer_within_5_seconds(fake_server):
    client = fake_server.new_project("cancel").openai()
    job = start_job(client, numbers_dataset(60, width=20), hyperparameters={"n_epochs": 20, "batch_size": 1})
    running = wait_job(client, job.id, lambda j: j.status == "running" and j.trained_tokens and j.estimated_finish)
    assert running.estimated_finish >= running.created_at  # an ETA from the trainer's step times
    assert trainer_pids(job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.estimated_finish is None
    deadline = time.monotonic() + 5
    while trainer_pids(job.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trainer_pids(job.id) == []
    time.sleep(1)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


# Resume tests: two epochs of one example per step, a checkpoint after the first (enough steps after it to
# stop the trainer mid-epoch on a loaded machine).
def test_trainer_that_keeps_crashing_fails_the_job_after_the_retry_limit(tmp_path):
    # A real subprocess that dies at once stands in for a trainer that always crashes.
    crasher = tmp_path / "crash.sh"
    crasher.write_text("#!/bin/sh\necho 'boom: out of memory' >&2\nexit 3\n")
    crasher.chmod(0o755)
    server = HoneServer(
        tmp_path / "srv", {"HONE_LOCAL_SLOTS": "1", "HONE_TRAINER_PYTHON": str(crasher), "HONE_MAX_JOB_ATTEMPTS": "2"}
    )
    try:
        client = server.new_project("crash").openai()
        job = start_job(client, numbers_dataset(12))
        failed = wait_job(client, job.id, lambda j: j.status == "failed", timeout=60)
        assert failed.error.code == "trainer_failed"
        assert "2 trainer crashes" in failed.error.message and "exited with code 3" in failed.error.message
        messages = [e.message for e in all_events(client, job.id)]
        assert "Trainer exited with code 3; retrying from the start (attempt 2 of 2)" in messages
        log = (server.data_dir / "blobs" / "jobs" / job.id / "logs" / "attempt-2.log").read_text()
        assert "boom: out of memory" in log
    finally:
        server.stop()


def test_control_plane_killed_mid_training_loses_no_event(tmp_path):
    env = {"HONE_LOCAL_SLOTS": "1", **fake_trainer_env(step_s=0.02)}  # the fake trainer: ~12 s for 600 steps
    server = HoneServer(tmp_path / "srv", env)
    client = server.new_project("restart").openai()
    job = start_job(client, numbers_dataset(100, width=12), hyperparameters={"n_epochs": 6, "batch_size": 1})
    wait_job(client, job.id, lambda j: j.status == "running" and (j.trained_tokens or 0) > 0, poll=0.05)
    [pid] = trainer_pids(job.id)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(2)  # the trainer goes on and buffers its reports
    assert trainer_pids(job.id) == [pid]
    server = HoneServer(tmp_path / "srv", env, port=server.port)
    try:
        done = wait_job(client, job.id, lambda j: j.status == "succeeded")
        events = all_events(client, job.id)
        assert sorted(e.data["step"] for e in events if e.type == "metrics") == list(range(1, 601))
        assert not any(e.message.startswith("Trainer ") for e in events)  # adopted, not retried
        assert done.trained_tokens > 0
    finally:
        server.stop()


def test_admin_registers_a_local_folder_base_model_that_trains(fake_server, tmp_path):
    # The fake trainer only checks that the folder exists (building and loading hone-tiny is what
    # test_job_trains_to_succeeded... shows), so any folder will do.
    folder = tmp_path / "local-tiny"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    name = f"acme/local-tiny-{fake_server.backend}"
    with fake_server.admin() as admin:
        created = admin.post("/v1/organization/base_models", json={"name": name, "source": str(folder)})
        assert created.status_code == 200, created.text
        assert created.json() == {
            "id": name,
            "object": "base_model",
            "created": created.json()["created"],
            "source": str(folder),
            "origin": "admin",
            "tensor_parallel_size": 1,  # serving sizes come from HONE_BASE_MODELS only; the admin API's are 1
            "pipeline_parallel_size": 1,
            "vision": False,  # as are vision models (HONE_BASE_MODELS); the admin API registers text models
            "lora_vision_tower": False,
            "tool_call_parser": None,  # from its name when it names a family (Llama 3, Qwen, ...): this one does not
        }
        listed = {m["id"]: m for m in admin.get("/v1/organization/base_models").json()["data"]}
        assert listed["hone-tiny"]["origin"] == "builtin" and listed["acme/missing"]["origin"] == "settings"
        assert listed["hone-tiny"]["tool_call_parser"] == "llama3_json"
        assert listed["hone-tiny-vision"]["vision"] and not listed["hone-tiny"]["vision"]
        refused = admin.delete("/v1/organization/base_models/hone-tiny")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "base_model_not_editable"
        bad = admin.post("/v1/organization/base_models", json={"name": "ft:nope", "source": "/x"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"

    project = fake_server.new_project("registry")
    with project.http() as http:  # a project key cannot manage the registry
        assert http.get("/v1/organization/base_models").status_code in (401, 403)
    client = project.openai()
    assert name in {m.id for m in client.models.list()}
    job = start_job(client, numbers_dataset(12), model=name, hyperparameters={"n_epochs": 1, "batch_size": 4})
    done = wait_job(client, job.id, lambda j: j.status == "succeeded")
    assert done.fine_tuned_model.startswith(f"ft:{name}:registry::")

    with fake_server.admin() as admin:
        assert admin.delete(f"/v1/organization/base_models/{name}").json()["deleted"] is True
        assert admin.get(f"/v1/organization/base_models/{name}").status_code == 404
    assert name not in {m.id for m in client.models.list()}


def test_internal_api_needs_the_trainer_token_and_keeps_trainers_in_their_folder(fake_server):
    project = fake_server.new_project("internal")
    client = project.openai()
    job = start_job(client, numbers_dataset(60, width=20), hyperparameters={"n_epochs": 20, "batch_size": 1})
    wait_job(client, job.id, lambda j: j.status == "running" and j.trained_tokens)
    url = f"{fake_server.base_url}/internal/fine_tuning/jobs/{job.id}"
    with project.http() as http:  # a project key is not a trainer token
        refused = http.post(url + "/report", json={"events": []})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_trainer_token"
    token = json.loads(stored_bytes(fake_server, f"jobs/{job.id}/spec.json"))["token"]
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as trainer:
        outside = trainer.post(
            url + "/report",
            json={
                "checkpoints": [
                    {"step": 1, "metrics": {}, "storage_prefix": "jobs/ftjob-someone-else/checkpoints/step-1/"}
                ]
            },
        )
        assert outside.status_code == 400 and outside.json()["error"]["code"] == "invalid_storage_key"
        client.fine_tuning.jobs.cancel(job.id)
        # A cancelled job takes no more reports and no result: the trainer hears so and stops.
        assert trainer.post(url + "/report", json={"events": []}).json()["status"] == "cancelled"
        late = trainer.post(
            url + "/complete",
            json={
                "trained_tokens": 1,
                "adapter_prefix": f"jobs/{job.id}/adapter/",
                "result_key": f"jobs/{job.id}/result.csv",
            },
        )
        assert late.status_code == 409 and late.json()["error"]["code"] == "job_not_running"
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None


def test_restarted_control_plane_retries_a_job_whose_trainer_died_meanwhile(tmp_path):
    # The fake trainer, 100 steps an epoch: 4 s between checkpoints to kill it in, as a real trainer's steps give.
    env = {"HONE_LOCAL_SLOTS": "1", **fake_trainer_env(step_s=0.04)}
    server = HoneServer(tmp_path / "srv", env)
    client = server.new_project("orphan").openai()
    job = start_job(client, numbers_dataset(100, width=12), hyperparameters={"n_epochs": 3, "batch_size": 1})
    wait_job(client, job.id, lambda j: client.fine_tuning.jobs.checkpoints.list(j.id).data, poll=0.05)
    [pid] = trainer_pids(job.id)
    server.stop(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)  # both gone: the job is left `running` with no trainer
    server = HoneServer(tmp_path / "srv", env, port=server.port)
    try:
        wait_job(client, job.id, lambda j: j.status == "succeeded")
        events = all_events(client, job.id)
        [retry] = [e.message for e in events if e.message.startswith("Trainer vanished; retrying from checkpoint")]
        step = int(retry.split("checkpoint step ")[1].split(" ")[0])
        assert step in (100, 200) and retry.endswith("(attempt 2 of 3)")
        assert f"Resumed from checkpoint at step {step} (attempt 2)" in [e.message for e in events]
        assert sorted({e.data["step"] for e in events if e.type == "metrics"}) == list(range(1, 301))
    finally:
        server.stop()


LONG = {"n_epochs": 20, "batch_size": 1}  # 1200 steps, a minute on the fake trainer: cancelled, never finished


def test_higher_priority_leaves_the_queue_first(tmp_path):
    server = HoneServer(tmp_path / "srv", {"HONE_LOCAL_SLOTS": "1", **fake_trainer_env()})
    try:
        client = server.new_project("priority").openai()
        first = start_job(client, numbers_dataset(60, width=20), hyperparameters=LONG)
        wait_job(client, first.id, lambda j: j.status == "running")
        normal = start_job(client, numbers_dataset(60, width=20), hyperparameters=LONG)
        urgent = start_job(client, numbers_dataset(60, width=20), hyperparameters=LONG, extra_body={"priority": 10})
        assert urgent.model_extra["priority"] == 10 and normal.model_extra["priority"] == 0
        for job in (normal, urgent):
            wait_job(client, job.id, lambda j: j.status == "queued")
        client.fine_tuning.jobs.cancel(first.id)
        wait_job(client, urgent.id, lambda j: j.status == "running")
        assert client.fine_tuning.jobs.retrieve(normal.id).status == "queued"
        for job in (urgent, normal):
            client.fine_tuning.jobs.cancel(job.id)
    finally:
        server.stop()


def test_a_project_at_its_quota_does_not_hold_up_other_projects(tmp_path):
    server = HoneServer(
        tmp_path / "srv", {"HONE_LOCAL_SLOTS": "2", "HONE_MAX_RUNNING_JOBS_PER_PROJECT": "1", **fake_trainer_env()}
    )
    try:
        busy, other = server.new_project("busy").openai(), server.new_project("other").openai()
        busy_jobs = [start_job(busy, numbers_dataset(60, width=20), hyperparameters=LONG) for _ in range(2)]
        wait_job(busy, busy_jobs[0].id, lambda j: j.status == "running")
        wait_job(busy, busy_jobs[1].id, lambda j: j.status == "queued")
        other_job = start_job(other, numbers_dataset(60, width=20), hyperparameters=LONG)
        wait_job(other, other_job.id, lambda j: j.status == "running")  # a free slot, and the queue head is blocked
        time.sleep(1)
        assert busy.fine_tuning.jobs.retrieve(busy_jobs[1].id).status == "queued"
        busy.fine_tuning.jobs.cancel(busy_jobs[0].id)
        wait_job(busy, busy_jobs[1].id, lambda j: j.status == "running")
        busy.fine_tuning.jobs.cancel(busy_jobs[1].id)
        other.fine_tuning.jobs.cancel(other_job.id)
    finally:
        server.stop()
