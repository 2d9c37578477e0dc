"""Sealed tenants: a project's Vertex dataset URIs read only under the buckets and prefixes an admin granted it.

One server (SQLite, Hone's blobs on moto's S3) and two projects: A is granted s3://data/a/, B nothing. Objects
outside a project's grants answer one 404 whether or not they exist, and are never opened."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.support import HoneServer, chat_dataset, jsonl

SECRET = "the-launch-codes-are-0000"  # in an invalid object of A's prefix: read, it would be echoed back
OWN = "hone-grants"  # Hone's own storage bucket: s3://hone-grants/blobs


@pytest.fixture(scope="module")
def sealed(tmp_path_factory, moto):
    s3 = moto.client()
    s3.create_bucket(Bucket="data")
    for key, body in {
        "a/train.jsonl": chat_dataset(),
        "ab/train.jsonl": chat_dataset(),
        "g/train.jsonl": chat_dataset(),
        "a/secret.jsonl": jsonl([{"messages": [{"role": "user", "content": SECRET}]}]),
    }.items():
        s3.put_object(Bucket="data", Key=key, Body=body)
    env = {
        **moto.env(),
        "HONE_STORAGE_URL": f"s3://{OWN}/blobs",
        "HONE_LOCAL_SLOTS": "0",
        "HONE_GCS_BUCKET_MAP": json.dumps({"gdata": "data/g"}),
    }
    server = HoneServer(tmp_path_factory.mktemp("grants"), env)
    try:
        a, b = server.new_project("team a"), server.new_project("team b")
        with server.admin() as admin:
            grant = admin.post(f"/v1/organization/projects/{a.project_id}/dataset_grants", json={"uri": "s3://data/a"})
            assert grant.status_code == 200, grant.text
        yield {"server": server, "a": a, "b": b, "grant": grant.json()}
    finally:
        server.stop()


def _tune(project, uri: str, validation: str | None = None) -> httpx.Response:
    spec = {"trainingDatasetUri": uri, **({"validationDatasetUri": validation} if validation else {})}
    with project.http() as http:
        return http.post(
            f"/v1/projects/{project.project_id}/locations/us-central1/tuningJobs",
            json={"baseModel": "hone-tiny", "supervisedTuningSpec": spec},
        )


def _files(project) -> list[dict]:
    with project.http() as http:
        return http.get("/v1/files").json()["data"]


def _sealed_404(reply: httpx.Response, uri: str) -> str:
    """The one answer for an object outside the grants; returned with the URI taken out, to compare."""
    assert reply.status_code == 404, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["status"]) == (404, "NOT_FOUND")
    assert [d["reason"] for d in error["details"]] == ["DATASET_NOT_FOUND"]
    assert uri in error["message"] and SECRET not in reply.text
    return reply.text.replace(uri, "<uri>")


def test_granted_prefix_is_imported_and_trained_on(sealed):
    a = sealed["a"]
    assert sealed["grant"]["uri"] == "s3://data/a/"  # normalised to a prefix, matched on segment boundaries
    reply = _tune(a, "s3://data/a/train.jsonl")
    assert reply.status_code == 200, reply.text
    job = reply.json()
    assert job["supervisedTuningSpec"]["trainingDatasetUri"] == "s3://data/a/train.jsonl"
    imported = [f for f in _files(a) if f["filename"] == "train.jsonl"]
    assert imported and imported[0]["dataset"]["examples"] == 12
    # A granted object's validation errors may quote it: the project may read it.
    bad = _tune(a, "s3://data/a/secret.jsonl")
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_ungranted_objects_answer_one_404_whether_or_not_they_exist(sealed):
    b = sealed["b"]
    files_before = _files(b)  # newest first
    existing = _sealed_404(_tune(b, "s3://data/a/secret.jsonl"), "s3://data/a/secret.jsonl")
    missing = _sealed_404(_tune(b, "s3://data/a/nothing-here.jsonl"), "s3://data/a/nothing-here.jsonl")
    no_bucket = _sealed_404(_tune(b, "s3://no-such-bucket/x.jsonl"), "s3://no-such-bucket/x.jsonl")
    assert existing == missing == no_bucket
    # The validation dataset is sealed the same way, naming its own field.
    with b.http() as http:
        own = http.post(
            "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("own.jsonl", chat_dataset())}
        ).json()
    valid = _tune(b, own["id"], validation="s3://data/a/secret.jsonl")
    assert valid.status_code == 404 and "validationDatasetUri" in valid.json()["error"]["message"]
    assert _files(b) == [own, *files_before]  # nothing imported


def test_prefix_boundaries_schemes_and_traversal(sealed):
    a = sealed["a"]
    sibling = _sealed_404(_tune(a, "s3://data/ab/train.jsonl"), "s3://data/ab/train.jsonl")  # s3://data/a/ only
    other_scheme = _sealed_404(_tune(a, "gs://data/a/train.jsonl"), "gs://data/a/train.jsonl")  # s3 grant only
    assert sibling == other_scheme
    for uri in (
        "s3://data/a/../ab/train.jsonl",
        "s3://data/a//train.jsonl",
        "s3://data/a/%2e%2e/ab/train.jsonl",
        "s3://data:9000/a/train.jsonl",
        "s3://data/a/./train.jsonl",
    ):
        reply = _tune(a, uri)
        assert reply.status_code == 400, (uri, reply.text)
        assert [d["reason"] for d in reply.json()["error"]["details"] if "reason" in d] == ["INVALID_DATASET_URI"]


def test_gs_uris_through_the_bucket_map_honour_grants(sealed):
    a, b, server = sealed["a"], sealed["b"], sealed["server"]
    uri = "gs://gdata/train.jsonl"  # read as s3://data/g/train.jsonl
    with server.admin() as admin:
        s3_grant = admin.post(
            f"/v1/organization/projects/{a.project_id}/dataset_grants", json={"uri": "s3://data/g/"}
        ).json()
        _sealed_404(_tune(a, uri), uri)  # the S3 object it maps to is granted, the gs:// URI is not
        admin.delete(f"/v1/organization/projects/{a.project_id}/dataset_grants/{s3_grant['id']}")
        gs_grant = admin.post(
            f"/v1/organization/projects/{a.project_id}/dataset_grants", json={"uri": "gs://gdata/"}
        ).json()
        assert gs_grant["uri"] == "gs://gdata/"
        assert _tune(a, uri).status_code == 200
        _sealed_404(_tune(b, uri), uri)
        _sealed_404(_tune(a, "s3://data/g/train.jsonl"), "s3://data/g/train.jsonl")  # and not the reverse
        admin.delete(f"/v1/organization/projects/{a.project_id}/dataset_grants/{gs_grant['id']}")
    _sealed_404(_tune(a, uri), uri)  # a removed grant reads nothing more


def _image_line(url: str) -> dict:
    parts = [{"type": "text", "text": "What is drawn?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "red circle"}]}


def _upload(project, name: str, body: bytes, purpose: str = "fine-tune") -> dict:
    with project.http() as http:
        reply = http.post("/v1/files", files={"file": (name, body)}, data={"purpose": purpose})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_images_named_by_file_id_or_bucket_uri_are_checked_copied_in_and_sealed(sealed, moto):
    """A fine-tune file may name its images by reference: a vision file of its own project, or an object under its
    grants. Each is read and checked at upload and copied beside the file; the rest read as missing, alike."""
    from examples import shapes

    a, b = sealed["a"], sealed["b"]
    image = shapes.png(shapes.examples(1, 3)[0][0])
    s3 = moto.client()
    s3.put_object(Bucket="data", Key="a/img/0.png", Body=image)
    s3.put_object(Bucket="data", Key="a/img/notes.png", Body=b"not an image at all")
    s3.put_object(Bucket="data", Key="ab/img/0.png", Body=image)  # outside A's grant (s3://data/a/)
    mine, theirs = _upload(a, "0.png", image, "vision")["id"], _upload(b, "0.png", image, "vision")["id"]
    batch = _upload(a, "b.jsonl", jsonl([{"x": 1}]), "batch")["id"]
    lines = [
        _image_line("s3://data/a/img/0.png"),
        _image_line(mine),
        _image_line(theirs),  # 3: another project's file
        _image_line("s3://data/ab/img/0.png"),  # 4: exists, outside the grant
        _image_line("s3://data/a/img/none.png"),  # 5: inside the grant, missing
        _image_line("s3://data/a/img/notes.png"),  # 6: not an image
        _image_line(batch),  # 7: a file of another purpose
    ]
    bad = _upload(a, "bad.jsonl", jsonl(lines))
    assert bad["status"] == "error"
    errors = {e["line"]: e for e in bad["dataset"]["errors"]}
    assert sorted(errors) == [3, 4, 5, 6, 7], errors
    assert {errors[n]["code"] for n in (3, 4, 5, 7)} == {"image_not_found"}
    assert errors[6]["code"] == "invalid_image_format"
    assert all(errors[n]["field"] == "messages[0].content[1].image_url.url" for n in errors)
    # existing elsewhere or missing: the same words, the URI aside
    assert errors[4]["message"].replace("ab/img/0", "X") == errors[5]["message"].replace("a/img/none", "X")
    assert SECRET not in json.dumps(bad)

    good = _upload(a, "good.jsonl", jsonl(lines[:2] * 5))
    assert good["status"] == "processed", good
    assert (good["dataset"]["images"], good["dataset"]["examples"]) == (10, 10)
    copies = s3.list_objects_v2(Bucket=OWN, Prefix=f"blobs/file-images/{good['id']}/").get("Contents", [])
    assert len(copies) == 2 and {s3.get_object(Bucket=OWN, Key=c["Key"])["Body"].read() for c in copies} == {image}
    with a.http() as http:
        created = http.post("/v1/fine_tuning/jobs", json={"model": "hone-tiny-vision", "training_file": good["id"]})
        assert created.status_code == 200, created.text
        http.post(f"/v1/fine_tuning/jobs/{created.json()['id']}/cancel")
        assert http.delete(f"/v1/files/{good['id']}").status_code == 200
    assert not s3.list_objects_v2(Bucket=OWN, Prefix=f"blobs/file-images/{good['id']}/").get("Contents")


def test_admin_api_for_grants(sealed):
    a, b, server = sealed["a"], sealed["b"], sealed["server"]
    base = f"/v1/organization/projects/{b.project_id}/dataset_grants"
    with server.admin() as admin:
        grant = admin.post(base, json={"uri": "s3://data/b/"}).json()
        assert grant["object"] == "organization.project.dataset_grant" and grant["id"].startswith("dsgrant_")
        assert grant["project_id"] == b.project_id and isinstance(grant["created_at"], int)
        assert admin.post(base, json={"uri": "s3://data/b"}).json()["id"] == grant["id"]  # the same grant
        listed = admin.get(base).json()
        assert [g["id"] for g in listed["data"]] == [grant["id"]] and listed["has_more"] is False
        # Another project's grant is not reachable through this project's path.
        a_grant = sealed["grant"]["id"]
        assert admin.delete(f"{base}/{a_grant}").status_code == 404
        assert admin.get(f"/v1/organization/projects/{a.project_id}/dataset_grants").json()["data"][0]["id"] == a_grant
        for uri, code in (
            ("s3://data/b/../a/", "invalid_dataset_uri"),
            ("https://data/b/", "invalid_dataset_uri"),
            (f"s3://{OWN}/", "own_storage"),
            (f"s3://{OWN}/blobs/files/", "own_storage"),
            (f"gs://{OWN}/blobs/", "own_storage"),
        ):  # unmapped: the S3 bucket of the same name
            reply = admin.post(base, json={"uri": uri})
            assert reply.status_code == 400 and reply.json()["error"]["code"] == code, (uri, reply.text)
            assert reply.json()["error"]["param"] == "uri"
        assert admin.post(base, json={"uri": "s3://data/b/", "extra": 1}).status_code == 400
        assert (
            admin.post(
                "/v1/organization/projects/proj_missing/dataset_grants", json={"uri": "s3://data/b/"}
            ).status_code
            == 404
        )
        deleted = admin.delete(f"{base}/{grant['id']}").json()
        assert deleted == {"object": "organization.project.dataset_grant.deleted", "id": grant["id"], "deleted": True}
        assert admin.delete(f"{base}/{grant['id']}").status_code == 404
        assert admin.get(base).json()["data"] == []
    # Admin only: a project's own key cannot grant itself anything.
    with a.http() as http:
        reply = http.post(f"/v1/organization/projects/{a.project_id}/dataset_grants", json={"uri": "s3://data/"})
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert http.get(f"/v1/organization/projects/{a.project_id}/dataset_grants").status_code == 401
    assert httpx.get(server.base_url + base).status_code == 401


def test_cli_grants(sealed):
    server, b = sealed["server"], sealed["b"]
    env = {"HONE_BASE_URL": server.base_url, "HONE_ADMIN_API_KEY": server.admin_key, "PATH": "/usr/bin:/bin"}

    def hone(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hone", "projects", "grants", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = hone("add", b.project_id, "s3://data/cli/")
    assert added.returncode == 0, added.stderr
    grant_id = added.stdout.strip()
    assert grant_id.startswith("dsgrant_")
    listed = json.loads(hone("list", b.project_id, "--json").stdout)
    assert [(g["id"], g["uri"]) for g in listed] == [(grant_id, "s3://data/cli/")]
    assert "s3://data/cli/" in hone("list", b.project_id).stdout
    refused = hone("add", b.project_id, f"s3://{OWN}/")
    assert refused.returncode == 1 and "own storage" in refused.stderr
    assert hone("remove", b.project_id, grant_id).returncode == 0
    assert json.loads(hone("list", b.project_id, "--json").stdout) == []
