"""What the service keeps quiet (docs/security.md): /metrics behind a token and without model names when asked,
a data dir nobody else can read, and API keys in no log.

One real server runs a whole flow (a project and key made by the admin, an upload, a job that trains hone-tiny,
its endpoint, a chat completion and a Vertex call, failed authentications of every kind), then every log and
every file it wrote is searched for the keys and checked for its mode. The rest is in-process."""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.app import create_app
from service.context import AppContext
from service.db.tables import Endpoint, Job, Project
from service.metrics_export import MetricsExporter
from service.settings import FIELDS as SETTINGS_FIELDS
from service.settings import Settings
from service.storage.filesystem import FilesystemStorage
from tests.support import HoneServer, jsonl, one_label_tickets, wait_endpoint, wait_job

REDACTED_PREFIX = 10  # service.auth._redact keeps this many leading characters of a key (and the last 4)


def _key(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def _open_to_others(root: Path, skip: set[Path] = frozenset()) -> list[str]:
    """Every file group- or world-readable (or writable) and every folder group- or world-accessible under `root`,
    `root` included."""
    found = []
    for path in [root, *root.rglob("*")]:
        if path in skip or path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return found


def _scrape(base_url: str, token: str) -> str:
    reply = httpx.get(base_url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert reply.status_code == 200, reply.text[:300]
    return reply.text


def _label_values(exposition: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if label in sample.labels
    }


def test_a_whole_flow_logs_no_key_and_writes_nothing_others_can_read(tmp_path):
    data = tmp_path / "data"
    os.mkdir(data, 0o700)  # as `hone serve` makes it (HoneServer would make it with the tests' umask)
    admin_key, metrics_token = _key("sk-admin-"), _key("mtok-")
    wrong_keys = [_key("sk-hone-") for _ in range(6)]
    server = HoneServer(
        data,
        {
            "HONE_METRICS_TOKEN": metrics_token,
            "HONE_METRICS_MODEL_LABELS": "false",
            "HONE_AUTO_DEPLOY": "true",
            "HONE_LOCAL_SLOTS": "1",
            "HONE_MODEL_CACHE_DIR": str(data / "models"),
        },  # built here, so it is checked too
        admin_key=admin_key,
    )
    harness_log = server.log_path  # the test's capture of the server's stdout and stderr, made by the test
    try:
        umask = next(
            line
            for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines()
            if line.startswith("Umask:")
        )
        assert int(umask.split()[1], 8) & 0o077 == 0o077, umask
        project = server.new_project("quiet")
        key = project.api_key
        base = server.base_url

        # Failed authentications of every kind: none echoes more of the key than its redacted form.
        attempts = [
            ("GET", "/v1/files", {"Authorization": f"Bearer {wrong_keys[0]}"}, None, 401),
            ("GET", "/v1/organization/projects", {"Authorization": f"Bearer {wrong_keys[1]}"}, None, 401),
            ("GET", "/v1/files", {"Authorization": wrong_keys[2]}, None, 401),  # no scheme
            ("GET", "/v1/files", {"Authorization": f"Basic {wrong_keys[3]}"}, None, 401),
            (
                "GET",
                f"/v1/projects/{project.project_id}/locations/us-central1/tuningJobs",
                {"x-goog-api-key": wrong_keys[4]},
                None,
                401,
            ),
            # Keys in the query string are not accepted anywhere (Vertex's `?key=` included), nor logged.
            ("GET", f"/v1/projects/{project.project_id}/locations/us-central1/tuningJobs", {}, {"key": key}, 401),
            ("GET", "/v1/files", {}, {"api_key": wrong_keys[5], "key": key}, 401),
            ("GET", "/metrics", {}, None, 401),
            ("GET", "/metrics", {"Authorization": f"Bearer {wrong_keys[0]}"}, None, 401),
            ("GET", "/metrics", {"Authorization": f"Bearer {key}"}, {"token": admin_key}, 401),
        ]
        for method, path, headers, params, status in attempts:
            reply = httpx.request(method, base + path, headers=headers, params=params, timeout=30)
            assert reply.status_code == status, (path, reply.text)
            for secret in (*wrong_keys, key, admin_key, metrics_token):
                assert secret[: REDACTED_PREFIX + 1] not in reply.text, (path, reply.text)
        metrics_refused = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {wrong_keys[0]}"}).json()
        assert metrics_refused["error"]["code"] == "invalid_api_key"
        assert metrics_refused["error"]["type"] == "invalid_request_error"
        # The redacted form is what it says: the first characters and the last four.
        refused = httpx.get(base + "/v1/files", headers={"Authorization": f"Bearer {wrong_keys[0]}"}).json()
        assert f"{wrong_keys[0][:REDACTED_PREFIX]}***{wrong_keys[0][-4:]}" in refused["error"]["message"]

        # The flow: upload, train, serve, chat (OpenAI and Vertex).
        client = project.openai()
        train, held_out = one_label_tickets(seed=5)
        file = client.files.create(file=("tickets.jsonl", jsonl(train)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=file.id,
            seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
        )
        scrapes = []

        def scraped_while_running(j):
            scrapes.append(_scrape(base, metrics_token))
            return j.status == "succeeded"

        job = wait_job(client, job.id, scraped_while_running, timeout=600, poll=1.0)
        with project.http() as http:
            endpoint = wait_endpoint(http, job.fine_tuned_model)
        assert endpoint["state"] == "ready", endpoint
        reply = client.chat.completions.create(
            model=job.fine_tuned_model, messages=held_out[0]["messages"][:-1], max_tokens=4, temperature=0
        )
        assert reply.choices[0].message.content
        vertex = httpx.post(
            f"{base}/v1/projects/{project.project_id}/locations/us-central1/endpoints/{endpoint['id']}:generateContent",
            headers={"x-goog-api-key": key},
            timeout=60,
            json={
                "contents": [{"role": "user", "parts": [{"text": "I was charged twice."}]}],
                "generationConfig": {"maxOutputTokens": 4, "temperature": 0},
            },
        )
        assert vertex.status_code == 200, vertex.text
        scrapes.append(_scrape(base, metrics_token))

        # /metrics names no model: every model label is "_all" (the running job, the served model, the gateway).
        running = [text for text in scrapes if f'job_id="{job.id}"' in text]
        assert running, "no scrape saw the job running"
        everything = "\n".join(scrapes)
        for name in (job.fine_tuned_model, "hone-tiny", endpoint["model"]):
            assert name not in everything, name
        assert _label_values(everything, "model") >= {metrics.ALL_MODELS}
        assert _label_values(everything, "base_model") == {metrics.ALL_MODELS}
        last = {f.name: f for f in text_string_to_metric_families(scrapes[-1])}
        assert [
            s.value
            for s in last["hone_gateway_requests"].samples
            if s.name.endswith("_total") and s.labels == {"model": metrics.ALL_MODELS, "status": "200"}
        ] == [2.0]
        assert [s.labels for s in last["hone_endpoint_up"].samples] == [
            {
                "endpoint_id": endpoint["id"],
                "project_id": project.project_id,
                "model": metrics.ALL_MODELS,
                "base_model": metrics.ALL_MODELS,
            }
        ]
        assert [s.value for s in last["hone_trained_tokens"].samples if s.name.endswith("_total")] == [
            float(job.trained_tokens)
        ]

        # Nothing under the data dir is open to other users, while it runs (SQLite's -wal and -shm exist)...
        assert (data / "hone.db-wal").exists() and (data / "models").is_dir() and (data / "adapters").is_dir()
        assert _open_to_others(data, {harness_log}) == []
    finally:
        server.stop()
    # ... nor after it stopped.
    assert _open_to_others(data, {harness_log}) == []

    # No key in any log or file, not even more of it than the errors' redacted form. The trainer's token is in
    # its job's spec, which is how the trainer gets it, and nowhere else.
    specs = list((data / "blobs" / "jobs").glob("*/spec.json"))
    assert specs
    trainer_tokens = [json.loads(spec.read_text())["token"] for spec in specs]
    logs = [harness_log, *(p for p in data.rglob("*") if p.is_file())]
    assert any("/logs/" in str(p) and p.suffix == ".log" for p in logs)  # trainer and engine logs are searched
    assert any("engines" in p.parts for p in logs)
    for path in logs:
        content = path.read_bytes()
        for secret in (admin_key, key, metrics_token, *wrong_keys):
            assert secret[: REDACTED_PREFIX + 1].encode() not in content, (path, secret[:REDACTED_PREFIX])
        if path not in specs:
            for token in trainer_tokens:
                assert token.encode() not in content, path


# ---- in-process ------------------------------------------------------------------------------------------------


def _settings(tmp_path: Path, **fields) -> Settings:
    return Settings(data_dir=tmp_path / "data", admin_api_key="sk-admin-test", local_slots=0, **fields)


def test_metrics_need_the_token_when_one_is_set(tmp_path):
    token = _key("mtok-")
    with TestClient(create_app(_settings(tmp_path, metrics_token=token))) as app:
        assert app.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert "hone_build_info" in app.get("/metrics", headers={"Authorization": f"bearer  {token} "}).text
        for headers, code in [
            ({}, "missing_api_key"),
            ({"Authorization": f"Bearer {token}x"}, "invalid_api_key"),
            ({"Authorization": f"Bearer {token[:-1]}"}, "invalid_api_key"),
            ({"Authorization": "Bearer sk-admin-test"}, "invalid_api_key"),  # only the token
            ({"Authorization": token}, "invalid_api_key"),
            ({"Authorization": f"Basic {token}"}, "invalid_api_key"),
        ]:
            reply = app.get("/metrics", headers=headers)
            assert reply.status_code == 401, headers
            assert reply.json()["error"]["code"] == code and reply.json()["error"]["type"] == "invalid_request_error"
            assert token[:6] not in reply.text and "hone_build_info" not in reply.text
        # The rest of the API is not affected.
        assert app.get("/healthz").status_code == 200


def test_metrics_are_open_without_a_token(tmp_path):
    for unset in ({}, {"metrics_token": ""}):
        with TestClient(create_app(_settings(tmp_path, **unset))) as app:
            reply = app.get("/metrics")
            assert reply.status_code == 200 and "hone_build_info" in reply.text
            assert app.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 200


@pytest.fixture
def model_labels_restored():
    yield
    metrics.configure(SETTINGS_FIELDS["metrics_max_label_values"].default, True)


def _served_state(ctx: AppContext) -> None:
    """A running job and a ready endpoint of a tuned model, as rows."""
    now = int(time.time())
    with ctx.db.write() as session:
        session.add(Project(id="proj_quiet", name="quiet", slug="quiet", created_at=now))
        session.flush()
        session.add(
            Job(
                id="ftjob-quiet",
                project_id="proj_quiet",
                model="secret-base",
                base_model="secret-base",
                status="running",
                created_at=now,
                training_file="file-x",
                method={},
                seed=1,
                result_files=[],
                live_metrics={"step": 3, "total_steps": 9},
            )
        )
        session.add(
            Endpoint(
                id="ep_quiet",
                project_id="proj_quiet",
                model="ft:secret-base:quiet:abc",
                kind="adapter",
                base_model="secret-base",
                state="ready",
                created_at=now,
                updated_at=now,
            )
        )


@pytest.mark.parametrize("named", [True, False])
def test_model_labels_can_be_dropped(tmp_path, model_labels_restored, named):
    ctx = AppContext.build(_settings(tmp_path, metrics_model_labels=named))
    try:
        _served_state(ctx)
        metrics.configure(500, named)
        tuned = "ft:secret-base:quiet:abc"
        metrics.GATEWAY_REQUESTS.labels(metrics.model_label(tuned), "200").inc()
        metrics.GATEWAY_TOKENS.labels(metrics.model_label(tuned), "prompt").inc(5)
        metrics.TRAINED_TOKENS.labels(metrics.model_name_label("secret-base")).inc(7)
        metrics.ADAPTER_LOAD.labels(metrics.model_name_label("secret-base")).observe(0.1)
        exposition = MetricsExporter(ctx).render().decode()
    finally:
        ctx.db.dispose()
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    up = [s.labels for s in families["hone_endpoint_up"].samples]
    steps = [s.labels for s in families["hone_job_step"].samples]
    if named:
        assert up == [
            {"endpoint_id": "ep_quiet", "project_id": "proj_quiet", "model": tuned, "base_model": "secret-base"}
        ]
        assert steps == [{"job_id": "ftjob-quiet", "project_id": "proj_quiet", "base_model": "secret-base"}]
        assert tuned in _label_values(exposition, "model")
        return
    assert "secret-base" not in exposition  # every series of the tuned model and its base, and the gateway's
    assert up == [
        {
            "endpoint_id": "ep_quiet",
            "project_id": "proj_quiet",
            "model": metrics.ALL_MODELS,
            "base_model": metrics.ALL_MODELS,
        }
    ]
    assert steps == [{"job_id": "ftjob-quiet", "project_id": "proj_quiet", "base_model": metrics.ALL_MODELS}]
    assert _label_values(exposition, "model") <= {metrics.ALL_MODELS, metrics.UNKNOWN}
    assert metrics.ALL_MODELS in _label_values(exposition, "model")
    assert _label_values(exposition, "base_model") == {metrics.ALL_MODELS}


def test_filesystem_storage_and_data_dir_are_owner_only_whatever_the_umask(tmp_path):
    previous = os.umask(0o022)  # the usual umask: the modes must come from the code, not from it
    try:
        root = tmp_path / "store" / "blobs"
        storage = FilesystemStorage(root)
        storage.put_bytes("files/file-abc", b"a dataset")
        writer = storage.writer("jobs/ftjob-1/checkpoints/step-1/adapter.safetensors")
        writer.write(b"weights")
        writer.commit()
        ctx = AppContext.build(_settings(tmp_path / "made" / "here"))
        ctx.db.dispose()
    finally:
        os.umask(previous)
    assert _open_to_others(tmp_path / "store") == []
    assert stat.S_IMODE((tmp_path / "made" / "here" / "data").stat().st_mode) == 0o700
