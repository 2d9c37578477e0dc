"""HONE_ENDPOINT_BACKEND=static: Hone hot-loads adapters into inference servers someone else runs.

What is fake here, and why: vLLM cannot run on these machines (no GPU), so "the operator's vLLM server" is the
built-in engine (`python -m inference`), which takes `vllm serve`'s flags and speaks vLLM's LoRA protocol. It is
started by this test, not by Hone, as compose's `vllm` service would be. Everything else is real: the control
plane, the trainer, PostgreSQL or SQLite, moto's S3 and the openai SDK."""

from __future__ import annotations

import json
import os
import sys

import httpx
import pytest

from service.engines import EngineSpec, EngineStartError
from service.engines.static import StaticEngines
from service.settings import Settings
from tests.support import (
    HoneServer,
    free_port,
    jsonl,
    one_label_tickets,
    start_python,
    wait_endpoint,
    wait_for,
    wait_http,
    wait_job,
)

API_KEY = "sk-operator-vllm"


def _spec(**changes) -> EngineSpec:
    values = dict(
        key="ep-1",
        engine="vllm",
        model_path="/x",
        served_name="hone-tiny",
        max_loras=2,
        max_cpu_loras=2,
        max_lora_rank=16,
    )
    return EngineSpec(**{**values, **changes})


def test_what_a_server_someone_else_runs_cannot_do_is_refused_with_a_reason(tmp_path):
    engines = StaticEngines(Settings(data_dir=tmp_path, static_engines={"hone-tiny": "http://127.0.0.1:9"}))
    with pytest.raises(
        EngineStartError,
        match=r"no engine serves base model 'llama-3': add it to HONE_STATIC_ENGINES "
        r"\(configured: \['hone-tiny'\]\)",
    ):
        engines.ensure(_spec(served_name="llama-3"))
    with pytest.raises(EngineStartError, match="fully tuned weights need an engine of their own"):
        engines.ensure(_spec(model_source="storage:jobs/ftjob-1/model/"))
    with pytest.raises(EngineStartError, match="at http://127.0.0.1:9 is not healthy"):
        StaticEngines(
            Settings(data_dir=tmp_path, static_engines={"hone-tiny": "http://127.0.0.1:9"}, engine_start_timeout_s=0.5)
        ).ensure(_spec())
    assert engines.keys() == []


class OperatorServer:
    """The built-in engine on a fixed port, as an operator's `vllm serve hone-tiny --enable-lora ...`."""

    def __init__(self, log_path):
        from tests.test_engine_protocol import base_model

        self.port, self.model, self.log_path = free_port(), str(base_model()), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> OperatorServer:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_"))},
            "VLLM_API_KEY": API_KEY,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
            "OMP_NUM_THREADS": "1",
        }
        argv = [sys.executable, "-m", "inference", "--model", self.model, "--served-model-name", "hone-tiny"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--enable-lora", "--max-loras", "2"]
        self.proc = start_python([*argv, "--max-lora-rank", "64"], env, self.log_path)  # warm, as Hone starts one
        try:
            wait_http(self.url + "/health", timeout=120, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def models(self) -> dict[str, str]:
        cards = httpx.get(self.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
        return {c["id"]: c["root"] for c in cards}


@pytest.fixture
def operator(tmp_path):
    server = OperatorServer(tmp_path / "vllm.log")
    try:
        yield server.start()
    finally:
        server.stop()


def test_adapters_hot_load_into_a_server_hone_does_not_run(moto, tmp_path, operator):
    env = {
        **moto.env(),
        "HONE_STORAGE_URL": "s3://hone-static/blobs",
        "HONE_ENDPOINT_BACKEND": "static",
        "HONE_STATIC_ENGINES": json.dumps({"hone-tiny": operator.url}),
        "HONE_STATIC_ENGINE_API_KEY": API_KEY,
        "HONE_AUTO_DEPLOY": "true",
    }
    server = HoneServer(tmp_path / "server", env)
    try:
        client = server.new_project("static").openai()
        http = server.new_project("static-2").http()
        train, held_out = one_label_tickets(seed=5)
        file = client.files.create(file=("tickets.jsonl", jsonl(train)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=file.id,
            seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
        )
        job = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=300)
        owner = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {client.api_key}"})
        endpoint = wait_endpoint(owner, job.fine_tuned_model)
        assert endpoint["state"] == "ready", endpoint["error"]

        # Loaded by path from Hone's adapter cache, which the server sees (one volume in compose).
        root = operator.models()[job.fine_tuned_model]
        assert root.startswith(str(tmp_path / "server")) and os.path.isfile(os.path.join(root, "adapter_config.json"))
        messages = held_out[0]["messages"][:-1]
        through_hone = (
            client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=16, temperature=0)
            .choices[0]
            .message.content
        )

        def direct(model: str) -> str:
            return httpx.post(
                operator.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {API_KEY}"},
                json={"model": model, "messages": messages, "max_tokens": 16, "temperature": 0},
                timeout=60,
            ).json()["choices"][0]["message"]["content"]

        assert through_hone == direct(job.fine_tuned_model) and through_hone
        assert through_hone.strip() == "Billing"  # the trained label
        assert through_hone != direct("hone-tiny")  # the adapter, not the base weights, answered
        assert http.get(f"/v1/endpoints/{endpoint['id']}").status_code == 404  # another project's

        # The operator restarts the server: its runtime-loaded adapters are gone, and Hone loads them again.
        # (Hone may load it again before this test looks: what shows it was gone is the new process being asked.)
        before, logged = operator.proc.pid, operator.log_path.stat().st_size
        operator.stop()
        operator.start()
        assert operator.proc.pid != before
        again = _wait_restarts(owner, endpoint["id"], endpoint["restarts"] + 1)
        assert again["state"] == "ready" and job.fine_tuned_model in operator.models()
        with open(operator.log_path, "rb") as log:
            log.seek(logged)
            assert b'"path": "/v1/load_lora_adapter"' in log.read()  # Hone loaded it into the new process

        # Deleting the endpoint unloads the adapter; the server itself keeps running (it is not Hone's).
        assert owner.delete(f"/v1/endpoints/{endpoint['id']}").status_code == 200
        wait_for(lambda: job.fine_tuned_model not in operator.models(), 60, what="the adapter unloading")
        assert operator.proc.poll() is None and "hone-tiny" in operator.models()
        owner.close()
        http.close()
    finally:
        server.stop()


def _wait_restarts(http: httpx.Client, endpoint_id: str, restarts: int) -> dict:
    found = {}

    def ready_again() -> bool:
        found.update(http.get(f"/v1/endpoints/{endpoint_id}").json())
        return found["state"] == "ready" and found["restarts"] >= restarts

    wait_for(ready_again, 60, 0.2, what=f"endpoint {endpoint_id} redeploying")
    return found
