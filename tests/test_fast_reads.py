"""List and retrieve fine-tuning jobs are served by plain Starlette routes (service/api/fast_reads.py) ahead of the
FastAPI ones, which stay for the OpenAPI document: the same auth, checks, errors and bodies, on both backends.
(tests/test_jobs_api.py exercises the same two reads through the openai SDK.)"""

from __future__ import annotations

import pytest

from service.app import create_app
from service.settings import Settings
from tests.support import chat_dataset


@pytest.fixture
def http(project):
    with project.http() as client:
        yield client


def test_the_fast_routes_answer_and_the_document_keeps_the_fastapi_ones(tmp_path):
    app = create_app(Settings(data_dir=tmp_path))
    paths = {(getattr(r, "path", None), type(r).__name__) for r in app.router.routes}
    assert ("/v1/fine_tuning/jobs", "PlainRoute") in paths and ("/v1/fine_tuning/jobs/{job_id}", "PlainRoute") in paths
    assert app.router.routes[2].path == "/v1/fine_tuning/jobs"  # right after the gateway's two
    document = app.openapi()["paths"]
    assert "get" in document["/v1/fine_tuning/jobs"] and "get" in document["/v1/fine_tuning/jobs/{job_id}"]


def test_list_and_retrieve_as_the_api_defines_them(http, other_project):
    file_id = http.post("/v1/files", files={"file": ("t.jsonl", chat_dataset(12))},
                        data={"purpose": "fine-tune"}).json()["id"]
    made = [http.post("/v1/fine_tuning/jobs", json={"model": "hone-tiny", "training_file": file_id,
                                                    "metadata": {"n": str(i)}}).json() for i in range(3)]
    listed = http.get("/v1/fine_tuning/jobs", params={"limit": 2})
    assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
    page = listed.json()
    assert [j["id"] for j in page["data"]] == [made[2]["id"], made[1]["id"]] and page["has_more"] is True
    assert [j["id"] for j in http.get("/v1/fine_tuning/jobs", params={"after": made[1]["id"], "limit": 5})
            .json()["data"]][:1] == [made[0]["id"]]
    assert [j["id"] for j in http.get("/v1/fine_tuning/jobs", params={"metadata[n]": "1"}).json()["data"]] == \
        [made[1]["id"]]
    one = http.get(f"/v1/fine_tuning/jobs/{made[0]['id']}").json()
    assert one == {**made[0], "status": one["status"]}  # created and retrieved alike (it may have moved on)
    # Another project's job does not exist for this one; nor does an unknown id.
    assert other_project.http().get(f"/v1/fine_tuning/jobs/{made[0]['id']}").status_code == 404
    missing = http.get("/v1/fine_tuning/jobs/ftjob-nope").json()["error"]
    assert (missing["code"], missing["param"]) == ("not_found", "fine_tuning_job_id")


@pytest.mark.parametrize("params, status, param, fragment", [
    ({"limit": "abc"}, 400, "limit", "valid integer"),
    ({"limit": "0"}, 400, "limit", "between 1 and 100"),
    ({"limit": "101"}, 400, "limit", "between 1 and 100"),
    ({"after": "ftjob-unknown"}, 400, "after", "no object with id"),
    ({"after": "ftjob-\x00"}, 400, None, "NUL"),
])
def test_bad_queries_are_400_naming_the_parameter(http, params, status, param, fragment):
    response = http.get("/v1/fine_tuning/jobs", params=params)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_auth_and_methods_as_before(server, http):
    import httpx

    assert httpx.get(server.base_url + "/v1/fine_tuning/jobs").status_code == 401
    bad = httpx.get(server.base_url + "/v1/fine_tuning/jobs/x", headers={"Authorization": "Bearer sk-wrong"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    head = http.head("/v1/fine_tuning/jobs")
    assert head.status_code == 405 and set(head.headers["allow"].split(", ")) == {"GET", "POST"}
    put = http.put("/v1/fine_tuning/jobs/ftjob-x")
    assert put.status_code == 405 and put.headers["allow"] == "GET"
