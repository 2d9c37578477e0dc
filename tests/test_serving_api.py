"""The serving API's edges that need no engine: serve-compat checks at job creation, endpoint lookups,
and the gateway's answers for models that are not served. Both backends."""

from __future__ import annotations

import openai
import pytest

from tests.support import chat_dataset


@pytest.fixture
def training_file(client):
    return client.files.create(file=("train.jsonl", chat_dataset(12)), purpose="fine-tune")


def _create(client, training_file, **hyperparameters):
    return client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training_file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )


@pytest.mark.parametrize(
    "hyperparameters, param, says",
    [
        ({"lora_rank": 128}, "method.supervised.hyperparameters.lora_rank", "max_lora_rank 64"),
        (
            {"lora_target_modules": ["q_proj", "lm_head"]},
            "method.supervised.hyperparameters.lora_target_modules",
            "embeddings or output head",
        ),
        (
            {"lora_target_modules": ["q_proj", "attn.c_attn"]},
            "method.supervised.hyperparameters.lora_target_modules",
            "cannot be served by vLLM",
        ),
    ],
)
def test_unservable_adapters_are_refused_with_what_to_change(client, training_file, hyperparameters, param, says):
    with pytest.raises(openai.BadRequestError) as caught:
        _create(client, training_file, **hyperparameters)
    error = caught.value.body
    assert error["code"] == "unservable_adapter" and error["param"] == param
    assert says in error["message"]


def test_servable_adapters_and_full_tuning_are_accepted(client, training_file):
    ok = _create(client, training_file, lora_rank=64, lora_target_modules=["q_proj", "down_proj"])
    full = _create(client, training_file, tuning_mode="full", lora_rank=128)  # full weights are not hot-loaded
    assert ok.status == full.status == "validating_files"
    assert ok.model_extra["auto_deploy"] is True
    off = client.fine_tuning.jobs.create(
        model="hone-tiny", training_file=training_file.id, extra_body={"auto_deploy": False}
    )
    assert off.model_extra["auto_deploy"] is False
    for job in (ok, full, off):
        client.fine_tuning.jobs.cancel(job.id)


def test_endpoint_lookups(project, server):
    with project.http() as http:
        unknown_model = http.post("/v1/endpoints", json={"model": "ft:hone-tiny:x:y:ftjob-nope"})
        missing = http.post("/v1/endpoints", json={})
        unknown_id = http.get("/v1/endpoints/ep-nope")
        empty = http.get("/v1/endpoints").json()
        not_served = http.post(
            "/v1/chat/completions", json={"model": "hone-tiny", "messages": [{"role": "user", "content": "hi"}]}
        )
        not_json = http.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert unknown_model.status_code == 404 and unknown_model.json()["error"]["code"] == "model_not_found"
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    assert unknown_id.status_code == 404
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    assert not_served.status_code == 404 and not_served.json()["error"]["code"] == "model_not_deployed"
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
