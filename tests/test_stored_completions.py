"""Stored completions, as the openai SDK drives them: `store: true` on a gateway chat completion keeps it per
project (streamed ones too), `client.chat.completions.list / retrieve / messages.list / update / delete` read and
change it, and Hone's export turns a filtered set into a fine-tune file. The model answering is hone-tiny's base
endpoint on the FAKE engine (tests/fake_engine, which answers "answer base"): what is tested is what the gateway
keeps, not a model."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support import FAKE_ENGINE_PYTHON, HoneServer, wait_endpoint, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HoneServer(tmp_path_factory.mktemp("stored"), {"HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def project(server):
    project = server.new_project("storing")
    with project.http() as http:
        assert http.post("/v1/endpoints", json={"model": "hone-tiny"}).status_code == 200
        assert wait_endpoint(http, "hone-tiny")["state"] == "ready"
    return project


def ask(client, text: str, **extra):
    return client.chat.completions.create(model="hone-tiny", messages=[{"role": "user", "content": text}], **extra)


def test_stored_completions_are_kept_read_changed_and_deleted(project, server):
    client = project.openai()
    plain = ask(client, "not kept")
    kept = ask(client, "kept 1", store=True, metadata={"topic": "billing"}, temperature=0)
    other = ask(client, "kept 2", store=True, metadata={"topic": "sales"})
    stream = ask(client, "kept 3", store=True, stream=True, metadata={"topic": "billing"})
    streamed_id = None
    text = ""
    for chunk in stream:
        streamed_id = chunk.id
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == "answer base"
    # A streamed completion is kept once its stream has ended, after its last chunk went out (as OpenAI keeps it
    # asynchronously too): the client may read the end before the gateway wrote it.
    wait_for(lambda: len(client.chat.completions.list().data) == 3, 10, 0.05, "the streamed completion kept")
    listed = client.chat.completions.list()
    assert [c.id for c in listed.data] == [kept.id, other.id, streamed_id]  # oldest first, as OpenAI's default
    assert plain.id not in [c.id for c in listed.data]
    got = client.chat.completions.retrieve(kept.id)
    assert got.choices[0].message.content == "answer base" and got.metadata == {"topic": "billing"}
    assert got.model_extra["temperature"] == 0
    streamed = client.chat.completions.retrieve(streamed_id)
    assert streamed.choices[0].message.content == "answer base" and streamed.choices[0].finish_reason == "stop"
    billing = client.chat.completions.list(metadata={"topic": "billing"}, order="desc")
    assert [c.id for c in billing.data] == [streamed_id, kept.id]
    page = client.chat.completions.list(limit=1)
    assert [c.id for c in page.data] == [kept.id] and page.has_more
    messages = client.chat.completions.messages.list(kept.id)
    assert [(m.id, m.role, m.content) for m in messages.data] == [(f"{kept.id}-0", "user", "kept 1")]
    updated = client.chat.completions.update(kept.id, metadata={"topic": "refunds"})
    assert updated.metadata == {"topic": "refunds"}
    assert client.chat.completions.list(metadata={"topic": "billing"}).data[0].id == streamed_id
    deleted = client.chat.completions.delete(other.id)
    assert deleted.deleted and deleted.id == other.id
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(other.id)
    stranger = server.new_project("stranger").openai()  # another project's completions do not exist for it
    assert stranger.chat.completions.list().data == []
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.delete(kept.id)


def test_store_fields_are_checked(project):
    client = project.openai()
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "x", metadata={"a": "b"})  # metadata without store would be dropped: refused
    assert err.value.param == "metadata"
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "x", store=True, metadata={"k" * 65: "v"})
    assert err.value.param.startswith("metadata")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.list(order="sideways")
    assert err.value.param == "order"


def test_stored_completions_export_to_a_fine_tune_file(project):
    client = project.openai()
    ids = [ask(client, f"export {i}", store=True, metadata={"batch": "export"}).id for i in range(10)]
    with project.http() as http:
        made = http.post("/v1/chat/completions/export", json={"metadata": {"batch": "export"}, "limit": 10})
        assert made.status_code == 200, made.text
        file = made.json()
        assert (file["purpose"], file["status"]) == ("fine-tune", "processed")
        none = http.post("/v1/chat/completions/export", json={"metadata": {"batch": "nothing"}})
        assert none.status_code == 400 and none.json()["error"]["code"] == "invalid_filter"
    content = client.files.content(file["id"]).text
    lines = [json.loads(line) for line in content.splitlines()]
    assert len(lines) == 10 and len(ids) == 10
    assert lines[0]["messages"] == [
        {"role": "user", "content": "export 0"},
        {"role": "assistant", "content": "answer base"},
    ]
    job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=file["id"])  # ready to train on
    assert job.status == "validating_files"
    client.fine_tuning.jobs.cancel(job.id)
