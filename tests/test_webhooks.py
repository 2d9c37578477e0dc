"""Webhooks: a real server on the FAKE trainer (tests/fake_trainer: the real entry point, reports and exit codes, fake
steps, no torch; these tests check what the control plane sends when jobs end, not what a trainer learns) delivers
to a real HTTP receiver in this process (http.server in a thread); every delivery is verified with the real openai
SDK's Standard Webhooks verifier (`client.webhooks.unwrap`) and the signing secret the API answered once. Eval runs'
events, the delivery state machine and the URL rules are checked in-process, on the same code."""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from sqlalchemy import select

from service import eval_states, projects, webhooks
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import Eval, EvalRun, WebhookDelivery
from service.errors import InvalidRequest
from service.eval_states import RunStatus
from service.settings import Settings
from service.webhook_schemas import CreateWebhookEndpoint
from service.webhook_states import ALLOWED, DeliveryStatus, move
from tests.support import HoneServer, PostgresDatabase, chat_line, fake_trainer_env, jsonl, wait_for

JOB_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


class Receiver:
    """A webhook receiver on loopback: records every request, and answers each path from a script of statuses (the
    last one repeated; 200 when none)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: dict[str, list[int]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                statuses = receiver.script.get(self.path, [200])
                status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "status": status,
                        "at": time.time(),
                    }
                )
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver(server):
    """One per server: each backend's deliveries counted apart."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module", params=["sqlite-fs", "postgres-s3"])
def server(request, tmp_path_factory):
    env = {
        **fake_trainer_env(step_s=0.02),
        "HONE_LOCAL_SLOTS": "2",
        "HONE_BASE_MODELS": '{"acme/missing": "/nonexistent/model"}',  # its trainer fails: model_not_found
        "HONE_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "HONE_WEBHOOK_POLL_S": "0.2",
        "HONE_WEBHOOK_BACKOFF_S": "0.5",
        "HONE_WEBHOOK_MAX_ATTEMPTS": "3",
    }
    postgres = None
    if request.param == "postgres-s3":
        moto, postgres = request.getfixturevalue("moto"), PostgresDatabase()
        env |= {**moto.env(), "HONE_DATABASE_URL": postgres.url, "HONE_STORAGE_URL": "s3://hone-webhooks/blobs"}
    srv = HoneServer(tmp_path_factory.mktemp(f"webhooks-{request.param}"), env)
    yield srv
    srv.stop()
    if postgres is not None:
        postgres.drop()


def _job(client, model="hone-tiny", epochs=1):
    train = client.files.create(
        file=("train.jsonl", jsonl([chat_line(f"q{i}", f"a{i}") for i in range(12)])), purpose="fine-tune"
    )
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 4}}}
    return client.fine_tuning.jobs.create(model=model, training_file=train.id, method=method)


def _wait_status(client, job_id, status, timeout=60):
    return wait_for(
        lambda: client.fine_tuning.jobs.retrieve(job_id).status == status, timeout, what=f"{job_id} {status}"
    )


def test_ended_jobs_send_signed_events_in_openais_shape(server, receiver):
    project = server.new_project("hooks")
    client = project.openai()
    made = client.webhooks.create(name="all", url=receiver.url + "/all", event_types=JOB_EVENTS)
    assert made.object == "webhook_endpoint" and made.signing_secret.startswith("whsec_")
    assert made.signing_secret_hint.endswith(made.signing_secret[-4:])
    failed_only = client.webhooks.create(name="failures", url=receiver.url + "/failed", event_types=[JOB_EVENTS[1]])
    assert "signing_secret" not in client.webhooks.retrieve(made.id).model_dump()  # answered once

    succeeded = _job(client)
    failed = _job(client, model="acme/missing")
    cancelled = _job(client, epochs=50)
    _wait_status(client, cancelled.id, "running")
    client.fine_tuning.jobs.cancel(cancelled.id)
    wait_for(lambda: len(receiver.at("/all")) == 3, 60, what="three job events")
    wait_for(lambda: len(receiver.at("/failed")) == 1, 10, what="the failure event")
    time.sleep(0.5)
    assert len(receiver.at("/all")) == 3 and len(receiver.at("/failed")) == 1  # each event once

    events = {}
    for request in receiver.at("/all"):
        event = client.webhooks.unwrap(request["body"], request["headers"], secret=made.signing_secret)
        events[event.data.id] = event
        assert event.object == "event" and event.id.startswith("evt_")
        assert set(json.loads(request["body"])) == {"object", "id", "type", "created_at", "data"}
        assert request["headers"]["webhook-id"].startswith("wh_")
    assert {job_id: e.type for job_id, e in events.items()} == {
        succeeded.id: "fine_tuning.job.succeeded",
        failed.id: "fine_tuning.job.failed",
        cancelled.id: "fine_tuning.job.cancelled",
    }
    assert client.fine_tuning.jobs.retrieve(succeeded.id).status == "succeeded"
    # The same event to another endpoint: the same event id, its own delivery id and secret.
    other = receiver.at("/failed")[0]
    event = client.webhooks.unwrap(other["body"], other["headers"], secret=failed_only.signing_secret)
    assert event.id == events[failed.id].id and other["headers"]["webhook-id"] != ""

    # A tampered body, another endpoint's secret, or an old timestamp: refused by the verifier.
    request = receiver.at("/all")[0]
    tampered = request["body"].replace(b'"data":{"id":"', b'"data":{"id":"x')
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(tampered, request["headers"], secret=made.signing_secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(request["body"], request["headers"], secret=failed_only.signing_secret)

    # The delivery log: one delivered attempt each, with its status code.
    log = project.http().get(f"/v1/webhook_endpoints/{made.id}/deliveries").json()
    assert len(log["data"]) == 3 and all(d["status"] == "delivered" for d in log["data"])
    assert all(len(d["attempts"]) == 1 and d["attempts"][0]["status_code"] == 200 for d in log["data"])
    assert {d["event_type"] for d in log["data"]} == set(JOB_EVENTS)


def test_retries_with_backoff_then_gives_up(server, receiver):
    project = server.new_project("retries")
    client = project.openai()
    receiver.script["/flaky"] = [500, 200]
    receiver.script["/gone"] = [410]
    receiver.script["/down"] = [503]
    cancelled = [JOB_EVENTS[2]]
    flaky = client.webhooks.create(name="flaky", url=receiver.url + "/flaky", event_types=cancelled)
    gone = client.webhooks.create(name="gone", url=receiver.url + "/gone", event_types=cancelled)
    down = client.webhooks.create(name="down", url=receiver.url + "/down", event_types=cancelled)
    job = _job(client, epochs=50)
    client.fine_tuning.jobs.cancel(job.id)  # validating_files -> cancelled: the event commits with the cancel

    http = project.http()

    def log(endpoint):
        return http.get(f"/v1/webhook_endpoints/{endpoint.id}/deliveries").json()["data"]

    wait_for(lambda: [d["status"] for d in log(flaky)] == ["delivered"], 30, what="the flaky delivery")
    wait_for(lambda: [d["status"] for d in log(down)] == ["failed"], 30, what="the down endpoint given up")
    (delivery,) = log(flaky)
    first, second = delivery["attempts"]
    assert (first["status_code"], second["status_code"]) == (500, 200)
    assert "500" in first["error"] and second["error"] is None
    one, two = receiver.at("/flaky")
    assert one["headers"]["webhook-id"] == two["headers"]["webhook-id"] == delivery["id"]  # the same message
    assert two["at"] - one["at"] >= 0.45  # HONE_WEBHOOK_BACKOFF_S

    (gave_up,) = log(gone)  # a 410: no retry
    assert gave_up["status"] == "failed" and [a["status_code"] for a in gave_up["attempts"]] == [410]
    (exhausted,) = log(down)  # 503 each time: HONE_WEBHOOK_MAX_ATTEMPTS, each wait twice the last
    assert [a["status_code"] for a in exhausted["attempts"]] == [503, 503, 503]
    times = [r["at"] for r in receiver.at("/down")]
    assert times[2] - times[1] >= 0.95 and times[1] - times[0] >= 0.45
    assert len(receiver.at("/gone")) == 1


def test_another_projects_endpoints_do_not_exist(server, receiver):
    owner, stranger = server.new_project("owner"), server.new_project("stranger")
    made = owner.openai().webhooks.create(name="mine", url=receiver.url + "/mine", event_types=JOB_EVENTS)
    http = stranger.http()
    missing = http.get("/v1/webhook_endpoints/whep_doesnotexist").json()["error"]
    for method, path in (
        ("GET", f"/v1/webhook_endpoints/{made.id}"),
        ("POST", f"/v1/webhook_endpoints/{made.id}"),
        ("DELETE", f"/v1/webhook_endpoints/{made.id}"),
        ("GET", f"/v1/webhook_endpoints/{made.id}/deliveries"),
        ("POST", f"/v1/webhook_endpoints/{made.id}/rotate_secret"),
    ):
        answer = http.request(method, path, json={} if method == "POST" else None)
        assert answer.status_code == 404, (method, path)
        error = answer.json()["error"]
        assert error["message"].replace(made.id, "X") == missing["message"].replace("whep_doesnotexist", "X")
    assert http.get("/v1/webhook_endpoints").json()["data"] == []
    # The stranger's job ends: nothing reaches the owner's endpoint.
    client = stranger.openai()
    job = _job(client, epochs=50)
    client.fine_tuning.jobs.cancel(job.id)
    time.sleep(1.0)
    assert receiver.at("/mine") == []
    assert owner.http().get(f"/v1/webhook_endpoints/{made.id}/deliveries").json()["data"] == []


def test_endpoint_api_update_rotate_and_delete(server, receiver):
    client = server.new_project("crud").openai()
    made = client.webhooks.create(name="a", url=receiver.url + "/a", event_types=[JOB_EVENTS[0]])
    updated = client.webhooks.update(made.id, name="b", event_types=JOB_EVENTS)
    assert (updated.name, updated.event_types, updated.url) == ("b", JOB_EVENTS, made.url)
    rotated = client.webhooks.rotate_secret(made.id)
    assert rotated.signing_secret != made.signing_secret and rotated.signing_secret.startswith("whsec_")
    assert [e.id for e in client.webhooks.list()] == [made.id]
    with pytest.raises(openai.BadRequestError) as refused:
        client.webhooks.create(name="x", url=receiver.url, event_types=["batch.completed"])
    assert refused.value.body["param"] == "event_types"
    with pytest.raises(openai.BadRequestError) as refused:
        client.webhooks.create(name="x", url="ftp://example.com/hook", event_types=JOB_EVENTS)
    assert refused.value.body["param"] == "url"
    assert client.webhooks.delete(made.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.webhooks.retrieve(made.id)


# --- in-process: the same code, no server ------------------------------------------------------------------------


def test_signatures_match_the_standard_webhooks_test_vector():
    # The specification's published vector: a receiver's Standard Webhooks library must verify what Hone sends.
    signed = webhooks.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    data = tmp_path_factory.mktemp("webhooks-in-process")
    context = AppContext.build(
        Settings(data_dir=data, storage_url=(data / "blobs").as_uri(), webhook_allow_private=True, webhook_backoff_s=0)
    )
    context.project_id = projects.create_project(context, "webhooks")["id"]
    return context


def test_urls_must_be_public_unless_allowed(tmp_path):
    strict = AppContext.build(Settings(data_dir=tmp_path, storage_url=(tmp_path / "blobs").as_uri()))
    for url in (
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "ftp://93.184.216.34/",
        "http:///nohost",
    ):
        with pytest.raises(InvalidRequest) as refused:
            webhooks.check_url(strict, url)
        assert refused.value.param == "url", url
    assert webhooks.check_url(strict, "https://93.184.216.34/hooks") == "https://93.184.216.34/hooks"


@pytest.fixture(scope="module")
def local_receiver():
    r = Receiver()
    yield r
    r.close()


def test_eval_runs_that_end_send_their_events(ctx, local_receiver):
    receiver = local_receiver
    principal = ProjectPrincipal(project_id=ctx.project_id, project_slug="webhooks")
    made = webhooks.create(
        ctx,
        principal,
        CreateWebhookEndpoint(
            name="evals", url=receiver.url + "/evals", event_types=list(webhooks.RUN_EVENTS.values())
        ),
    )
    with ctx.db.write() as session:
        session.add(
            Eval(
                id="eval_webhooks",
                project_id=ctx.project_id,
                name="",
                data_source_config={},
                testing_criteria=[],
                created_at=1,
                updated_at=1,
            )
        )
    runs = {}
    for target in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED):
        run_id = f"evalrun_{target.value}{time.monotonic_ns()}"
        with ctx.db.write() as session:
            session.add(
                EvalRun(
                    id=run_id,
                    eval_id="eval_webhooks",
                    project_id=ctx.project_id,
                    name="r",
                    data_source={},
                    model="",
                    status=RunStatus.IN_PROGRESS.value,
                    result_counts={},
                    per_testing_criteria_results=[],
                    per_model_usage=[],
                    created_at=1,
                    updated_at=1,
                )
            )
        with ctx.db.write() as session:
            assert eval_states.move(session, run_id, RunStatus.IN_PROGRESS, target, 100)
        runs[run_id] = webhooks.RUN_EVENTS[target.value]
    # A move that lost its race enqueues nothing.
    with ctx.db.write() as session:
        assert not eval_states.move(session, run_id, RunStatus.IN_PROGRESS, RunStatus.COMPLETED, 100)
    deliverer = webhooks.Deliverer(ctx)
    try:
        assert deliverer.tick() == 3
        assert deliverer.tick() == 0  # nothing due twice
    finally:
        deliverer.close()
    got = {}
    for request in receiver.at("/evals"):
        event = openai.OpenAI(api_key="x").webhooks.unwrap(
            request["body"], request["headers"], secret=made["signing_secret"]
        )
        got[event.data.id] = event.type
    assert got == runs


def test_every_delivery_pair(ctx):
    principal = ProjectPrincipal(project_id=ctx.project_id, project_slug="webhooks")
    endpoint = webhooks.create(
        ctx, principal, CreateWebhookEndpoint(name="pairs", url="http://127.0.0.1:9/", event_types=[JOB_EVENTS[0]])
    )
    for current, target in itertools.product(DeliveryStatus, DeliveryStatus):
        delivery_id = f"wh_{current.value}{target.value}{time.monotonic_ns()}"
        with ctx.db.write() as session:
            session.add(
                WebhookDelivery(
                    id=delivery_id,
                    endpoint_id=endpoint["id"],
                    project_id=ctx.project_id,
                    event_id="evt_x",
                    event_type=JOB_EVENTS[0],
                    payload="{}",
                    status=current.value,
                    created_at=1,
                    next_attempt_at=5.0 if current is DeliveryStatus.PENDING else None,
                    attempts=[],
                )
            )
        attempt = [{"attempt": 1}]
        due = 5.0 if current is DeliveryStatus.PENDING else None
        with ctx.db.write() as session:
            if target in ALLOWED[current]:
                assert move(session, delivery_id, current, target, attempt, due=due, now=10.0, next_attempt_at=20.0)
                assert not move(session, delivery_id, current, target, attempt, due=due, now=10.0, next_attempt_at=20.0)
            else:
                with pytest.raises(ValueError):
                    move(session, delivery_id, current, target, attempt, due=due, now=10.0, next_attempt_at=20.0)
        with ctx.db.read() as session:
            row = session.execute(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)).scalar_one()
        if target in ALLOWED[current]:
            assert row.status == target.value and row.attempts == attempt
            assert (row.finished_at, row.next_attempt_at) == ((10, None) if target.terminal else (None, 20.0))
        else:
            assert row.status == current.value and row.attempts == []
