"""The Hone SDK: retries (against a small real HTTP server of the test's own that answers 503 twice, then 200),
and, against the real control plane on both backends, pagination over several pages, errors mapped to the
exception hierarchy, idempotent creates, `wait()` timing out, and the async client doing what the sync one does."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import hone
from tests.support import chat_dataset, free_port

JOB = {
    "id": "ftjob-abc",
    "object": "fine_tuning.job",
    "created_at": 1,
    "status": "queued",
    "model": "hone-tiny",
    "training_file": "file-abc",
}


class FlakyServer:
    """A real HTTP server on a free port that answers each request with the next (status, body) of a script
    and records what it was sent."""

    def __init__(self, script: list[tuple[int, dict]]):
        self.script, self.requests = list(script), []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                flaky.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": self.rfile.read(length),
                    }
                )
                status, body = flaky.script.pop(0) if flaky.script else (500, {})
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


UNAVAILABLE = (503, {"error": {"message": "warming up", "type": "server_error", "param": None, "code": None}})


@pytest.fixture
def flaky():
    servers = []

    def make(script):
        servers.append(FlakyServer(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_retries_503_twice_then_succeeds_with_one_idempotency_key(flaky):
    server = flaky([UNAVAILABLE, UNAVAILABLE, (200, JOB)])
    started = time.monotonic()
    with hone.Client(server.url, "sk-test") as client:
        job = client.jobs.create("hone-tiny", "file-abc")
    elapsed = time.monotonic() - started
    assert isinstance(job, hone.types.FineTuningJob) and job.id == "ftjob-abc"
    assert len(server.requests) == 3
    keys = {r["headers"]["idempotency-key"] for r in server.requests}
    assert len(keys) == 1 and keys.pop().startswith("hone-")  # the same create, retried
    # openai's client sends them, and counts its retries
    assert [r["headers"].get("x-stainless-retry-count") for r in server.requests] == ["0", "1", "2"]
    assert all(r["headers"]["authorization"] == "Bearer sk-test" for r in server.requests)
    assert elapsed >= 0.375 + 0.75  # backed off: 0.5 s, then 1 s (openai's jitter takes up to a quarter off)


def test_retries_give_up_and_errors_are_typed(flaky):
    server = flaky(
        [UNAVAILABLE] * 3
        + [
            (
                400,
                {
                    "error": {
                        "message": "bad",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "invalid_value",
                    }
                },
            )
        ]
    )
    with hone.Client(server.url, "sk-test", max_retries=2) as client:
        with pytest.raises(hone.InternalServerError) as unavailable:
            client.models.list()
        with pytest.raises(hone.BadRequestError) as bad:
            client.models.list()
    assert unavailable.value.status_code == 503 and unavailable.value.message == "warming up"
    assert bad.value.param == "model" and bad.value.code == "invalid_value"
    assert len(server.requests) == 4  # three tries of the first call; a 400 is never retried


def test_async_client_retries_the_same_way(flaky):
    server = flaky([UNAVAILABLE, UNAVAILABLE, (200, {"object": "list", "data": [{"id": "hone-tiny"}]})])

    async def main():
        async with hone.AsyncClient(server.url, "sk-test") as client:
            return await client.models.list()

    assert [m.id for m in asyncio.run(main()).data] == ["hone-tiny"]
    assert len(server.requests) == 3


def test_connection_errors_are_retried_then_raised():
    started = time.monotonic()
    with hone.Client(f"http://127.0.0.1:{free_port()}", "sk-test", max_retries=1) as client:
        with pytest.raises(hone.APIConnectionError):
            client.models.list()
    assert time.monotonic() - started >= 0.375  # one back-off (0.5 s less openai's jitter) before the second try


def test_configuration_from_the_environment(monkeypatch):
    monkeypatch.setenv("HONE_BASE_URL", "http://hone.example:8000/v1/")
    monkeypatch.setenv("HONE_API_KEY", "sk-from-env")
    client = hone.Client()
    assert client.base_url == "http://hone.example:8000" and client.api_key == "sk-from-env"
    explicit = hone.Client("http://other:1", "sk-given")
    assert explicit.base_url == "http://other:1" and explicit.api_key == "sk-given"


# --- against the real control plane ------------------------------------------------------------------------------


@pytest.fixture
def sdk(project):
    with hone.Client(project.server.base_url, project.api_key) as client:
        yield client


def test_pagination_walks_every_page(sdk):
    uploaded = [sdk.files.create(chat_dataset(10), filename=f"part-{i}.jsonl").id for i in range(5)]
    pages = list(sdk.files.list(limit=2).iter_pages())
    assert [len(p.data) for p in pages] == [2, 2, 1] and [p.has_more for p in pages] == [True, True, False]
    assert [f.id for f in sdk.files.list(limit=2)] == uploaded[::-1]  # newest first, each once
    assert [f.id for f in sdk.files.list(limit=2, order="asc")] == uploaded


def test_errors_mirror_the_api(sdk, project):
    with pytest.raises(hone.NotFoundError) as missing:
        sdk.files.retrieve("file-nope")
    assert missing.value.status_code == 404 and missing.value.code == "not_found" and missing.value.request_id
    with pytest.raises(hone.BadRequestError) as bad:
        sdk.jobs.create("hone-tiny", "file-nope")
    assert bad.value.param == "training_file"
    with pytest.raises(hone.PermissionDeniedError):
        sdk.models.delete("hone-tiny")
    with hone.Client(project.server.base_url, "sk-wrong") as stranger:
        with pytest.raises(hone.AuthenticationError) as denied:
            stranger.models.list()
    assert denied.value.code == "invalid_api_key"
    assert isinstance(denied.value, hone.APIStatusError) and isinstance(denied.value, hone.HoneError)


def test_a_typo_is_refused_not_dropped(sdk):
    file = sdk.files.create(chat_dataset(12), filename="train.jsonl")
    with pytest.raises(hone.BadRequestError) as typo:
        sdk.jobs.create("hone-tiny", file.id, hyperparameters={"lora_rnk": 8})
    assert (typo.value.param, typo.value.code) == ("method.supervised.hyperparameters.lora_rnk", "unknown_parameter")
    assert "did you mean 'lora_rank'?" in typo.value.message
    with pytest.raises(hone.BadRequestError) as extra:  # **extra goes into the body as given
        sdk.jobs.create("hone-tiny", file.id, auto_deploi=False)
    assert extra.value.param == "auto_deploi" and "did you mean 'auto_deploy'?" in extra.value.message
    assert list(sdk.jobs.list()) == []  # a new project: neither refused create left a job


def test_creates_are_idempotent(sdk):
    file = sdk.files.create(chat_dataset(12), filename="train.jsonl")
    first = sdk.jobs.create("hone-tiny", file.id, idempotency_key="create-once")
    again = sdk.jobs.create("hone-tiny", file.id, idempotency_key="create-once")
    other = sdk.jobs.create("hone-tiny", file.id)  # a new key each call
    assert first.id == again.id != other.id
    for job in (first, other):
        sdk.jobs.cancel(job.id)


def test_wait_times_out_with_progress_reported(sdk):
    """This server has no training slot: a job stays queued, so waiting for it must end at the timeout."""
    file = sdk.files.create(chat_dataset(12), filename="train.jsonl")
    job = sdk.jobs.create("hone-tiny", file.id, hyperparameters={"n_epochs": 1})
    seen = []
    started = time.monotonic()
    with pytest.raises(hone.WaitTimeoutError) as timed_out:
        sdk.jobs.wait(job.id, timeout=1.5, poll_interval=0.2, on_progress=seen.append)
    elapsed = time.monotonic() - started
    assert isinstance(timed_out.value, TimeoutError) and timed_out.value.last.status in ("validating_files", "queued")
    assert 1.5 <= elapsed < 10 and len(seen) >= 3 and seen[-1].status in ("validating_files", "queued")
    assert f"Created fine-tuning job: {job.id}" in [e.message for e in sdk.jobs.events(job.id)]
    assert sdk.jobs.cancel(job.id).status == "cancelled"
    assert sdk.jobs.wait(job.id, timeout=5).status == "cancelled"  # an ended job: returned at once


def test_async_client_parity(sdk):
    """The same calls through AsyncClient give what the sync client gives."""
    file = sdk.files.create(chat_dataset(12), filename="train.jsonl")
    job = sdk.jobs.create("hone-tiny", file.id)

    async def main():
        async with hone.AsyncClient(sdk.base_url, sdk.api_key) as client:
            sent = []
            uploaded = await client.files.create(
                chat_dataset(12), filename="async.jsonl", on_progress=lambda done, total: sent.append((done, total))
            )
            files = [f.id async for f in client.files.list(limit=1)]
            retrieved = await client.jobs.retrieve(job.id)
            events = [e.id async for e in client.jobs.events(job.id, limit=1)]
            with pytest.raises(hone.WaitTimeoutError):
                await client.jobs.wait(retrieved.id, timeout=0.5, poll_interval=0.1)
            followed = []
            with pytest.raises(hone.WaitTimeoutError):
                async for event in client.jobs.follow(retrieved.id, timeout=0.5, poll_interval=0.1):
                    followed.append(event.id)
            with pytest.raises(hone.NotFoundError):
                await client.jobs.retrieve("ftjob-nope")
            cancelled = await client.jobs.cancel(job.id)
            models = await client.models.list()
            return uploaded, sent, files, retrieved, events, followed, cancelled, models

    uploaded, sent, files, retrieved, events, followed, cancelled, models = asyncio.run(main())
    assert uploaded.status == "processed" and uploaded.dataset.examples == 12
    assert sent and sent[-1][0] == sent[-1][1] == len(chat_dataset(12))
    assert files == [f.id for f in sdk.files.list()]
    stable = {"id", "created_at", "model", "training_file", "seed", "hyperparameters"}
    assert retrieved.model_dump(include=stable) == sdk.jobs.retrieve(job.id).model_dump(include=stable)
    newest_first = [e.id for e in sdk.jobs.events(job.id)]  # now also the later events (queued, cancelled)
    assert len(events) >= 2 and events == newest_first[len(newest_first) - len(events) :]
    assert followed and followed == newest_first[::-1][: len(followed)]
    assert cancelled.status == "cancelled" and [m.id for m in models.data] == [m.id for m in sdk.models.list().data]
