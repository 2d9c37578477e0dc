"""Files API through the real openai SDK, on both backends."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.support import chat_dataset


def test_upload_retrieve_content_delete(client):
    data = chat_dataset(12)
    created = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose, created.status) == (
        len(data),
        "train.jsonl",
        "fine-tune",
        "processed",
    )
    assert created.model_extra["dataset"] == {"format": "openai_chat", "examples": 12}

    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert client.files.content(created.id).read() == data
    assert client.files.wait_for_processing(created.id).status == "processed"

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(created.id)
    assert err.value.code == "not_found" and err.value.param == "id"
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)


def test_list_order_purpose_and_pagination(client):
    ids = [client.files.create(file=(f"f{i}.jsonl", chat_dataset(10)), purpose="fine-tune").id for i in range(5)]
    other = client.files.create(file=("notes.txt", b"free text"), purpose="user_data")

    page = client.files.list(purpose="fine-tune", limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2] and page.has_more
    assert [f.id for f in client.files.list(purpose="fine-tune", limit=2)] == ids[::-1]  # auto-pagination
    assert [f.id for f in client.files.list(purpose="fine-tune", order="asc")] == ids
    assert [f.id for f in client.files.list(purpose="user_data")] == [other.id]
    assert [f.id for f in client.files.list(purpose="fine-tune", order="asc", after=ids[1], limit=2)] == ids[2:]

    raw = client.files.with_raw_response.list(purpose="fine-tune", limit=3).http_response.json()
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[4], ids[2], True)


def test_empty_list_is_schema_valid(client):
    # The schema types first_id/last_id as strings, so an empty page carries "" rather than null.
    page = client.files.list()
    assert page.data == [] and page.has_more is False


def test_upload_errors_name_the_parameter(client, project):
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("train.txt", chat_dataset(10)), purpose="fine-tune")
    assert err.value.param == "file" and "Must be .jsonl" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("train.jsonl", chat_dataset(10)), purpose="training")
    assert err.value.param == "purpose" and err.value.code == "invalid_value"
    with project.http() as http:
        resp = http.post("/v1/files", data={"purpose": "fine-tune"})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "file"
        resp = http.post("/v1/files", files={"file": ("a.jsonl", chat_dataset(10))})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "purpose"
        # a form field Hone would not honour is refused, not stored and ignored (and leaves no file behind)
        resp = http.post(
            "/v1/files", data={"purpose": "fine-tune", "purpse": "x"}, files={"file": ("a.jsonl", chat_dataset(10))}
        )
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "purpse"
        assert resp.json()["error"]["code"] == "unknown_parameter"
    assert client.files.list().data == []


def test_expired_files_are_deleted_unless_a_job_needs_them(server, project, client):
    from sqlalchemy import create_engine, update

    from service.db.tables import File

    loose = client.files.create(
        file=("a.jsonl", chat_dataset(10)), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    needed = client.files.create(
        file=("b.jsonl", chat_dataset(10)), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=needed.id)
    # An hour is too long to wait: move both expiry times into the past.
    engine = create_engine(server.database_url)
    with engine.begin() as conn:
        conn.execute(update(File).where(File.id.in_([loose.id, needed.id])).values(expires_at=1))
    engine.dispose()
    deadline = time.monotonic() + 10
    while loose.id in [f.id for f in client.files.list()] and time.monotonic() < deadline:
        time.sleep(0.2)
    remaining = [f.id for f in client.files.list()]
    assert loose.id not in remaining and needed.id in remaining
    with pytest.raises(openai.NotFoundError):
        client.files.content(loose.id)
    client.fine_tuning.jobs.cancel(job.id)
    deadline = time.monotonic() + 10
    while needed.id in [f.id for f in client.files.list()] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert needed.id not in [f.id for f in client.files.list()]


def test_expires_after(project):
    with project.http() as http:
        resp = http.post(
            "/v1/files",
            data={"purpose": "user_data", "expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
            files={"file": ("a.txt", b"x")},
        )
        body = resp.json()
        assert resp.status_code == 200 and body["expires_at"] == body["created_at"] + 3600
        resp = http.post(
            "/v1/files",
            data={"purpose": "user_data", "expires_after[anchor]": "created_at", "expires_after[seconds]": "10"},
            files={"file": ("a.txt", b"x")},
        )
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "expires_after.seconds"


def test_large_upload_streams_through(client):
    # ~12 MB: more than one S3 multipart part, and well past any in-memory form limit.
    row = json.dumps({"messages": [{"role": "user", "content": "q" * 2000}, {"role": "assistant", "content": "a"}]})
    data = (row + "\n").encode() * 6000
    created = client.files.create(file=("big.jsonl", data), purpose="fine-tune")
    assert created.bytes == len(data) and created.model_extra["dataset"]["examples"] == 6000
    assert client.files.content(created.id).read() == data


def test_size_limit_is_413_and_leaves_nothing(tmp_path):
    from tests.support import HoneServer

    server = HoneServer(tmp_path / "small", {"HONE_MAX_FILE_BYTES": "100000"})
    try:
        project = server.new_project()
        client = project.openai()
        big = chat_dataset(3000)
        assert len(big) > 100000
        with pytest.raises(openai.APIStatusError) as err:
            client.files.create(file=("big.jsonl", big), purpose="fine-tune")
        assert err.value.status_code == 413 and err.value.code == "file_too_large"

        # Without a Content-Length the limit is enforced while streaming.
        def chunks():
            boundary = b"--xyz"
            yield boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="s.jsonl"\r\n\r\n'
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]
            yield b"\r\n" + boundary + b"--\r\n"

        with project.http() as http:
            resp = http.post(
                "/v1/files", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"}
            )
        assert resp.status_code == 413
        assert client.files.list().data == []
        assert [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file()] == []
    finally:
        server.stop()


def test_file_used_by_active_job_cannot_be_deleted(client):
    f = client.files.create(file=("t.jsonl", chat_dataset(10)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=f.id)
    with pytest.raises(openai.BadRequestError) as err:
        client.files.delete(f.id)
    assert err.value.code == "file_in_use" and job.id in err.value.message
    client.fine_tuning.jobs.cancel(job.id)
    assert client.files.delete(f.id).deleted


def test_non_finetune_purposes_are_stored_unvalidated(client):
    created = client.files.create(file=("batch.jsonl", b"not json at all\n"), purpose="batch")
    assert created.status == "processed" and "dataset" not in (created.model_extra or {})
    assert client.files.content(created.id).read() == b"not json at all\n"


def test_id_with_slash_is_a_clean_404(project):
    with project.http() as http:
        resp = http.get("/v1/files/file-abc%2Fdef")
    assert resp.status_code == 404 and resp.json()["error"]["message"] == "No such File object: file-abc/def"


def test_invalid_dataset_ends_error_and_jobs_refuse_it(client):
    data = chat_dataset(11) + b'{"messages": [{"role": "bot", "content": "hi"}]}\n' + b"{oops\n"
    created = client.files.create(file=("bad.jsonl", data), purpose="fine-tune")
    assert created.status == "error"
    assert "line 12, field messages[0].role: unrecognized role 'bot'" in created.status_details
    assert "line 13, field $: invalid JSON" in created.status_details
    dataset = created.model_extra["dataset"]
    assert dataset["total_errors"] == 2 and dataset["errors"][0]["code"] == "unrecognized_role"
    assert client.files.wait_for_processing(created.id).status == "error"
    assert client.files.content(created.id).read() == data  # kept so it can be inspected

    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=created.id)
    assert (err.value.param, err.value.code) == ("training_file", "invalid_training_file")
    assert "line 12, field messages[0].role" in err.value.message
    assert (err.value.body["line"], err.value.body["field"]) == (12, "messages[0].role")
    good = client.files.create(file=("good.jsonl", chat_dataset(10)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=good.id, validation_file=created.id)
    assert (err.value.param, err.value.code) == ("validation_file", "invalid_validation_file")
    assert client.fine_tuning.jobs.list().data == []
