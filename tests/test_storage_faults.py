"""S3 that fails or stalls: the control plane's and the trainer's S3 clients, and the Files API, in front of a
fault-injecting proxy (tests/s3_faults.py) before moto's real S3 server, with real boto3.

Transient faults are retried and the bytes arrive whole; persistent ones end in bounded time with a clear error
(503 `storage_unavailable` through the API) and leave nothing behind: no object, no multipart upload, no file row,
and no checkpoint or adapter set that a reader could take as complete."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import boto3
import pytest
import torch

from service.storage import StorageUnavailable
from service.storage import s3 as service_s3
from service.storage.s3 import S3Storage
from tests.s3_faults import S3FaultProxy
from trainer import checkpoints
from trainer.blobs import StorageError, open_blobs

MIB = 1024 * 1024
PART = 5 * MIB  # the smallest part S3 takes: multipart uploads of a few parts stay quick through the proxy


@pytest.fixture
def aws(moto, monkeypatch):
    for name, value in moto.env().items():
        if name != "AWS_ENDPOINT_URL":  # every client here names its endpoint: the proxy, or moto itself
            monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=moto.url)


@pytest.fixture
def proxy(moto):
    proxy = S3FaultProxy(moto.url)
    yield proxy
    proxy.stop()


@pytest.fixture
def bucket(aws):
    name = f"faults-{uuid.uuid4().hex[:12]}"
    aws.create_bucket(Bucket=name)
    return name


def store(bucket: str, proxy: S3FaultProxy, *, attempts: int = 4, timeout_s: float = 2.0) -> S3Storage:
    return S3Storage(bucket, "blobs", proxy.url, max_attempts=attempts, timeout_s=timeout_s)


def leftovers(aws, bucket: str) -> tuple[list[str], list[str]]:
    """What the bucket holds, read from moto directly: objects, and multipart uploads still open."""
    objects = [o["Key"] for o in aws.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in aws.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return objects, uploads


def payload(size: int) -> bytes:
    return os.urandom(size)


# --- the control plane's S3Storage ------------------------------------------------------------------------------


def test_multipart_upload_retries_errors_and_resets_and_stores_the_exact_bytes(aws, bucket, proxy, monkeypatch):
    monkeypatch.setattr(service_s3, "PART_SIZE", PART)
    storage = store(bucket, proxy)
    part_two = proxy.fail("PUT", r"partNumber=2", times=2, status=503)
    reset = proxy.reset("POST", r"uploadId=", times=1)  # the completion's connection, reset once
    data = payload(2 * PART + 123_456)
    writer = storage.writer("files/big")
    for start in range(0, len(data), MIB):
        writer.write(data[start : start + MIB])
    assert writer.commit() == len(data)
    assert (part_two.hits, reset.hits) == (2, 1)
    assert storage.read_bytes("files/big") == data
    assert leftovers(aws, bucket) == (["blobs/files/big"], [])


def test_single_put_retries_throttling_and_a_500(aws, bucket, proxy):
    storage = store(bucket, proxy)
    proxy.fail("PUT", r"files/small", times=1, status=500)
    proxy.fail("PUT", r"files/small", times=1, status=503)
    writer = storage.writer("files/small")
    writer.write(b"hello\n")
    writer.commit()
    assert len(proxy.seen("PUT", r"files/small")) == 3
    assert storage.read_bytes("files/small") == b"hello\n"


@pytest.mark.parametrize("fault", ["part", "completion", "single put", "lost reply"])
def test_persistent_failure_raises_unavailable_and_leaves_no_object_and_no_upload(
    aws, bucket, proxy, monkeypatch, fault
):
    monkeypatch.setattr(service_s3, "PART_SIZE", PART)
    storage = store(bucket, proxy, attempts=3)
    size = 100 if fault in ("single put", "lost reply") else 2 * PART + 10
    if fault == "part":
        proxy.fail("PUT", r"partNumber=2")
    elif fault == "completion":
        proxy.fail("POST", r"uploadId=")
    elif fault == "single put":
        proxy.fail("PUT", r"files/x")
    else:  # S3 stores the object, but every reply is lost: the client cannot know it landed
        proxy.drop_reply("PUT", r"files/x")
    writer = storage.writer("files/x")
    with pytest.raises(StorageUnavailable) as raised:
        writer.write(payload(size))
        writer.commit()
    if fault == "lost reply":
        assert str(raised.value).startswith("storage unavailable: writing blobs/files/x failed: ")
    else:
        assert "blobs/files/x failed after 3 attempt(s): 503 ServiceUnavailable" in str(raised.value)
    writer.abort()  # what the Files API does with any failure
    assert leftovers(aws, bucket) == ([], [])
    attempts = [s for s in proxy.seen() if s.fault is not None]
    assert len(attempts) == 3  # HONE_S3_MAX_ATTEMPTS in all, then the error


def test_a_stalled_store_fails_in_bounded_time(aws, bucket, proxy):
    storage = store(bucket, proxy, attempts=2, timeout_s=1.0)
    proxy.stall("PUT", r"files/stalled")
    writer = storage.writer("files/stalled")
    writer.write(b"x" * 1000)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="timeout"):
        writer.commit()
    elapsed = time.monotonic() - started
    writer.abort()
    assert 2.0 <= elapsed < 15, elapsed  # two attempts of one second each, a backoff between: not a hang
    assert len(proxy.seen("PUT", r"files/stalled")) == 2
    proxy.clear()
    assert leftovers(aws, bucket) == ([], [])


def test_abort_never_masks_the_error_when_the_store_is_down_entirely(aws, bucket, proxy, monkeypatch):
    monkeypatch.setattr(service_s3, "PART_SIZE", PART)
    storage = store(bucket, proxy, attempts=2)
    writer = storage.writer("files/y")
    writer.write(payload(PART))  # part 1 goes up
    proxy.fail("*", r".")  # then nothing answers, the abort included
    with pytest.raises(StorageUnavailable):
        writer.commit()
    writer.abort()  # logs, does not raise: the caller's error is the one to report
    proxy.clear()
    objects, uploads = leftovers(aws, bucket)
    assert objects == [] and uploads == ["blobs/files/y"]  # invisible; the bucket's lifecycle rule reclaims it


# --- the trainer's S3Blobs: checkpoints and adapters -------------------------------------------------------------


class _Weights:
    """What checkpoints.save needs of a model: save_pretrained writing real safetensors."""

    def __init__(self, size: int = 64):
        self.tensor = torch.arange(size, dtype=torch.float32)

    def save_pretrained(self, folder: Path, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({"lora_A.weight": self.tensor}, str(Path(folder) / "adapter_model.safetensors"))
        (Path(folder) / "adapter_config.json").write_text('{"r": 4}')


def trainer_blobs(bucket: str, proxy: S3FaultProxy, *, attempts: int = 4, timeout_s: float = 2.0):
    return open_blobs(f"s3://{bucket}/blobs", proxy.url, s3_max_attempts=attempts, s3_timeout_s=timeout_s)


def test_checkpoint_upload_retries_transient_faults_and_commits(aws, bucket, proxy, tmp_path):
    blobs = trainer_blobs(bucket, proxy)
    proxy.fail("PUT", r"step-3/adapter_model\.safetensors", times=2)
    proxy.reset("PUT", r"step-3/trainer_state\.pt", times=1)
    proxy.drop_reply("PUT", r"step-3/COMPLETE", times=1)  # landed, reply lost: the retry writes it again
    saved = checkpoints.save(blobs, "jobs/ftjob-1/", tmp_path, 3, _Weights(), {"step": 3})
    assert checkpoints.latest_step(blobs, "jobs/ftjob-1/") == 3
    restored = checkpoints.load(blobs, "jobs/ftjob-1/", tmp_path, 3)
    assert sorted(p.name for p in restored.iterdir()) == [
        "COMPLETE",
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainer_state.pt",
    ]
    assert (restored / "adapter_model.safetensors").read_bytes() == (
        saved.local / "adapter_model.safetensors"
    ).read_bytes()
    assert torch.load(restored / checkpoints.STATE) == {"step": 3}


def test_checkpoint_cut_off_by_a_persistent_fault_is_never_taken_as_complete(aws, bucket, proxy, tmp_path):
    blobs = trainer_blobs(bucket, proxy, attempts=2)
    checkpoints.save(blobs, "jobs/ftjob-2/", tmp_path, 2, _Weights(), {"step": 2})
    proxy.fail("PUT", r"step-4/trainer_state\.pt")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"storage failed writing jobs/ftjob-2/checkpoints/step-4/trainer_state"):
        checkpoints.save(blobs, "jobs/ftjob-2/", tmp_path, 4, _Weights(), {"step": 4})
    assert time.monotonic() - started < 15
    proxy.clear()
    keys = blobs.list("jobs/ftjob-2/checkpoints/step-4/")
    assert "jobs/ftjob-2/checkpoints/step-4/COMPLETE" not in keys  # the marker goes up last, so never here
    assert checkpoints.latest_step(blobs, "jobs/ftjob-2/") == 2  # a resumed attempt starts from the whole one


def test_large_adapter_file_under_persistent_faults_leaves_no_partial_object(aws, bucket, proxy, tmp_path):
    """Above boto3's multipart threshold (8 MiB) upload_file sends parts: a failed one aborts the upload, and the
    serving marker that the adapter's other files wait for is never written."""
    blobs = trainer_blobs(bucket, proxy, attempts=2)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(payload(9 * MIB))
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "hone_serving.json").write_text("{}")
    proxy.fail("PUT", r"partNumber=2")
    with pytest.raises(StorageError, match="adapter_model.safetensors"):
        blobs.upload_dir(adapter, "jobs/ftjob-3/adapter/", last="hone_serving.json")
    proxy.clear()
    objects, uploads = leftovers(aws, bucket)
    assert "blobs/jobs/ftjob-3/adapter/adapter_model.safetensors" not in objects
    assert "blobs/jobs/ftjob-3/adapter/hone_serving.json" not in objects
    assert uploads == []


def test_trainer_reads_in_bounded_time_from_a_stalled_store(aws, bucket, proxy):
    blobs = trainer_blobs(bucket, proxy, attempts=2, timeout_s=1.0)
    blobs.put_bytes("jobs/ftjob-4/spec.json", b"{}")
    proxy.stall("GET", r"spec\.json")
    started = time.monotonic()
    with pytest.raises(StorageError, match="timeout"):
        blobs.read_bytes("jobs/ftjob-4/spec.json")
    assert time.monotonic() - started < 15


# --- the Files API over a failing store --------------------------------------------------------------------------


@pytest.fixture
def api(aws, bucket, proxy, tmp_path):
    """The control plane in process (SQLite, S3 through the proxy), and a project key's headers."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        data_dir=tmp_path / "data",
        storage_url=f"s3://{bucket}/blobs",
        s3_endpoint_url=proxy.url,
        s3_max_attempts=2,
        s3_timeout_s=1.0,
        local_slots=0,
        auto_deploy=False,
        admin_api_key="sk-admin-test",
        file_expiry_poll_s=3600,
        endpoint_poll_s=3600,
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": "Bearer sk-admin-test"}
        project = client.post("/v1/organization/projects", json={"name": "faults"}, headers=admin).json()
        account = client.post(
            f"/v1/organization/projects/{project['id']}/service_accounts", json={"name": "t"}, headers=admin
        ).json()
        client.headers["Authorization"] = f"Bearer {account['api_key']['value']}"
        yield client


def upload(api, data: bytes):
    return api.post("/v1/files", data={"purpose": "batch"}, files={"file": ("data.bin", data)})


def assert_storage_unavailable(resp) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "storage_unavailable"
    assert resp.json()["error"]["type"] == "server_error"
    assert resp.headers["retry-after"] == "5"


@pytest.mark.parametrize("fault", ["single put", "part", "stall"])
def test_upload_to_a_failing_store_answers_503_and_leaves_no_file(api, aws, bucket, proxy, monkeypatch, fault):
    monkeypatch.setattr(service_s3, "PART_SIZE", PART)
    size = 2 * PART + 10 if fault == "part" else 1000
    if fault == "part":
        proxy.fail("PUT", r"partNumber=2")
    elif fault == "single put":
        proxy.fail("PUT", r"/files/")
    else:
        proxy.stall("PUT", r"/files/")
    started = time.monotonic()
    assert_storage_unavailable(upload(api, payload(size)))
    assert time.monotonic() - started < 30  # two attempts of at most a second each, when stalled
    proxy.clear()
    assert api.get("/v1/files").json()["data"] == []
    objects, uploads = leftovers(aws, bucket)
    assert [k for k in objects if "/files/" in k] == [] and uploads == []


def test_upload_through_transient_faults_succeeds_with_the_right_bytes(api, proxy, monkeypatch):
    monkeypatch.setattr(service_s3, "PART_SIZE", PART)
    proxy.fail("PUT", r"partNumber=1", times=1)
    proxy.reset("POST", r"uploadId=", times=1)
    data = payload(PART + 77)
    resp = upload(api, data)
    assert resp.status_code == 200, resp.text
    assert resp.json()["bytes"] == len(data)
    assert api.get(f"/v1/files/{resp.json()['id']}/content").content == data


def test_reading_a_file_from_a_failing_store_answers_503_then_reads_again(api, proxy):
    created = upload(api, b"some bytes").json()
    proxy.fail("GET", r"/files/")
    assert_storage_unavailable(api.get(f"/v1/files/{created['id']}/content"))
    proxy.clear()
    assert api.get(f"/v1/files/{created['id']}/content").content == b"some bytes"
