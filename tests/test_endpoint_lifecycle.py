"""What the control plane does with engines: deploying, restarting, scaling to zero and waking, sharing one engine
among adapters, giving full weights their own, replacing a dead predecessor's engines, giving up on an engine
that cannot start, stopping an engine when its model goes. Real control-plane servers, real trainers, real engine
subprocesses started by the local endpoint backend, PostgreSQL and S3 (moto) under the module's server.

The engines are the FAKE engine (`HONE_ENGINE_PYTHON=tests/fake_engine/python`; tests/fake_engine says what it
is): these tests start and stop engines many times, and the built-in engine imports torch and loads a model on
every start. The fake speaks the same protocol (tests/test_engine_protocol.py runs its checks against both) with
the built-in engine's own server, and the deployer's parity gate runs on it for real, but it answers
"answer <digest of the weights>" instead of generating. So where a test used to check a label the model
learned, it checks that the same weights answer as before. What only a real model shows (a tuned model labels
held-out tickets, streaming as generated, the parity gate catching a mismatched template, a killed engine
restarted end to end) is in tests/tuned_tickets/test_serving.py, on the built-in engine."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.fake_engine.engine import answer_of
from tests.support import (
    FAKE_ENGINE_PYTHON,
    HoneServer,
    PostgresDatabase,
    chat_reply,
    engine_pids,
    one_label_tickets,
    tune_hone_tiny,
    wait_endpoint,
    wait_for,
)

FAKE = {"HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON}


@pytest.fixture(scope="module")
def served(tmp_path_factory, moto):
    """One tuned model, deployed by itself when its job succeeded, shared by the tests that only need one."""
    postgres = PostgresDatabase()
    env = {
        **moto.env(),
        **FAKE,
        "HONE_DATABASE_URL": postgres.url,
        "HONE_STORAGE_URL": "s3://hone-lifecycle/blobs",
        "HONE_LOCAL_SLOTS": "1",
        "HONE_AUTO_DEPLOY": "true",
    }
    server = HoneServer(tmp_path_factory.mktemp("lifecycle"), env)
    try:
        project = server.new_project("tickets")
        client = project.openai()
        train, held_out = one_label_tickets(seed=7)
        # The engine is fake, so what the model learns does not matter: a small job gives an adapter fast.
        job = tune_hone_tiny(client, train, n_epochs=2, batch_size=4)
        with project.http() as http:
            endpoint = wait_endpoint(http, job.fine_tuned_model)
        assert endpoint["state"] == "ready", endpoint
        yield {
            "server": server,
            "project": project,
            "client": client,
            "job": job,
            "held_out": held_out,
            "endpoint": endpoint,
        }
    finally:
        server.stop()
        postgres.drop()


def test_deploying_endpoint_answers_503_with_retry_after(served):
    project = served["server"].new_project("base only")
    with project.http() as http:
        created = http.post("/v1/endpoints", json={"model": "hone-tiny"}).json()
        early = http.post(
            "/v1/chat/completions", json={"model": "hone-tiny", "messages": [{"role": "user", "content": "hi"}]}
        )
        ready = wait_endpoint(http, "hone-tiny")
        later = http.post(
            "/v1/chat/completions",
            json={"model": "hone-tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        )
        http.delete(f"/v1/endpoints/{created['id']}")
    assert created["kind"] == "base" and created["state"] == "deploying"
    assert early.status_code == 503 and early.headers["retry-after"] == "5"
    assert early.json()["error"]["code"] == "model_deploying"
    assert ready["state"] == "ready" and later.status_code == 200


def test_idle_endpoint_scales_to_zero_and_the_next_request_wakes_it(served):
    project, model, ep = served["project"], served["job"].fine_tuned_model, served["endpoint"]
    row = served["held_out"][1]
    # The fake engine answers with a digest of its weights, not a learned label: the woken engine must answer
    # with the endpoint's weights.
    expected = answer_of(served["server"].data_dir / "adapters" / ep["id"])
    with project.http() as http:
        refused = http.post("/v1/endpoints", json={"model": model, "idle_timeout_s": -1})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "idle_timeout_s"
        changed = http.post("/v1/endpoints", json={"model": model, "idle_timeout_s": 3}).json()
        assert changed["id"] == ep["id"] and changed["idle_timeout_s"] == 3 and changed["state"] == "ready"
        deadline = time.monotonic() + 60
        while (current := http.get(f"/v1/endpoints/{ep['id']}").json())["state"] != "idle":
            assert time.monotonic() < deadline and current["state"] == "ready", current
            time.sleep(0.3)
        # Scaled to zero: its engine is gone, and an idle endpoint is not "down" to Prometheus.
        assert wait_for(lambda: not engine_pids(served["server"], ep["id"]), timeout=20)
        exposition = http.get("/metrics").text
        assert f'endpoint_id="{ep["id"]}"' not in "\n".join(
            line for line in exposition.splitlines() if line.startswith("hone_endpoint_up")
        )
        assert 'hone_endpoints{state="idle"} 1.0' in exposition
        # The next request wakes it and waits for it (a cold start), then answers as before.
        started = time.monotonic()
        assert chat_reply(served["client"], model, row) == expected
        woke_in = time.monotonic() - started
        after = http.post("/v1/endpoints", json={"model": model, "idle_timeout_s": 0}).json()
    assert after["state"] == "ready" and after["idle_timeout_s"] == 0 and after["error"] is None
    assert len(engine_pids(served["server"], ep["id"])) == 1
    assert woke_in > 0.5  # it did wait for an engine to start


def test_fully_tuned_weights_get_an_engine_of_their_own(served):
    # On the module's server (the original started one of its own with the same serving settings).
    client, held_out = served["client"], served["held_out"]
    train, _ = one_label_tickets(seed=3)
    job = tune_hone_tiny(client, train, tuning_mode="full", n_epochs=1, batch_size=4, learning_rate_multiplier=1.0)
    with served["project"].http() as http:
        ep = wait_endpoint(http, job.fine_tuned_model)
    assert ep["state"] == "ready" and ep["kind"] == "full", ep["error"]
    assert ep["id"] != served["endpoint"]["id"] and engine_pids(served["server"], ep["id"])
    answer = chat_reply(client, job.fine_tuned_model, held_out[0])
    assert answer == chat_reply(client, job.fine_tuned_model, held_out[0], stream=True)


def test_deleting_the_model_stops_its_engine_and_cleans_its_cache(served):
    client, project, ep = served["client"], served["project"], served["endpoint"]
    model = served["job"].fine_tuned_model
    cache = served["server"].data_dir / "adapters" / ep["id"]
    assert cache.is_dir() and (cache / "adapter_model.safetensors").exists()
    client.models.delete(model)
    with project.http() as http:
        deadline = time.monotonic() + 60
        while engine_pids(served["server"], ep["id"]) or cache.exists():
            assert time.monotonic() < deadline, "engine or cache still there"
            time.sleep(0.2)
        stopped = http.get(f"/v1/endpoints/{ep['id']}").json()
        gone = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert stopped["state"] == "stopped" and stopped["error"]["code"] == "model_deleted"
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_shared_engine_serves_several_adapters_of_one_base(tmp_path):
    """HONE_SHARED_ENGINES: one engine for hone-tiny, with the tuned model and a checkpoint hot-loaded side by side."""
    server = HoneServer(
        tmp_path / "shared",
        {**FAKE, "HONE_LOCAL_SLOTS": "1", "HONE_AUTO_DEPLOY": "true", "HONE_SHARED_ENGINES": "true"},
    )
    try:
        project = server.new_project("shared")
        client = project.openai()
        train, held_out = one_label_tickets(seed=3)
        job = tune_hone_tiny(client, train, n_epochs=2, batch_size=4)
        first_ckpt = sorted(client.fine_tuning.jobs.checkpoints.list(job.id), key=lambda c: c.step_number)[-2]
        with project.http() as http:
            tuned = wait_endpoint(http, job.fine_tuned_model)
            ckpt = http.post("/v1/endpoints", json={"model": first_ckpt.id}).json()
            ckpt = wait_endpoint(http, first_ckpt.fine_tuned_model_checkpoint)
            assert tuned["state"] == ckpt["state"] == "ready", (tuned["error"], ckpt["error"])
            engines = sorted(p.name for p in (server.data_dir / "engines").iterdir())
            assert engines == ["base_hone-tiny.json"]  # one engine process, two adapters
            pid = engine_pids(server, "base:hone-tiny")
            row = held_out[0]
            answers = {m: chat_reply(client, m, row) for m in (job.fine_tuned_model, first_ckpt.id, "hone-tiny")}
            assert all(isinstance(a, str) for a in answers.values())
            # The fake names the weights that answered: the one engine served each model with its own.
            assert len(set(answers.values())) == 3, answers
            http.delete(f"/v1/endpoints/{ckpt['id']}")
            deadline = time.monotonic() + 30
            while (server.data_dir / "adapters" / ckpt["id"]).exists():
                assert time.monotonic() < deadline
                time.sleep(0.2)
            gone = http.post("/v1/chat/completions", json={"model": first_ckpt.id, "messages": row["messages"][:-1]})
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_deployed"
            assert chat_reply(client, job.fine_tuned_model, row) == answers[job.fine_tuned_model]
            assert engine_pids(server, "base:hone-tiny") == pid  # the shared engine kept serving the other
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_restarted_control_plane_replaces_engines_its_predecessor_left(tmp_path):
    server = HoneServer(tmp_path / "cp", {**FAKE, "HONE_AUTO_DEPLOY": "true"})
    restarted = None
    try:
        project = server.new_project("restart")
        with project.http() as http:
            created = http.post("/v1/endpoints", json={"model": "hone-tiny"}).json()
            assert wait_endpoint(http, "hone-tiny")["state"] == "ready"
        old = engine_pids(server, created["id"])
        assert old
        server.stop(signal.SIGKILL)  # no shutdown: its engine lives on, orphaned
        assert (Path("/proc") / str(old[0])).exists()
        restarted = HoneServer(tmp_path / "cp", {**FAKE, "HONE_AUTO_DEPLOY": "true"}, port=server.port)
        with project.http() as http:
            deadline = time.monotonic() + 120
            while True:
                ep = http.get(f"/v1/endpoints/{created['id']}").json()
                if ep["state"] == "ready" and ep["restarts"] >= 1:
                    break
                assert time.monotonic() < deadline, ep
                time.sleep(0.3)
            reply = http.post(
                "/v1/chat/completions",
                json={"model": "hone-tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
            )
        assert reply.status_code == 200
        new = engine_pids(restarted, created["id"])
        assert new and new != old
        environ = (Path("/proc") / str(new[0]) / "environ").read_bytes().split(b"\0")
        cmdline = (Path("/proc") / str(new[0]) / "cmdline").read_bytes()
        assert not [v for v in environ if v.startswith((b"HONE_ADMIN_API_KEY=", b"HONE_DATABASE_URL="))]
        key = next(v for v in environ if v.startswith(b"VLLM_API_KEY=")).split(b"=", 1)[1]
        assert key and key not in cmdline  # the engine's key is not on its command line, where ps shows it
        assert not _alive(old[0])
    finally:
        (restarted or server).stop()


def test_an_engine_that_cannot_start_fails_the_endpoint_after_the_attempt_limit(tmp_path):
    server = HoneServer(
        tmp_path / "broken",
        {**FAKE, "HONE_MAX_DEPLOY_ATTEMPTS": "2", "HONE_BASE_MODELS": '{"acme/broken": "/nonexistent/model"}'},
    )
    try:
        project = server.new_project("broken")
        with project.http() as http:
            created = http.post("/v1/endpoints", json={"model": "acme/broken"}).json()
            ep = wait_endpoint(http, "acme/broken", timeout=120)
            refused = http.post("/v1/completions", json={"model": "acme/broken", "prompt": "hi"})
    finally:
        server.stop()
    assert created["state"] == "deploying" and created["kind"] == "base"
    assert ep["state"] == "failed" and ep["error"]["code"] == "engine_start_failed"
    assert "did not become healthy" in ep["error"]["message"]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "endpoint_failed"
    assert not (server.data_dir / "engines" / f"{ep['id']}.json").exists()
    # The fake fails as the built-in engine does: the process exits because the model folder has no model.
    assert "engine crashed" in (server.data_dir / "logs" / "engines" / f"{ep['id']}.log").read_text()


def test_the_fake_engine_imports_no_torch():
    """What makes it worth faking: the fake (and the real engine's server modules it runs) import no torch."""
    import subprocess

    code = (
        "import sys, tests.fake_engine.engine, tests.fake_engine.__main__, inference.server; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run(
        [FAKE_ENGINE_PYTHON, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr)
