"""One tuned model for the package: hone-tiny fine-tuned on the support tickets, deployed on the built-in engine.

The serving tests (a tuned model labels held-out tickets through its endpoint, streams, checkpoints serve, the
parity gate, a killed engine) and the continuation tests (jobs that start from this model's weights) need the same
model, and training it is the heaviest step of the suite (360 steps of the real trainer). It is trained once for
both modules: `tuned_model` is package-scoped, tests/conftest.py sends the package to one pytest-xdist worker whole
(SHARED_PACKAGES), and the server stops after the package's last test.

PostgreSQL and S3 (moto) underneath, so the adapter really comes from S3. One training slot; a model deploys when
its job succeeds (HONE_AUTO_DEPLOY), as a user's would, into one engine that every model of hone-tiny shares
(HONE_SHARED_ENGINES, engine key SHARED_ENGINE): the SFT model, its checkpoints, and the models continued from it."""

from __future__ import annotations

import pytest

from examples.support_tickets import make
from tests.support import HoneServer, PostgresDatabase, wait_endpoint, wait_evaluation, wait_job
from tests.tuned_tickets import BUCKET, SFT, labels, share_right, upload


@pytest.fixture(scope="package")
def tuned_model(tmp_path_factory, moto):
    postgres = PostgresDatabase()
    env = {
        **moto.env(),
        "HONE_DATABASE_URL": postgres.url,
        "HONE_STORAGE_URL": f"s3://{BUCKET}/blobs",
        "HONE_LOCAL_SLOTS": "1",
        "HONE_AUTO_DEPLOY": "true",
        # One built-in engine for hone-tiny, every tuned model of the package hot-loaded into it side by side.
        "HONE_SHARED_ENGINES": "true",
    }
    server = HoneServer(tmp_path_factory.mktemp("tuned-tickets"), env)
    try:
        project, other = server.new_project("tickets"), server.new_project("other team")
        client = project.openai()
        train, held_out = make(count=360, seed=7)
        files = {"train": upload(client, train, "train.jsonl"), "valid": upload(client, held_out, "valid.jsonl")}
        # For the tiny-learning-rate jobs, which barely move the weights whatever their length: 24 steps, not 72.
        files["tiny_lr"] = upload(client, train[:96], "tiny_lr.jsonl")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=files["train"],
            validation_file=files["valid"],
            seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": SFT}},
            # Measured against its base on 40 rows of the validation file (exact match on the label), after training.
            extra_body={"evaluation": {"max_rows": 40, "max_completion_tokens": 16}},
        )
        job = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=900)
        with project.http() as http:
            endpoint = wait_endpoint(http, job.fine_tuned_model)
        assert endpoint["state"] == "ready", endpoint
        # The evaluation's traffic ends before the tests start (their usage counts would otherwise race it).
        job = wait_evaluation(client, job)
        answers = labels(client, job.fine_tuned_model, held_out)  # test_serving.py checks them too
        yield {
            "server": server,
            "project": project,
            "other": other,
            "client": client,
            "job": job,
            "endpoint": endpoint,
            "train": train,
            "held_out": held_out,
            "files": files,
            "answers": answers,
            "accuracy": share_right(answers, held_out),
        }
    finally:
        server.stop()
        postgres.drop()
