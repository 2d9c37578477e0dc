"""The same blob-storage contract on the filesystem backend and on S3 (moto's server, real boto3)."""

from __future__ import annotations

import os

import boto3
import pytest

from service.storage import BlobNotFound, open_storage
from service.storage.s3 import PART_SIZE


@pytest.fixture(params=["filesystem", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "filesystem":
        return open_storage((tmp_path / "blobs").as_uri())
    moto = request.getfixturevalue("moto")
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    return open_storage(f"s3://contract-{os.urandom(4).hex()}/some/prefix")


def test_put_read_list_delete(storage):
    storage.put_bytes("files/a", b"alpha")
    storage.put_bytes("files/b", b"beta")
    storage.put_bytes("jobs/j1/spec.json", b"{}")
    assert storage.read_bytes("files/a") == b"alpha"
    assert storage.size("files/b") == 4
    assert storage.exists("files/a") and not storage.exists("files/zzz")
    assert storage.list("files/") == ["files/a", "files/b"]
    storage.delete("files/a")
    assert storage.list("files/") == ["files/b"]
    with pytest.raises(BlobNotFound):
        storage.read_bytes("files/a")
    storage.delete("files/a")  # deleting twice is not an error


def test_writer_is_invisible_until_commit_and_abort_leaves_nothing(storage):
    writer = storage.writer("files/big")
    writer.write(b"x" * 1000)
    assert not storage.exists("files/big")
    writer.abort()
    assert not storage.exists("files/big")
    assert storage.list("files/") == []


def test_multipart_upload_and_streaming_read(storage):
    # Over two S3 parts, written in odd-sized pieces.
    piece = bytes(range(256)) * 4099
    total = 0
    writer = storage.writer("files/multi")
    while total < 2 * PART_SIZE + 12345:
        writer.write(piece)
        total += len(piece)
    assert writer.commit() == total
    assert storage.size("files/multi") == total
    chunks = list(storage.iter_chunks("files/multi", chunk_size=1 << 20))
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= 1 << 20
    data = b"".join(chunks)
    assert len(data) == total and data[: len(piece)] == piece


def test_delete_prefix(storage):
    for i in range(3):
        storage.put_bytes(f"jobs/j1/adapter/f{i}", b"1")
    storage.put_bytes("jobs/j2/adapter/f0", b"2")
    storage.delete_prefix("jobs/j1/")
    assert storage.list("jobs/") == ["jobs/j2/adapter/f0"]


def test_ping_and_missing_key(storage):
    storage.ping()
    with pytest.raises(BlobNotFound):
        list(storage.iter_chunks("nope"))


def test_s3_aborted_multipart_upload_is_gone(moto, monkeypatch):
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    storage = open_storage("s3://abort-check/p")
    writer = storage.writer("files/partial")
    writer.write(b"y" * (PART_SIZE + 10))  # forces a real multipart upload
    writer.abort()
    s3 = boto3.client("s3")
    assert s3.list_multipart_uploads(Bucket="abort-check").get("Uploads", []) == []
    assert storage.list("") == []


def test_abort_after_commit_keeps_the_object(storage):
    # The upload path aborts on any later failure; that must not undo or break a committed write.
    writer = storage.writer("files/kept")
    writer.write(b"z" * (PART_SIZE + 1))
    writer.commit()
    writer.abort()
    assert storage.size("files/kept") == PART_SIZE + 1
