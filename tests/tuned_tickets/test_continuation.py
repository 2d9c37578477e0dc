"""Continuing from a tuned model: `model: "ft:..."` (or a checkpoint's name, or Vertex's preTunedModel) trains
from that model's weights, with its adapter's shape, and publishes one adapter over the plain base.

Every test continues the package's SFT model (tests/tuned_tickets/conftest.py: hone-tiny on the support tickets,
PostgreSQL and S3, the built-in engine). The proof that the parent's weights are loaded is a job with a
tiny learning rate: continued from the SFT model it keeps the SFT model's accuracy, from the base it knows
nothing. And the usual recipe, SFT then DPO on the SFT model, serves with at least the SFT model's accuracy."""

from __future__ import annotations

import base64
import csv
import io
import os
import random
import signal

import openai
import pytest
from google.genai import errors, types

from examples.support_tickets import LABELS
from tests.support import all_events, trainer_pids, wait_endpoint, wait_job, wait_past_step
from tests.test_vertex_api import LOCATION, genai_client
from tests.tuned_tickets import label_accuracy, upload

TINY_LR = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1e-4}


def _job(
    client,
    model: str,
    training_file: str,
    hyperparameters: dict,
    *,
    method: str = "supervised",
    validation_file: str | None = None,
    deploy: bool = False,
):
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        seed=1,
        method={"type": method, method: {"hyperparameters": hyperparameters}},
        extra_body={"auto_deploy": deploy},
    )


def _succeeded(client, job_id: str, timeout: float = 900):
    return wait_job(client, job_id, lambda j: j.status == "succeeded", timeout=timeout)


def _final_metrics(client, job_id: str) -> dict:
    return [e.data for e in all_events(client, job_id) if e.type == "metrics"][-1]


@pytest.fixture
def sft(tuned_model):
    """The package's tuned model (tests/tuned_tickets/conftest.py): the parent every test continues."""
    return tuned_model


def test_shape_changes_are_400s_naming_the_field_and_other_projects_models_are_missing(sft):
    client, model, train = sft["client"], sft["job"].fine_tuned_model, sft["files"]["train"]
    for change, field in (
        ({"lora_rank": 8}, "lora_rank"),
        ({"lora_target_modules": ["q_proj", "v_proj"]}, "lora_target_modules"),
        ({"tuning_mode": "full"}, "tuning_mode"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            _job(client, model, train, {**TINY_LR, **change})
        error = refused.value.body
        assert error["param"] == f"method.supervised.hyperparameters.{field}", error
        assert "an adapter cannot change shape" in error["message"]

    # Another project's tuned model is answered exactly like one that does not exist.
    other = sft["other"].openai()
    other_file = upload(other, sft["train"][:20], "train.jsonl")
    missing = model.rsplit(":", 1)[0] + ":ftjob-doesnotexist"
    answers = []
    for name in (model, missing):
        with pytest.raises(openai.BadRequestError) as refused:
            _job(other, name, other_file, TINY_LR)
        answers.append(refused.value.body)
    assert [(a["code"], a["param"]) for a in answers] == [("model_not_available", "model")] * 2
    assert answers[0]["message"].replace(model, "X") == answers[1]["message"].replace(missing, "X")

    # Unchanged shape (given or left out) is accepted; the parent's shape is written into the job.
    same = _job(client, model, train, {**TINY_LR, "lora_rank": 16})
    hp = same.to_dict()["method"]["supervised"]["hyperparameters"]
    assert same.model == model and hp["lora_rank"] == 16 and hp["tuning_mode"] == "lora"
    assert sorted(hp["lora_target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert any(
        e.message == f"Continuing from {model}: training starts from its weights" for e in all_events(client, same.id)
    )
    client.fine_tuning.jobs.cancel(same.id)


def test_a_tiny_learning_rate_keeps_the_parents_accuracy_where_the_base_knows_nothing(sft):
    client, parent = sft["client"], sft["job"]
    train, valid = sft["files"]["tiny_lr"], sft["files"]["valid"]
    continued = _job(client, parent.fine_tuned_model, train, TINY_LR, validation_file=valid, deploy=True)
    from_base = _job(client, "hone-tiny", train, TINY_LR, validation_file=valid)
    continued, from_base = _succeeded(client, continued.id), _succeeded(client, from_base.id)
    sft_tokens = _final_metrics(client, parent.id)["full_valid_mean_token_accuracy"]
    kept = _final_metrics(client, continued.id)["full_valid_mean_token_accuracy"]
    untrained = _final_metrics(client, from_base.id)["full_valid_mean_token_accuracy"]
    # The continued model is an adapter over the root base, named like any job's model.
    assert continued.model == parent.fine_tuned_model and continued.fine_tuned_model.startswith("ft:hone-tiny:")
    with sft["project"].http() as http:
        assert wait_endpoint(http, continued.fine_tuned_model)["state"] == "ready"
    labels = label_accuracy(client, continued.fine_tuned_model, sft["held_out"])
    print(
        f"held-out token accuracy: SFT {sft_tokens:.1%}, continued at lr x1e-4 {kept:.1%}, same job from the "
        f"base {untrained:.1%}; labels through the gateway: SFT {sft['accuracy']:.1%}, continued {labels:.1%}"
    )
    assert kept >= sft_tokens - 0.02 and kept >= 0.9
    assert untrained < 0.3
    assert labels >= sft["accuracy"] - 0.02 and labels >= 0.9


def test_a_checkpoint_is_continued_by_its_name(sft):
    client, parent = sft["client"], sft["job"]
    checkpoints = sorted(client.fine_tuning.jobs.checkpoints.list(parent.id), key=lambda c: c.step_number)
    last = checkpoints[-1]
    job = _job(
        client,
        last.fine_tuned_model_checkpoint,
        sft["files"]["tiny_lr"],
        TINY_LR,
        validation_file=sft["files"]["valid"],
    )
    assert job.model == last.fine_tuned_model_checkpoint
    done = _succeeded(client, job.id)
    assert done.fine_tuned_model.startswith("ft:hone-tiny:")
    assert _final_metrics(client, job.id)["full_valid_mean_token_accuracy"] >= 0.9


def _preference_pairs(rows: list[dict], seed: int = 3) -> list[dict]:
    """Chosen: the ticket's label; rejected: another label."""
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        right = row["messages"][-1]["content"]
        wrong = rng.choice([label for label in LABELS if label != right])
        pairs.append(
            {
                "input": {"messages": row["messages"][:-1]},
                "preferred_output": [{"role": "assistant", "content": right}],
                "non_preferred_output": [{"role": "assistant", "content": wrong}],
            }
        )
    return pairs


def test_dpo_on_the_sft_model_serves_with_at_least_its_accuracy(sft):
    client, parent = sft["client"], sft["job"]
    pairs = upload(client, _preference_pairs(sft["train"]), "pairs.jsonl")
    # DPO wants a far smaller step than SFT: Adam moves the adapter by about the learning rate whatever beta is, and
    # the DPO objective alone does not hold the rest of the distribution in place (at x0.5 the model forgets to spell).
    job = _job(
        client,
        parent.fine_tuned_model,
        pairs,
        {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 0.02, "beta": 0.1},
        method="dpo",
        deploy=True,
    )
    done = _succeeded(client, job.id)
    assert done.model == parent.fine_tuned_model and done.method.type == "dpo"
    final = _final_metrics(client, job.id)
    with sft["project"].http() as http:
        endpoint = wait_endpoint(http, done.fine_tuned_model)
    assert endpoint["state"] == "ready", endpoint["error"]  # the parity gate passed: it still stops after the label
    accuracy = label_accuracy(client, done.fine_tuned_model, sft["held_out"])
    print(
        f"held-out label accuracy: SFT {sft['accuracy']:.1%}, DPO on the SFT model {accuracy:.1%} "
        f"(last step: DPO loss {final['train_loss']:.3f}, reward margin {final['train_reward_margin']:.3f})"
    )
    assert accuracy >= sft["accuracy"]
    assert final["train_reward_margin"] > 0  # the preferred labels did gain on the others


def test_a_killed_continued_dpo_job_resumes_exactly_from_its_own_checkpoint(sft):
    """After a crash the job's own checkpoint wins over the parent's weights, and the reference log-probabilities
    (computed again from the parent) are the same: the replayed steps' losses equal the first attempt's."""
    client, per_epoch = sft["client"], 40
    pairs = upload(client, _preference_pairs(sft["train"][:per_epoch]), "pairs.jsonl")
    job = _job(
        client,
        sft["job"].fine_tuned_model,
        pairs,
        {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 0.02},
        method="dpo",
    )
    wait_past_step(client, job.id, per_epoch + 2)
    [pid] = trainer_pids(job.id)
    os.kill(pid, signal.SIGKILL)
    done = _succeeded(client, job.id)
    events = all_events(client, job.id)
    assert f"Resumed from checkpoint at step {per_epoch} (attempt 2)" in [e.message for e in events]
    reported = {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics"}
    rows = {
        int(r["step"]): float(r["train_loss"])
        for r in csv.DictReader(
            io.StringIO(base64.b64decode(client.files.content(done.result_files[0]).read()).decode())
        )
    }
    assert sorted(rows) == sorted(reported) == list(range(1, 2 * per_epoch + 1))
    replayed = [step for step in range(per_epoch + 1, 2 * per_epoch + 1)]
    assert [rows[step] for step in replayed] == pytest.approx([reported[step] for step in replayed], rel=1e-4, abs=1e-5)


def test_vertex_pre_tuned_model_continues_a_checkpoint(sft):
    project, parent = sft["project"], sft["job"]
    client = genai_client(sft["server"], project.api_key, project.project_id)
    tuned_name = f"projects/{project.project_id}/locations/{LOCATION}/models/{parent.id}@1"
    checkpoint = sorted(sft["client"].fine_tuning.jobs.checkpoints.list(parent.id), key=lambda c: c.step_number)[-1]
    small = upload(sft["client"], sft["train"][:24], "small.jsonl")
    job = client.tunings.tune(
        base_model=tuned_name,
        training_dataset=types.TuningDataset(gcs_uri=small),
        config=types.CreateTuningJobConfig(
            pre_tuned_model_checkpoint_id=checkpoint.id, epoch_count=1, batch_size=4, learning_rate_multiplier=1e-4
        ),
    )
    assert job.pre_tuned_model.tuned_model_name == tuned_name and job.pre_tuned_model.checkpoint_id == checkpoint.id
    assert job.pre_tuned_model.base_model == "hone-tiny" and not job.base_model
    assert job.supervised_tuning_spec.hyper_parameters.adapter_size == types.AdapterSize.ADAPTER_SIZE_SIXTEEN
    job_id = job.name.rsplit("/", 1)[-1]
    assert sft["client"].fine_tuning.jobs.retrieve(job_id).model == checkpoint.id
    assert _succeeded(sft["client"], job_id).fine_tuned_model.startswith("ft:hone-tiny:")

    # Without a checkpoint: the tuned model itself. A name that is not one of the project's tuned models is refused.
    whole = client.tunings.tune(
        base_model=tuned_name,
        training_dataset=types.TuningDataset(gcs_uri=small),
        config=types.CreateTuningJobConfig(epoch_count=1, batch_size=4),
    )
    assert sft["client"].fine_tuning.jobs.retrieve(whole.name.rsplit("/", 1)[-1]).model == parent.fine_tuned_model
    client.tunings.cancel(name=whole.name)
    with pytest.raises(errors.ClientError) as refused:
        client.tunings.tune(
            base_model=tuned_name.replace(parent.id, "ftjob-nope"), training_dataset=types.TuningDataset(gcs_uri=small)
        )
    assert refused.value.code == 400 and "does not exist" in refused.value.message
    # The SDK sends a tuned model as preTunedModel; a REST caller may name it as baseModel, which is echoed.
    with project.http() as http:
        raw = http.post(
            f"/v1/projects/{project.project_id}/locations/{LOCATION}/tuningJobs",
            json={"baseModel": tuned_name, "supervisedTuningSpec": {"trainingDatasetUri": small}},
        ).json()
        http.post(f"/v1/{raw['name']}:cancel")
    assert raw["baseModel"] == tuned_name and "preTunedModel" not in raw
