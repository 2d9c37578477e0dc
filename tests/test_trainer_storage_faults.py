"""A real server and real trainers on S3 through the fault-injecting proxy (tests/s3_faults.py): checkpoint
writes that fail now and then are retried and the job succeeds; an adapter that cannot be written fails the
attempt with a clear error (exit 74, an event naming the object) and leaves no adapter a reader could serve."""

from __future__ import annotations

import pytest

from tests.s3_faults import S3FaultProxy
from tests.support import HoneServer, all_events, chat_line, jsonl, wait_job

BUCKET = "hone-faults"


@pytest.fixture
def proxied(moto, tmp_path):
    proxy = S3FaultProxy(moto.url)
    env = {
        **moto.env(),
        "HONE_STORAGE_URL": f"s3://{BUCKET}/blobs",
        "HONE_S3_ENDPOINT_URL": proxy.url,
        "HONE_S3_MAX_ATTEMPTS": "3",
        "HONE_S3_TIMEOUT_S": "5",
        "HONE_LOCAL_SLOTS": "1",
        "HONE_MAX_JOB_ATTEMPTS": "1",
    }
    server = HoneServer(tmp_path / "srv", env)
    try:
        yield server, proxy
    finally:
        server.stop()
        proxy.stop()


def _keys(moto, prefix: str) -> list[str]:
    s3 = moto.client()
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def _start(client, n: int = 12):
    rows = [chat_line(f"Add {i} and {i} please", f"The sum is {2 * i}.") for i in range(n)]
    train = client.files.create(file=("train.jsonl", jsonl(rows)), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=train.id,
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 3}}},
    )


def test_trainer_retries_checkpoint_faults_and_fails_clearly_when_the_adapter_cannot_be_written(proxied, moto):
    server, proxy = proxied
    client = server.new_project("storage faults").openai()

    # The first checkpoint's weights answer 503 twice and its marker's connection is reset once; the adapter's
    # weights answer 500 once: each within HONE_S3_MAX_ATTEMPTS, so the S3 client's retries carry the job through.
    proxy.fail("PUT", r"/checkpoints/step-\d+/adapter_model\.safetensors", times=2)
    proxy.reset("PUT", r"/checkpoints/step-\d+/COMPLETE", times=1)
    proxy.fail("PUT", r"/adapter/adapter_model\.safetensors", times=1, status=500)
    job = _start(client)
    done = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=240)
    assert sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)) == [4, 8]
    assert not [e.message for e in all_events(client, job.id) if e.message.startswith("Trainer")]
    assert len([s for s in proxy.seen() if s.fault]) == 4
    assert f"blobs/jobs/{job.id}/adapter/hone_serving.json" in _keys(moto, f"blobs/jobs/{job.id}/adapter/")
    assert done.fine_tuned_model

    # Now the adapter's weights cannot be written at all: the attempt ends (exit 74) and, attempts spent, the job
    # fails, naming the cause; the serving marker, written last, never appears.
    proxy.clear()
    proxy.fail("PUT", r"/adapter/adapter_model\.safetensors")
    job = _start(client)
    failed = wait_job(client, job.id, lambda j: j.status == "failed", timeout=240)
    assert failed.error.code == "trainer_failed"
    assert "exited with code 74 (storage unavailable)" in failed.error.message
    messages = [e.message for e in all_events(client, job.id)]
    ended = next(m for m in messages if m.startswith("Trainer attempt 1 ended: "))
    assert f"storage failed writing jobs/{job.id}/adapter/adapter_model.safetensors" in ended
    adapter = _keys(moto, f"blobs/jobs/{job.id}/adapter/")
    assert f"blobs/jobs/{job.id}/adapter/hone_serving.json" not in adapter
    assert f"blobs/jobs/{job.id}/adapter/adapter_model.safetensors" not in adapter
    assert job.id not in {m.id for m in client.models.list()} and failed.fine_tuned_model is None
