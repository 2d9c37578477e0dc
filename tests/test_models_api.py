"""Models API: base models from the registry, the project's tuned models, ids with ':' and '/'."""

from __future__ import annotations

import openai
import pytest
from sqlalchemy import create_engine, insert

from service.db.tables import TunedModel
from service.jobs import fine_tuned_model_name
from tests.support import chat_dataset


def add_tuned_model(server, project, client, base: str = "acme/tiny-chat") -> str:
    """Registers a tuned model row the way a finished job will; the trainer lands in a later issue."""
    f = client.files.create(file=("t.jsonl", chat_dataset(10)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=base, training_file=f.id, suffix="sfx")
    model_id = fine_tuned_model_name(base, "test-project", "sfx", job.id)
    assert model_id == f"ft:{base}:test-project:sfx:{job.id}"  # DESIGN.md's naming contract
    engine = create_engine(server.database_url)
    with engine.begin() as conn:
        conn.execute(
            insert(TunedModel).values(
                id=model_id,
                project_id=project.project_id,
                job_id=job.id,
                base_model=base,
                created_at=1700000000,
                storage_prefix=f"jobs/{job.id}/adapter/",
            )
        )
    engine.dispose()
    return model_id


def test_list_and_retrieve_base_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == ["acme/tiny-chat", "hone-tiny"]
    model = client.models.retrieve("acme/tiny-chat")  # the SDK sends '/' as %2F
    assert (model.id, model.object, model.owned_by) == ("acme/tiny-chat", "model", "hone")


def test_raw_slash_in_path(project):
    # openai v1 clients send '/' unencoded.
    with project.http() as http:
        assert http.get("/v1/models/acme/tiny-chat").json()["id"] == "acme/tiny-chat"


def test_tuned_model_retrieve_list_delete(server, project, client):
    model_id = add_tuned_model(server, project, client)
    assert model_id in [m.id for m in client.models.list()]
    model = client.models.retrieve(model_id)
    assert model.id == model_id and model.created == 1700000000
    with project.http() as http:  # unencoded form too
        assert http.get(f"/v1/models/{model_id}").json()["id"] == model_id

    # A tuned model can be the starting point of another job (tests/tuned_tickets/test_continuation.py continues one); this row has
    # no weights in storage, so continuing it is refused rather than silently started from the base.
    f = client.files.create(file=("more.jsonl", chat_dataset(10)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=model_id, training_file=f.id)
    assert err.value.param == "model" and "no longer in storage" in err.value.message

    deleted = client.models.delete(model_id)
    assert (deleted.id, deleted.deleted) == (model_id, True)
    assert model_id not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve(model_id)
    assert err.value.body["message"] == f"The model '{model_id}' does not exist"


def test_missing_and_base_model_delete(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("ft:hone-tiny:x:y:ftjob-nope")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.delete("ft:hone-tiny:x:y:ftjob-nope")
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.models.delete("hone-tiny")
    assert err.value.code == "model_not_deletable"
