"""Cross-project isolation: another project's key gets 404 for every resource and verb, never the object."""

from __future__ import annotations

import openai
import pytest

from tests.support import chat_dataset
from tests.test_models_api import add_tuned_model


@pytest.fixture
def owned(server, project, client):
    f = client.files.create(file=("t.jsonl", chat_dataset(10)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=f.id)
    model_id = add_tuned_model(server, project, client)
    return {"file": f.id, "job": job.id, "model": model_id}


def test_other_project_sees_nothing(owned, client, other_project):
    other = other_project.openai()
    calls = [
        lambda: other.files.retrieve(owned["file"]),
        lambda: other.files.content(owned["file"]),
        lambda: other.files.delete(owned["file"]),
        lambda: other.fine_tuning.jobs.retrieve(owned["job"]),
        lambda: other.fine_tuning.jobs.cancel(owned["job"]),
        lambda: other.fine_tuning.jobs.pause(owned["job"]),
        lambda: other.fine_tuning.jobs.resume(owned["job"]),
        lambda: other.fine_tuning.jobs.list_events(owned["job"]),
        lambda: other.fine_tuning.jobs.checkpoints.list(owned["job"]),
        lambda: other.models.retrieve(owned["model"]),
        lambda: other.models.delete(owned["model"]),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.status_code == 404 and set(err.value.body) == {"message", "type", "param", "code"}

    assert other.files.list().data == []
    assert other.fine_tuning.jobs.list().data == []
    assert owned["model"] not in [m.id for m in other.models.list()]
    # Using another project's file in a job, or its cursor in a list, reveals nothing either.
    with pytest.raises(openai.BadRequestError) as err:
        other.fine_tuning.jobs.create(model="hone-tiny", training_file=owned["file"])
    assert err.value.param == "training_file" and "no such file in this project" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        other.fine_tuning.jobs.create(model=owned["model"], training_file=owned["file"])
    assert err.value.param == "model"
    with pytest.raises(openai.BadRequestError):
        other.fine_tuning.jobs.list(after=owned["job"])
    with pytest.raises(openai.BadRequestError):
        other.files.list(after=owned["file"])

    # The owner still has everything, untouched.
    assert client.files.retrieve(owned["file"]).id == owned["file"]
    assert client.fine_tuning.jobs.retrieve(owned["job"]).status in ("validating_files", "queued")
    assert client.models.retrieve(owned["model"]).id == owned["model"]


def test_auth_errors(server, project):
    bad = openai.OpenAI(base_url=server.base_url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.files.list()
    assert err.value.code == "invalid_api_key" and err.value.type == "invalid_request_error"
    import httpx

    resp = httpx.get(server.base_url + "/v1/models")
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "missing_api_key"
    admin = openai.OpenAI(base_url=server.base_url + "/v1", api_key=server.admin_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        admin.files.list()
    with project.http() as http:
        resp = http.get("/v1/organization/projects")
    assert resp.status_code == 401
