"""Every bad input is a 4xx that says what is wrong, and nothing is half-kept: file names of any Unicode in both
RFC 7578 and RFC 5987 forms, names that cannot be stored, broken multipart bodies, JSON bodies that are too
large or hold duplicate keys, lone surrogates or NULs, and errors that never echo more than a short escaped
excerpt. Against both backends (SQLite + folder, PostgreSQL + S3 on moto)."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest

from tests.support import chat_dataset, s3_client

DATA = chat_dataset(12)
BOUNDARY = "hone-hardening-b0undary"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def part(name: str, value: bytes, *, disposition_extra: str = "") -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{disposition_extra}\r\n\r\n'
    return head.encode() + value + b"\r\n"


def upload_body(filename_param: bytes, data: bytes = DATA, purpose: bytes = b"fine-tune") -> bytes:
    file_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '.encode()
        + filename_param
        + b"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    return part("purpose", purpose) + file_head + data + b"\r\n" + f"--{BOUNDARY}--\r\n".encode()


def stored_file_keys(server) -> set[str]:
    if server.backend == "postgres-s3":
        s3 = s3_client(server.env["AWS_ENDPOINT_URL"])
        listed = s3.list_objects_v2(Bucket="hone-tests", Prefix="blobs/files/").get("Contents", [])
        return {obj["Key"] for obj in listed}
    root = server.data_dir / "blobs" / "files"
    return {p.name for p in root.glob("*")} if root.exists() else set()


@pytest.fixture
def http(project):
    with project.http() as client:
        yield client


def file_count(http) -> int:
    return len(http.get("/v1/files").json()["data"])


@pytest.mark.parametrize(
    "name",
    [
        "données d'entraînement.jsonl",
        "训练数据.jsonl",
        '😀 emoji; "quoted".jsonl',
        "Ω≈ç√.jsonl",
        "100%25 sure.jsonl",
        "a\\b.jsonl",
    ],
)
def test_unicode_file_names_are_kept_as_sent_through_the_openai_sdk(client, name):
    created = client.files.create(file=(name, DATA), purpose="fine-tune")
    expected = name.replace("\\", "/").rsplit("/", 1)[-1]  # a Windows path keeps only its last segment
    assert created.filename == expected and created.status == "processed"
    assert client.files.retrieve(created.id).filename == expected
    assert expected in {f.filename for f in client.files.list()}


def test_rfc5987_filename_star_wins_and_raw_utf8_is_read_as_utf8(http):
    name = "résumé €.jsonl"
    star = f"filename=\"fallback.jsonl\"; filename*=UTF-8''{quote(name)}".encode()
    created = http.post("/v1/files", content=upload_body(star), headers=MULTIPART)
    assert created.status_code == 200, created.text
    assert created.json()["filename"] == name
    raw = http.post("/v1/files", content=upload_body(f'filename="{name}"'.encode()), headers=MULTIPART)
    assert raw.status_code == 200 and raw.json()["filename"] == name
    assert http.get(f"/v1/files/{raw.json()['id']}").json()["filename"] == name


@pytest.mark.parametrize(
    "filename_param, fragment",
    [
        (b'filename="nul\x00byte.jsonl"', "control character"),
        (b'filename="nul%00byte.jsonl"', "control character"),
        (b'filename="line%0Abreak.jsonl"', "control character"),
        (b"filename*=UTF-8''bell%07.jsonl", "control character"),
        (b'filename="del\x7f.jsonl"', "control character"),
        (b'filename="' + b"x" * 300 + b'.jsonl"', "the limit is 255"),
        ('filename="{}.jsonl"'.format("é" * 256).encode(), "the limit is 255"),
        (b'filename="\xff\xfe.jsonl"', "not valid UTF-8"),
        (b"filename*=UTF-8''%FF.jsonl", "not valid UTF-8"),
        (b"filename*=x-klingon''a.jsonl", "RFC 5987"),
    ],
)
def test_names_that_cannot_be_stored_are_400_and_leave_nothing(server, http, filename_param, fragment):
    before, objects = file_count(http), stored_file_keys(server)
    response = http.post("/v1/files", content=upload_body(filename_param), headers=MULTIPART)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("file", "invalid_filename") and fragment in error["message"]
    assert "\x00" not in response.text and len(response.content) < 2048
    assert file_count(http) == before and stored_file_keys(server) == objects


@pytest.mark.parametrize(
    "body, code, fragment",
    [
        (upload_body(b'filename="cut.jsonl"')[:-12], "incomplete_upload", "closing boundary"),
        (
            part("purpose", b"fine-tune") + part("file", DATA, disposition_extra='; filename="cut.jsonl"'),
            "incomplete_upload",
            "closing boundary",
        ),
        (
            part("purpose", b"fine-tune")
            + part("file", DATA, disposition_extra='; filename="a.jsonl"')
            + part("file", DATA, disposition_extra='; filename="b.jsonl"')
            + f"--{BOUNDARY}--\r\n".encode(),
            "invalid_value",
            "exactly one 'file'",
        ),
        (
            part("purpose", b"fine-tune")
            + part("purpose", b"fine-tune")
            + part("file", DATA, disposition_extra='; filename="a.jsonl"')
            + f"--{BOUNDARY}--\r\n".encode(),
            "invalid_value",
            "sent twice",
        ),
        (b"this is not multipart at all\r\n\r\n" * 4, "invalid_multipart", "not valid multipart"),
        (
            f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
            "invalid_multipart",
            "Content-Disposition",
        ),
        (b"", "incomplete_upload", "closing boundary"),
    ],
)
def test_broken_multipart_bodies_are_400_and_leave_nothing(server, http, body, code, fragment):
    before, objects = file_count(http), stored_file_keys(server)
    response = http.post("/v1/files", content=body, headers=MULTIPART)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"], error
    assert file_count(http) == before and stored_file_keys(server) == objects


def test_truncated_upload_streamed_in_chunks_stores_nothing(server, http):
    """A client that dies mid-upload: the bytes already streamed to storage are aborted with the request."""
    body = upload_body(b'filename="big.jsonl"', data=chat_dataset(4000))
    before, objects = file_count(http), stored_file_keys(server)

    def chunks():
        cut = len(body) - 100
        for start in range(0, cut, 64 * 1024):
            yield body[start : min(start + 64 * 1024, cut)]

    response = http.post("/v1/files", content=chunks(), headers=MULTIPART)
    assert response.status_code == 400 and response.json()["error"]["code"] == "incomplete_upload"
    assert file_count(http) == before and stored_file_keys(server) == objects


@pytest.fixture
def training_file(http):
    created = http.post("/v1/files", files={"file": ("train.jsonl", DATA)}, data={"purpose": "fine-tune"})
    return created.json()["id"]


def job_count(http) -> int:
    return len(http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"])


def post_json(http, path: str, raw: bytes, **headers) -> httpx.Response:
    return http.post(path, content=raw, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize(
    "template, param, code, fragment",
    [
        (
            '{"model": "hone-tiny", "training_file": "%s", "suffix": "a", "suffix": "b"}',
            "suffix",
            "duplicate_key",
            "Duplicate key 'suffix'",
        ),
        (
            '{"model": "hone-tiny", "training_file": "%s", "metadata": {"k": "1", "k": "2"}}',
            "k",
            "duplicate_key",
            "Duplicate key",
        ),
        (
            '{"model": "hone-tiny", "training_file": "%s", "suffix": "bad\\ud800"}',
            "suffix",
            "invalid_string",
            "surrogate",
        ),
        (
            '{"model": "hone-tiny", "training_file": "%s", "metadata": {"k": "\\udfff"}}',
            "metadata.k",
            "invalid_string",
            "surrogate",
        ),
        ('{"model": "hone-tiny", "training_file": "%s", "suffix": "nul\\u0000"}', "suffix", "invalid_string", "NUL"),
        (
            '{"model": "hone-tiny", "training_file": "%s", "metadata": {"k\\u0000": "v"}}',
            "metadata.k\\x00",
            "invalid_string",
            "NUL",
        ),
        (
            '{"model": "hone-tiny", "training_file": "%s", "hyperparameters": {"n_epochs": NaN}}',
            "hyperparameters.n_epochs",
            "invalid_value",
            "finite",
        ),
        ('{"model": "hone-tiny", "training_file": "%s", "seed": 1e999}', "seed", "invalid_value", "finite"),
        ('{"model": "hone-tiny", "training_file": "%s"', None, "invalid_json", "could not parse"),
    ],
)
def test_json_bodies_that_would_be_misread_are_400_and_create_nothing(
    http, training_file, template, param, code, fragment
):
    before = job_count(http)
    response = post_json(http, "/v1/fine_tuning/jobs", (template % training_file).encode())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code) and fragment in error["message"], error
    assert job_count(http) == before


def test_an_emoji_escaped_as_a_surrogate_pair_is_fine(http, training_file):
    raw = (
        '{"model": "hone-tiny", "training_file": "FILE", "metadata": {"mood": "\\ud83d\\ude00"}}'.replace(
            "FILE", training_file
        )
    ).encode()
    response = post_json(http, "/v1/fine_tuning/jobs", raw)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"mood": "😀"}
    http.post(f"/v1/fine_tuning/jobs/{response.json()['id']}/cancel")


def test_json_bodies_over_the_limit_are_413_before_being_parsed(http, training_file):
    before = job_count(http)
    padded = json.dumps(
        {
            "model": "hone-tiny",
            "training_file": training_file,
            "suffix": "x",
            "metadata": {"pad": "y" * 500},
            "ignored": "z" * (9 << 20),
        }
    ).encode()
    response = post_json(http, "/v1/fine_tuning/jobs", padded)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and str(8 << 20) in error["message"]
    # Without a Content-Length (chunked), the limit holds while the body streams in.
    streamed = http.post(
        "/v1/fine_tuning/jobs",
        content=(padded[i : i + 65536] for i in range(0, len(padded), 65536)),
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "request_too_large"
    gateway = post_json(http, "/v1/chat/completions", json.dumps({"model": "m", "x": "y" * (9 << 20)}).encode())
    assert gateway.status_code == 413
    assert job_count(http) == before


@pytest.mark.parametrize(
    "method, path, params",
    [
        ("GET", "/v1/files/file-abc%00def", None),
        ("GET", "/v1/fine_tuning/jobs/ftjob-%00", None),
        ("GET", "/v1/fine_tuning/jobs", {"after": "ftjob-\x00"}),
        ("GET", "/v1/models/ft:hone-tiny%00", None),
        ("DELETE", "/v1/files/file-%00", None),
    ],
)
def test_nul_in_ids_and_query_values_is_400_on_both_databases(http, method, path, params):
    response = http.request(method, path, params=params)
    assert response.status_code == 400, response.text
    assert "NUL" in response.json()["error"]["message"]


def test_errors_echo_a_short_escaped_excerpt_in_every_field(http, training_file):
    huge_key = "k" * (1 << 20)
    body = {"model": "hone-tiny", "training_file": training_file, "metadata": {huge_key: "v" * 600}}
    response = http.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert len(response.content) < 1024, len(response.content)
    assert error["param"].startswith("metadata.kkkk") and len(error["param"]) < 100
    # An id full of control characters and 6,000 characters long comes back short and escaped.
    long_id = "file-" + "\x1b[31m\x07" * 20 + "a" * 6000
    missing = http.get(f"/v1/files/{quote(long_id)}")
    assert missing.status_code == 404 and len(missing.content) < 1024
    text = missing.json()["error"]["message"]
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text and "…" in text
    purpose = http.post("/v1/files", files={"file": ("a.jsonl", DATA)}, data={"purpose": "p\x00" * 20_000})
    assert purpose.status_code == 400 and len(purpose.content) < 1024 and "\x00" not in purpose.text
    header = http.get("/v1/files", headers={"Idempotency-Key": "ok", "x-unused": "a" * 5000})
    assert header.status_code == 200


@pytest.mark.parametrize(
    "metadata, param",
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"k": "v" * 513}, "metadata.k"),
    ],
)
def test_metadata_keeps_openais_limits(http, training_file, metadata, param):
    response = http.post(
        "/v1/fine_tuning/jobs", json={"model": "hone-tiny", "training_file": training_file, "metadata": metadata}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_idempotency_keys_with_control_characters_are_400(http, training_file):
    response = http.post(
        "/v1/fine_tuning/jobs",
        json={"model": "hone-tiny", "training_file": training_file},
        headers={"Idempotency-Key": "key\twith\ttabs"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "Idempotency-Key"


@pytest.mark.parametrize("name", ["", "p" * 257])
def test_project_and_service_account_names_fit_their_columns(server, project, name):
    with server.admin() as admin:
        made = admin.post("/v1/organization/projects", json={"name": name})
        assert made.status_code == 400 and made.json()["error"]["param"] == "name", made.text
        account = admin.post(f"/v1/organization/projects/{project.project_id}/service_accounts", json={"name": name})
        assert account.status_code == 400 and account.json()["error"]["param"] == "name", account.text
