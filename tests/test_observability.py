"""Observability end to end: a real Prometheus (Debian's package) scrapes the control plane, and the engines it
finds through the control plane's HTTP service discovery, while a job trains and its model serves; the test
then asks Prometheus's HTTP API what it saw. PostgreSQL and S3 (moto) underneath.

The engines are the FAKE engine of tests/fake_engine (HONE_ENGINE_PYTHON): what is observed here is the control
plane and what Prometheus finds, not the model, and the built-in engine would import torch and load a model at
each start. The fake exports vLLM's metric names through the built-in engine's own metrics module, counted as
the built-in engine counts them. The trainers are the FAKE trainer of tests/fake_trainer (real process, spec,
reports and storage; sleeping steps), so that a job trains at a pace a 1 s scrape can watch on any machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from examples.support_tickets import make
from service import jobs, metrics, projects
from service.context import AppContext
from service.db.tables import Endpoint, Job
from service.errors import ErrorCode
from service.job_states import JobStatus
from service.metrics_export import MetricsExporter
from service.settings import Settings
from tests.support import (
    FAKE_ENGINE_PYTHON,
    REPO,
    HoneServer,
    PostgresDatabase,
    fake_trainer_env,
    free_port,
    jsonl,
    wait_endpoint,
    wait_for,
    wait_http,
    wait_job,
)


class Prometheus:
    """`prometheus` on a free loopback port with a generated config and its own data folder."""

    def __init__(self, folder: Path, config: dict):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(folder / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [
                shutil.which("prometheus") or "/usr/bin/prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={self.url[len('http://') :]}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_http(self.url + "/-/ready", proc=self.proc, timeout=60)

    def query(self, promql: str) -> list[dict]:
        reply = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10).json()
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, until=lambda result: bool(result), timeout: float = 120) -> list[dict]:
        found: list[list[dict]] = []

        def holds() -> bool:
            found[:] = [self.query(promql)]
            return until(found[0])

        try:
            wait_for(holds, timeout, 0.5, what=f"{promql} holding")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last result: {found[0] if found else None}") from None
        return found[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def scrape_config(server: HoneServer, credentials: Path) -> dict:
    credentials.write_text(server.admin_key)
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "deploy" / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "hone", "static_configs": [{"targets": [server.base_url[len("http://") :]]}]},
            {
                "job_name": "hone-engines",
                "http_sd_configs": [
                    {
                        "url": server.base_url + "/v1/admin/prometheus/targets",
                        "refresh_interval": "1s",
                        "authorization": {"type": "Bearer", "credentials_file": str(credentials)},
                    }
                ],
            },
        ],
    }


@pytest.fixture(scope="module")
def observed(tmp_path_factory, moto):
    postgres = PostgresDatabase()
    env = {
        **moto.env(),
        "HONE_DATABASE_URL": postgres.url,
        "HONE_STORAGE_URL": "s3://hone-observe/blobs",
        "HONE_LOCAL_SLOTS": "1",
        "HONE_AUTO_DEPLOY": "true",
        "HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON,
        # The FAKE trainer (tests/fake_trainer), at a pace Prometheus can watch: the real one trained this job's 90
        # steps in under 4 s on a fast machine, between two looks for "while it trains" (a flaky 120 s failure).
        **fake_trainer_env(step_s=0.1),
    }
    folder = tmp_path_factory.mktemp("observability")
    server = HoneServer(folder / "server", env)
    prometheus = Prometheus(folder / "prometheus", scrape_config(server, folder / "admin-key"))
    try:
        yield server, prometheus
    finally:
        prometheus.stop()
        server.stop()
        postgres.drop()


def test_prometheus_sees_a_job_train_and_its_model_serve(observed):
    server, prometheus = observed
    project = server.new_project("observed")
    client = project.openai()
    train, held_out = make(count=120, seed=3)
    file = client.files.create(file=("tickets.jsonl", jsonl(train)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=file.id,
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
    )
    selector = f'job_id="{job.id}"'

    # While it trains: per-job series from the trainer's reports.
    running = prometheus.wait_for(f"hone_job_step{{{selector}}}", until=lambda r: r and float(r[0]["value"][1]) >= 2)
    assert running[0]["metric"]["project_id"] == project.project_id
    assert running[0]["metric"]["base_model"] == "hone-tiny"
    assert prometheus.value(f"hone_job_total_steps{{{selector}}}") == -(-len(train) // 4) * 3
    assert prometheus.value(f"hone_job_tokens_per_second{{{selector}}}") > 0
    assert 0 < prometheus.value(f"hone_job_step_seconds{{{selector}}}") < 60
    assert 0 < prometheus.value(f"hone_job_train_loss{{{selector}}}") < 20
    assert prometheus.value(f"hone_job_trained_tokens{{{selector}}}") > 0
    assert abs(prometheus.value(f"hone_job_last_step_timestamp_seconds{{{selector}}}") - time.time()) < 60
    assert prometheus.value('hone_jobs{status="running"}') == 1
    prometheus.wait_for('hone_trained_tokens_total{base_model="hone-tiny"} > 0', timeout=30)

    job = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=600)
    with project.http() as http:
        endpoint = wait_endpoint(http, job.fine_tuned_model)
    assert endpoint["state"] == "ready", endpoint

    # Serve a few requests through the gateway, one streamed.
    prompts = [row["messages"][:-1] for row in held_out[:3]]
    replies = [
        client.chat.completions.create(model=job.fine_tuned_model, messages=p, max_tokens=8, temperature=0)
        for p in prompts[:2]
    ]
    list(
        client.chat.completions.create(
            model=job.fine_tuned_model, messages=prompts[2], max_tokens=8, temperature=0, stream=True
        )
    )
    prompt_tokens = sum(r.usage.prompt_tokens for r in replies)

    # Tokens counted while training match the job's trained_tokens.
    model = f'model="{job.fine_tuned_model}"'
    prometheus.wait_for('hone_jobs{status="succeeded"} == 1')
    assert prometheus.value('hone_trained_tokens_total{base_model="hone-tiny"}') == job.trained_tokens
    assert prometheus.value('hone_job_transitions_total{from="running",to="succeeded"}') == 1
    assert prometheus.value("hone_job_duration_seconds_count") == 1
    assert prometheus.value("hone_queue_wait_seconds_count") == 1
    # Per-job series are gone once the job stopped running.
    prometheus.wait_for(f"hone_job_step{{{selector}}}", until=lambda r: not r, timeout=30)

    # Gateway series for the model, once all three requests are scraped.
    prometheus.wait_for(f'sum(hone_gateway_requests_total{{{model},status="200"}}) == 3')
    assert prometheus.value(f'hone_gateway_tokens_total{{{model},type="prompt"}}') >= prompt_tokens
    assert prometheus.value(f"hone_gateway_time_to_first_token_seconds_count{{{model}}}") == 1
    assert prometheus.value(f"hone_gateway_request_duration_seconds_count{{{model}}}") == 3
    assert prometheus.value("sum(hone_adapter_load_seconds_count)") >= 1
    assert prometheus.value(f"hone_endpoint_up{{{model}}}") == 1
    assert prometheus.value('hone_endpoints{state="ready"}') == 1
    assert prometheus.value('hone_http_requests_total{method="POST",route="/v1/fine_tuning/jobs",status="200"}') == 1
    assert prometheus.value('sum(hone_storage_operation_seconds_count{backend="s3"})') > 0
    assert prometheus.value('hone_loop_lag_seconds{loop="scheduler"}') is not None

    # The engine, found through service discovery, exports vLLM's names under the endpoint's labels.
    engine = f'endpoint_id="{endpoint["id"]}"'
    try:
        up = prometheus.wait_for(f'up{{job="hone-engines",{engine}}} == 1')
    except AssertionError:
        with server.admin() as admin:
            sd = admin.get("/v1/admin/prometheus/targets").json()
        raise AssertionError(f"SD {sd}; targets {httpx.get(prometheus.url + '/api/v1/targets').json()}") from None
    assert up[0]["metric"]["model"] == job.fine_tuned_model
    generated = prometheus.wait_for(f"sum(vllm:generation_tokens_total{{{engine}}}) > 0")
    assert float(generated[0]["value"][1]) >= sum(r.usage.completion_tokens for r in replies)
    assert prometheus.value(f"sum(vllm:prompt_tokens_total{{{engine}}})") >= prompt_tokens
    assert prometheus.value(f"sum(vllm:e2e_request_latency_seconds_count{{{engine}}})") >= 3

    # Once the endpoint is deleted, its model's gateway series go from the exposition (the counts stay in
    # Prometheus's history).
    with project.http() as http:
        assert http.delete(f"/v1/endpoints/{endpoint['id']}").status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.base_url + "/metrics").text)}
    for name in metrics.MODEL_LABELLED:
        assert not [s for s in families[name].samples if s.labels.get("model") == job.fine_tuned_model], name
    assert not [s for s in families["hone_endpoint_up"].samples if s.labels["endpoint_id"] == endpoint["id"]]

    # The repository's alert rules load and evaluate against these series without errors.
    groups = httpx.get(prometheus.url + "/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {"HoneTrainerStalled", "HoneEndpointDown", "HoneGateway5xxRatioHigh"} <= {r["name"] for r in rules}
    prometheus.wait_for(
        "vector(1)",
        until=lambda _: all(
            r["health"] == "ok"
            for g in httpx.get(prometheus.url + "/api/v1/rules").json()["data"]["groups"]
            for r in g["rules"]
        ),
        timeout=30,
    )


def test_bogus_model_names_do_not_create_series(observed):
    server, prometheus = observed
    project = server.new_project("bogus")
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {project.api_key}"}) as http:
        for i in range(1000):
            reply = http.post(
                "/v1/chat/completions",
                json={"model": f"no-such-model-{i}", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
        exposition = httpx.get(server.base_url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    gateway = [s for s in families["hone_gateway_requests"].samples if s.name.endswith("_total")]
    assert not any("no-such-model" in s.labels["model"] for s in gateway)
    assert [s.value for s in gateway if s.labels == {"model": metrics.UNKNOWN, "status": "404"}] == [1000.0]
    http_series = [s for s in families["hone_http_requests"].samples if s.name.endswith("_total")]
    assert not any("no-such-model" in json.dumps(s.labels) for s in http_series)
    assert [
        s.value for s in http_series if s.labels == {"method": "POST", "route": "/v1/chat/completions", "status": "404"}
    ] == [1000.0]
    assert len(families["hone_gateway_requests"].samples) < 20
    prometheus.wait_for(f'hone_gateway_requests_total{{model="{metrics.UNKNOWN}",status="404"}} == 1000')
    assert prometheus.value('count({__name__=~"hone_.*", model=~"no-such-model.*"})') is None


def test_label_cap_folds_new_values_into_other():
    cap = metrics.LabelCap("model", 3)
    before = metrics.LABEL_OVERFLOW.labels(metric="model")._value.get()
    assert [cap(f"m{i}") for i in range(5)] == ["m0", "m1", "m2", metrics.OVERFLOW, metrics.OVERFLOW]
    assert cap("m1") == "m1"
    assert metrics.LABEL_OVERFLOW.labels(metric="model")._value.get() == before + 2


def _failures(exposition: str, project_id: str) -> dict[str, float]:
    """hone_job_failures_total of one project, by reason."""
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    return {
        s.labels["reason"]: s.value
        for s in families["hone_job_failures"].samples
        if s.name == "hone_job_failures_total" and s.labels["project_id"] == project_id
    }


def test_a_failed_job_is_counted_by_its_error_code_and_project(tmp_path, monkeypatch):
    """In process, against a real database (SQLite): jobs failed through the one transition function show in
    /metrics' hone_job_failures_total under their error code and project; a trainer's own code (not an ErrorCode)
    gets a series up to a cap, then folds into _other like the other capped labels; a job that does not fail adds
    nothing. hone_endpoint_up names the endpoint's project."""
    monkeypatch.setattr(metrics, "_reason_cap", metrics.LabelCap("reason", 1))
    ctx = AppContext.build(Settings(data_dir=tmp_path, storage_url=(tmp_path / "blobs").as_uri()))
    try:
        project_id = projects.create_project(ctx, "failures")["id"]
        exporter = MetricsExporter(ctx)
        assert _failures(exporter.render().decode(), project_id) == {}

        def run(code: str | None, target: JobStatus = JobStatus.FAILED) -> None:
            job_id = f"ftjob-fail{time.monotonic_ns()}"
            with ctx.db.write() as session:
                session.add(
                    Job(
                        id=job_id,
                        project_id=project_id,
                        model="hone-tiny",
                        base_model="hone-tiny",
                        status=JobStatus.RUNNING.value,
                        created_at=1,
                        started_at=5,
                        training_file="file-x",
                        method={"type": "supervised"},
                        seed=1,
                        result_files=[],
                    )
                )
            with ctx.db.write() as session:
                job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
                error = {"code": code, "message": "failed on purpose", "param": None}
                jobs.transition(
                    session, job, target, "the end", **({"error": error} if target is JobStatus.FAILED else {})
                )

        overflow = metrics.LABEL_OVERFLOW.labels(metric="reason")._value.get()
        run(ErrorCode.TRAINER_FAILED)
        run(ErrorCode.TRAINER_FAILED)
        run("invalid_training_file")  # as a plain string, as stored in the job's error
        run("training_diverged")  # a trainer's code: the one series the cap of 1 allows
        run("made_up_by_a_trainer")  # past the cap
        run(ErrorCode.NO_GPU_CAPACITY)  # ErrorCode values are never capped
        run(None, JobStatus.SUCCEEDED)
        run(None, JobStatus.CANCELLED)
        with ctx.db.write() as session:
            session.add(
                Endpoint(
                    id="ep_failures",
                    project_id=project_id,
                    model="hone-tiny",
                    kind="base",
                    base_model="hone-tiny",
                    state="ready",
                    created_at=1,
                    updated_at=1,
                )
            )
        exposition = exporter.render().decode()
    finally:
        ctx.db.dispose()
    assert _failures(exposition, project_id) == {
        "trainer_failed": 2.0,
        "invalid_training_file": 1.0,
        "training_diverged": 1.0,
        metrics.OVERFLOW: 1.0,
        "no_gpu_capacity": 1.0,
    }
    assert metrics.LABEL_OVERFLOW.labels(metric="reason")._value.get() == overflow + 1
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    assert [s.labels for s in families["hone_endpoint_up"].samples if s.labels["endpoint_id"] == "ep_failures"] == [
        {"endpoint_id": "ep_failures", "project_id": project_id, "model": "hone-tiny", "base_model": "hone-tiny"}
    ]


def test_failure_labels_stay_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "_reason_cap", metrics.LabelCap("reason", 2))
    monkeypatch.setattr(metrics, "_project_cap", metrics.LabelCap("project_id", 2))
    assert [metrics.failure_reason_label(c) for c in ("a", "b", "c", "a", None, "")] == [
        "a",
        "b",
        metrics.OVERFLOW,
        "a",
        metrics.UNKNOWN,
        metrics.UNKNOWN,
    ]
    assert {metrics.failure_reason_label(code) for code in ErrorCode} == {code.value for code in ErrorCode}
    assert [metrics.project_label(p) for p in ("proj_1", "proj_2", "proj_3")] == ["proj_1", "proj_2", metrics.OVERFLOW]
    metrics.configure(7)
    try:
        assert metrics._project_cap.limit == 7  # HONE_METRICS_MAX_LABEL_VALUES caps projects as it caps models
    finally:
        metrics.configure(500)


def _exposed(url: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text)}


def _chat(server: HoneServer, api_key: str, model: str) -> int:
    """One request on a connection of its own, so the kernel may hand it to either worker."""
    reply = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    return reply.status_code


def test_several_workers_share_metrics_and_one_leads(tmp_path):
    """HONE_WORKERS=2: uvicorn runs two processes. Their counters add up whichever one answers the scrape, one
    of them runs the scheduler and the engines, both route gateway requests, a job trained under them is
    counted once, and when the leading worker dies the other takes over and redeploys the endpoint. The job's
    trainer is the FAKE one (tests/fake_trainer): what is checked is how the workers count it, and the endpoint
    serves the base model, so no tuned weights are needed; its engine is the fake engine (the module docstring)."""
    server = HoneServer(
        tmp_path,
        {
            "HONE_WORKERS": "2",
            "HONE_LOCAL_SLOTS": "1",
            "HONE_AUTO_DEPLOY": "true",
            "HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON,
            **fake_trainer_env(),
        },
    )
    try:
        deadline = time.monotonic() + 60
        while server.logs().count("hone control plane ready") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # the health check answered once the first worker was up
        project = server.new_project("workers")
        with project.http() as http:
            for _ in range(40):
                assert http.get("/v1/models").status_code == 200
        readiness = [httpx.get(server.base_url + "/readyz").json()["checks"]["scheduler"] for _ in range(30)]
        assert set(readiness) <= {"ok", "standby"}
        families = _exposed(server.base_url)
        served = [
            s.value
            for s in families["hone_http_requests"].samples
            if s.name.endswith("_total") and s.labels["route"] == "/v1/models"
        ]
        assert served == [40.0]
        assert (server.logs().count('"leader": true'), server.logs().count("another server process leads")) == (1, 1)

        client = project.openai()
        file = client.files.create(file=("tickets.jsonl", jsonl(make(count=20, seed=5)[0])), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=file.id,
            seed=1,
            hyperparameters={"n_epochs": 1, "batch_size": 4},
            extra_body={"auto_deploy": False},
        )
        job = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=300)
        tokens = [
            s.value for s in _exposed(server.base_url)["hone_trained_tokens"].samples if s.name.endswith("_total")
        ]
        assert tokens == [float(job.trained_tokens)]

        # An endpoint of the base model (no training needed) is served through either worker.
        with project.http() as http:
            assert http.post("/v1/endpoints", json={"model": "hone-tiny"}).status_code == 200
            endpoint = wait_endpoint(http, "hone-tiny")
        assert endpoint["state"] == "ready", endpoint
        assert [_chat(server, project.api_key, "hone-tiny") for _ in range(12)] == [200] * 12

        # The leader dies: uvicorn starts a new worker, and the surviving worker or the new one takes the lock
        # within seconds, stops the engines the dead one left and deploys the endpoint again.
        lock = tmp_path / "leader.lock"
        leader_pid = int(lock.read_text())
        os.kill(leader_pid, signal.SIGKILL)
        wait_for(lambda: lock.read_text() not in ("", str(leader_pid)), 60, 0.2, "another worker taking the lead")
        assert psutil.pid_exists(int(lock.read_text()))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _chat(server, project.api_key, "hone-tiny") != 200:
            time.sleep(0.5)
        assert [_chat(server, project.api_key, "hone-tiny") for _ in range(6)] == [200] * 6
    finally:
        server.stop()
