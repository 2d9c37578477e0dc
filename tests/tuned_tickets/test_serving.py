"""Serving end to end: a job trains, its endpoint deploys by itself, and the real openai SDK talks to the tuned
model through the gateway. PostgreSQL and S3 (moto) underneath, so the adapter really comes from S3. The model is
the package's (tests/tuned_tickets/conftest.py), which tests/tuned_tickets/test_continuation.py continues.

Engines are the built-in engine (vLLM cannot run here: no GPU), started as real processes by the local
endpoint backend and driven over vLLM's HTTP protocol. These are the tests only a real model can pass (a tuned
model labels held-out tickets, streaming as generated, the parity gate catching a mismatched template, a killed
engine restarted and labelling again); what the control plane does with engines (deploying, waking, sharing,
full weights, orphans, the attempt limit, deleting) is in tests/test_endpoint_lifecycle.py, on a fake engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.openai_schemas import validator
from tests.support import REPO, chat_reply, engine_pids, wait_endpoint
from tests.tuned_tickets import BUCKET, SHARED_ENGINE


@pytest.fixture
def served(tuned_model):
    """The package's tuned model (tests/tuned_tickets/conftest.py), deployed on its own engine."""
    return tuned_model


def test_tuned_model_labels_held_out_tickets_through_its_endpoint(served):
    client, model, held_out = served["client"], served["job"].fine_tuned_model, served["held_out"]
    tuned = served["answers"]  # asked by the fixture, as these are
    streamed = [chat_reply(client, model, row, stream=True) for row in held_out]
    base = [chat_reply(client, "hone-tiny", row) for row in held_out]
    gold = [row["messages"][-1]["content"] for row in held_out]

    def accuracy(answers):
        return sum(a == g for a, g in zip(answers, gold)) / len(gold)

    print(f"held-out label accuracy through the gateway: base {accuracy(base):.1%}, tuned {accuracy(tuned):.1%}")
    assert streamed == tuned  # greedy: streaming changes the framing, not the tokens
    assert accuracy(tuned) >= 0.90
    assert accuracy(base) < 0.20


def test_endpoint_resource_and_usage(served):
    job, project = served["job"], served["project"]
    with project.http() as http:
        listed = http.get("/v1/endpoints").json()
        ep = http.get(f"/v1/endpoints/{served['endpoint']['id']}").json()
        reply = http.post(
            "/v1/chat/completions",
            json={"model": job.fine_tuned_model, "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]},
            headers={"x-request-id": "trace-usage"},
        )
        assert reply.status_code == 200 and reply.headers["x-request-id"] == "trace-usage"
        after = http.get(f"/v1/endpoints/{ep['id']}").json()
    assert listed["object"] == "list" and ep["id"] in [e["id"] for e in listed["data"]]
    assert ep["object"] == "endpoint" and ep["state"] == "ready" and ep["kind"] == "adapter"
    assert ep["model"] == job.fine_tuned_model and ep["fine_tuning_job_id"] == job.id
    assert ep["base_model"] == "hone-tiny" and ep["engine"] == "builtin" and ep["ready_at"] >= ep["created_at"]
    assert after["usage"]["requests"] == ep["usage"]["requests"] + 1
    usage = reply.json()["usage"]
    assert after["usage"]["prompt_tokens"] - ep["usage"]["prompt_tokens"] == usage["prompt_tokens"]
    assert after["usage"]["completion_tokens"] - ep["usage"]["completion_tokens"] == usage["completion_tokens"]
    events = [e.message for e in served["client"].fine_tuning.jobs.list_events(job.id, limit=100)]
    assert f"Deploying endpoint {ep['id']} for {job.fine_tuned_model}" in events
    # The gateway forwards the request's id: the engine's JSON access line carries it, and its engine key.
    deadline, engine_logs = time.monotonic() + 10, served["server"].data_dir / "logs" / "engines"
    while not (
        lines := [
            r
            for f in engine_logs.glob("*.log")
            for line in f.read_text().splitlines()
            if line.startswith("{") and (r := json.loads(line)).get("request_id") == "trace-usage"
        ]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [line] = lines
    assert (line["logger"], line["path"], line["status"]) == ("inference.access", "/v1/chat/completions", 200)
    assert line["engine"] == SHARED_ENGINE


def test_gateway_refuses_unknown_and_foreign_models(served):
    server, job = served["server"], served["job"]
    other = server.new_project("someone else")
    with other.http() as http:
        foreign = http.post(
            "/v1/chat/completions",
            json={"model": job.fine_tuned_model, "messages": [{"role": "user", "content": "hi"}]},
        )
        unknown = http.post("/v1/completions", json={"model": "ft:hone-tiny:nope:x:ftjob-none", "prompt": "hi"})
        missing = http.post("/v1/chat/completions", json={"messages": []})
    for reply in (foreign, unknown):
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "model_not_found"
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    with served["project"].http() as http:  # an engine-side refusal comes back in OpenAI's envelope
        greedy_n = http.post(
            "/v1/chat/completions",
            json={
                "model": job.fine_tuned_model,
                "n": 2,
                "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert greedy_n.status_code == 400
    assert not list(validator("ErrorResponse").iter_errors(greedy_n.json()))
    assert "n must be 1" in greedy_n.json()["error"]["message"]


def test_stream_passes_through_as_it_is_generated(served):
    project, model = served["project"], served["job"].fine_tuned_model
    arrivals = []
    with project.http() as http:
        started = time.monotonic()
        with http.stream(
            "POST",
            "/v1/completions",
            json={
                "model": model,
                "prompt": "ticket",
                "max_tokens": 200,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as reply:
            assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    arrivals.append((time.monotonic() - started, line[6:]))
    assert arrivals[-1][1] == "[DONE]"
    usage = json.loads(arrivals[-2][1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 200
    # Relayed event by event: the first token arrives long before the last one is generated.
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first < last / 4, (first, last)


def test_checkpoints_serve_and_the_parity_gate_catches_a_mismatched_template(served, moto):
    client, project, job = served["client"], served["project"], served["job"]
    checkpoints = sorted(client.fine_tuning.jobs.checkpoints.list(job.id), key=lambda c: c.step_number)
    last, earlier = checkpoints[-1], checkpoints[-2]
    # Someone "fixes" the chat template stored with an earlier checkpoint: serving would no longer match training.
    s3 = moto.client()
    key = f"blobs/jobs/{job.id}/checkpoints/step-{earlier.step_number}/hone_serving.json"
    pinned = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    pinned["chat_template"] = pinned["chat_template"].replace(
        "<|im_start|>{{ message['role'] }}", "<|im_start|> {{ message['role'] }}"
    )
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(pinned).encode())

    with project.http() as http:
        good = http.post("/v1/endpoints", json={"model": last.id}).json()
        bad = http.post("/v1/endpoints", json={"model": earlier.fine_tuned_model_checkpoint}).json()
        assert good["state"] == bad["state"] == "deploying" and good["checkpoint_id"] == last.id
        good = wait_endpoint(http, last.fine_tuned_model_checkpoint)
        bad = wait_endpoint(http, earlier.fine_tuned_model_checkpoint)
        refused = http.post(
            "/v1/chat/completions",
            json={"model": earlier.fine_tuned_model_checkpoint, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert good["state"] == "ready", good
    assert bad["state"] == "failed" and bad["error"]["code"] == "parity_check_failed"
    assert "tokenizes differently" in bad["error"]["message"]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "endpoint_failed"
    # A checkpoint is addressed by its id or its snapshot name.
    row = served["held_out"][0]
    assert chat_reply(client, last.id, row) == chat_reply(client, last.fine_tuned_model_checkpoint, row)


def test_killed_engine_is_restarted_and_serves_again(served):
    project, model, ep = served["project"], served["job"].fine_tuned_model, served["endpoint"]
    pids = engine_pids(served["server"], SHARED_ENGINE)
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    with project.http() as http:
        deadline = time.monotonic() + 120
        while True:
            current = http.get(f"/v1/endpoints/{ep['id']}").json()
            if current["state"] == "ready" and current["restarts"] > ep["restarts"]:
                break
            assert time.monotonic() < deadline, current
            time.sleep(0.3)
    assert engine_pids(served["server"], SHARED_ENGINE) and engine_pids(served["server"], SHARED_ENGINE) != pids
    row = served["held_out"][0]
    assert chat_reply(served["client"], model, row) == row["messages"][-1]["content"]


def test_cli_lists_and_shows_endpoints(served):
    server, project, ep = served["server"], served["project"], served["endpoint"]
    env = {**os.environ, "HONE_BASE_URL": server.base_url, "HONE_API_KEY": project.api_key}
    hone = [sys.executable, "-m", "hone"]
    listed = subprocess.run(
        hone + ["endpoints", "list", "--model", ep["model"]],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = subprocess.run(
        hone + ["endpoints", "get", ep["id"], "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    missing = subprocess.run(
        hone + ["endpoints", "get", "ep-nope"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0 and ep["id"] in listed.stdout and "ready" in listed.stdout
    assert shown.returncode == 0 and json.loads(shown.stdout)["model"] == ep["model"]
    assert missing.returncode == 1 and "No such endpoint" in missing.stderr


def test_the_openai_sdks_parse_gets_a_schema_valid_answer_from_tuned_and_base(served):
    """`client.chat.completions.parse(response_format=<pydantic model>)` through the gateway: the SDK sends a strict
    json_schema, the built-in engine's grammar holds the answer to it (hone_kernel/structured.py), and the SDK
    parses it, from the tuned model and from hone-tiny untrained alike."""
    from typing import Literal

    from pydantic import BaseModel

    from examples.support_tickets import LABELS

    class Ticket(BaseModel):
        label: Literal[tuple(LABELS)]  # type: ignore[valid-type]

    client, model, held_out = served["client"], served["job"].fine_tuned_model, served["held_out"][:8]
    answers = {}
    for name in (model, "hone-tiny"):
        answers[name] = []
        for row in held_out:
            reply = client.chat.completions.parse(
                model=name, messages=row["messages"][:-1], response_format=Ticket, temperature=0, max_tokens=48
            )
            assert reply.choices[0].finish_reason == "stop"
            parsed = reply.choices[0].message.parsed
            assert isinstance(parsed, Ticket), reply.choices[0].message.content
            answers[name].append(parsed.label)
    gold = [row["messages"][-1]["content"] for row in held_out]
    right = {name: sum(a == g for a, g in zip(got, gold)) / len(gold) for name, got in answers.items()}
    print(f"labels answered as JSON through the gateway: tuned {right[model]:.0%}, base {right['hone-tiny']:.0%}")


def test_a_tuned_model_and_its_checkpoints_can_be_taken_away(served, tmp_path):
    """GET /v1/models/{model}/content streams the weights as a tar whose SHA256SUMS checks every file; the CLI
    (and the SDK under it) saves and checks it. Another project's model reads as missing; a base model is refused."""
    import io
    import tarfile

    import httpx

    from hone_kernel.weights_archive import verify

    server, project, job = served["server"], served["project"], served["job"]
    model = job.fine_tuned_model
    headers = {"Authorization": f"Bearer {project.api_key}"}
    path = "/v1/models/" + model + "/content"
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
        reply = http.get(path)
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/x-tar"
        assert reply.headers["content-disposition"].endswith('.tar"')
        files = verify(reply.content)
        assert {"adapter_config.json", "adapter_model.safetensors", "hone_serving.json", "tokenizer.json"} <= set(files)
        with tarfile.open(fileobj=io.BytesIO(reply.content)) as tar:
            config = json.load(tar.extractfile(next(m for m in tar if m.name.endswith("/adapter_config.json"))))
        assert config["peft_type"] == "LORA"
        checkpoint = next(iter(served["client"].fine_tuning.jobs.checkpoints.list(job.id)))
        assert "adapter_config.json" in verify(http.get(f"/v1/models/{checkpoint.id}/content").content)
        assert http.get("/v1/models/hone-tiny/content").status_code == 400
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {served['other'].api_key}"}) as http:
        foreign = http.get(path)
        assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "model_not_found"
    env = {**os.environ, "HONE_BASE_URL": server.base_url, "HONE_API_KEY": project.api_key}
    saved = subprocess.run(
        [sys.executable, "-m", "hone", "models", "download", model, "-o", str(tmp_path / "m.tar")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert saved.returncode == 0, saved.stderr
    assert verify((tmp_path / "m.tar").read_bytes()) == files
    broken = bytearray(reply.content)
    at = broken.find(b'"peft_type"')
    broken[at + 1] ^= 0x20  # one byte of one file changed
    with pytest.raises(ValueError, match="does not match its SHA256SUMS"):
        verify(bytes(broken))
