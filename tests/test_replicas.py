"""Serving big models: tensor/pipeline parallel sizes from the base-model registry, and endpoints with several
replicas behind the gateway.

What is fake here, and why: vLLM and GPUs cannot run on these machines, so the local backend's vLLM path runs a
stand-in `vllm` script (written below) that records the command line and CUDA_VISIBLE_DEVICES it was given and
then serves with the FAKE engine (tests/fake_engine, torch-free, the built-in engine's own server): what is
tested there is which devices and flags each replica gets. The replica spread at the end is real: a control
plane, the real trainer, and two real built-in engines (`python -m inference` on hone-tiny), one of them killed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from service.base_models import BaseModelRegistry
from service.deploy import DeployError
from service.deploy.placement import EngineKey, Placement
from service.endpoints import ServedModel, check_servable
from service.engines import EngineSpec, EngineStartError
from service.engines.devices import EngineDevices
from service.engines.local import LocalEngines, state_file
from service.errors import InvalidRequest
from service.gateway_replicas import ReplicaPicker
from service.settings import Settings
from tests.support import (
    MODEL_CACHE,
    REPO,
    HoneServer,
    one_label_tickets,
    tune_hone_tiny,
    wait_endpoint,
    wait_for,
)

SPLIT = {"source": "/models/llama-70b", "tensor_parallel_size": 4, "pipeline_parallel_size": 2}


# --- the registry and where a split model is refused -----------------------------------------------------------


def test_registry_entries_carry_parallel_sizes():
    registry = BaseModelRegistry({"acme/llama-70b": SPLIT, "acme/small": "/models/small"})
    big, small = registry.get("acme/llama-70b"), registry.get("acme/small")
    assert big is not None and small is not None
    assert (big.tensor_parallel_size, big.pipeline_parallel_size, big.serving_devices) == (4, 2, 8)
    assert (small.tensor_parallel_size, small.pipeline_parallel_size, small.serving_devices) == (1, 1, 1)
    shown = BaseModelRegistry.as_admin_api(big)
    assert shown["tensor_parallel_size"] == 4 and shown["pipeline_parallel_size"] == 2
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ValueError, match=r"tensor_parallel_size must be a positive integer"):
            BaseModelRegistry({"m": {"source": "/m", "tensor_parallel_size": bad}})
    with pytest.raises(ValueError, match="unknown key.*tensor_paralel_size"):  # a typo is refused, not ignored
        BaseModelRegistry({"m": {"source": "/m", "tensor_paralel_size": 2}})


def _ctx(tmp_path: Path, **settings) -> SimpleNamespace:
    """What check_servable and Placement read of the app context: settings and the registry (no database)."""
    return SimpleNamespace(
        settings=Settings(data_dir=tmp_path, **settings),
        base_models=BaseModelRegistry({"acme/llama-70b": SPLIT, "acme/small": "/models/small"}),
    )


def test_a_split_model_is_refused_on_the_builtin_engine(tmp_path):
    """At endpoint creation (400 naming `model`) and at deploy (a finished job's endpoint fails for good, not
    retried), with the same reason: the built-in engine runs a model whole in one CPU process."""
    ctx = _ctx(tmp_path, inference_engine="builtin")
    served = ServedModel("acme/llama-70b", "base", "acme/llama-70b")
    with pytest.raises(InvalidRequest) as refused:
        check_servable(ctx, served, 1)  # type: ignore[arg-type]  # the context's two parts it reads
    assert refused.value.param == "model" and refused.value.code == "model_not_available"
    assert "tensor_parallel_size 4" in refused.value.message and "built-in engine" in refused.value.message
    check_servable(ctx, ServedModel("acme/small", "base", "acme/small"), 1)  # type: ignore[arg-type]

    with pytest.raises(DeployError) as failed:
        Placement(ctx, "builtin").base_spec("acme/llama-70b", EngineKey.own("ep-1"))  # type: ignore[arg-type]
    assert not failed.value.retry and "built-in engine" in failed.value.message
    spec = Placement(ctx, "vllm").base_spec("acme/llama-70b", EngineKey.own("ep-1"))  # type: ignore[arg-type]
    assert (spec.tensor_parallel_size, spec.pipeline_parallel_size, spec.devices) == (4, 2, 8)


def test_replicas_are_refused_where_they_cannot_be_served(tmp_path):
    small = ServedModel("acme/small", "base", "acme/small")
    for settings, says in (
        ({"endpoint_backend": "static"}, "HONE_ENDPOINT_BACKEND=static"),
        ({"shared_engines": True}, "HONE_SHARED_ENGINES"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            check_servable(_ctx(tmp_path, **settings), small, 2)  # type: ignore[arg-type]
        assert refused.value.param == "replicas" and says in refused.value.message
        check_servable(_ctx(tmp_path, **settings), small, 1)  # type: ignore[arg-type]
    # vLLM on the local backend: 8 GPUs a replica, 10 to hand out
    ctx = _ctx(tmp_path, inference_engine="vllm", engine_devices=",".join(map(str, range(10))))
    check_servable(ctx, ServedModel("acme/llama-70b", "base", "acme/llama-70b"), 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as refused:
        check_servable(ctx, ServedModel("acme/llama-70b", "base", "acme/llama-70b"), 2)  # type: ignore[arg-type]
    assert refused.value.param == "replicas" and refused.value.code == "no_gpu_capacity"
    assert "need 16 GPU(s)" in refused.value.message


# --- the gateway's choice of replica -------------------------------------------------------------------------


def test_least_outstanding_with_round_robin_ties(monkeypatch):
    picker = ReplicaPicker()
    urls = ("http://a", "http://b", "http://c")
    # nothing outstanding (sequential callers): each replica in turn
    order = []
    for _ in range(6):
        chosen = picker.pick(urls, set())
        assert chosen is not None
        order.append(chosen)
        picker.done(chosen)
    assert order == [*urls, *urls]
    # a long request holds a: the next ones go to b and c until it ends
    long = picker.pick(urls, set())
    assert long == "http://a"
    picks = [picker.pick(urls, set()) for _ in range(2)]
    assert sorted(picks) == ["http://b", "http://c"]  # type: ignore[type-var]
    assert picker.outstanding("http://a") == picker.outstanding("http://b") == 1
    # a replica that refused a connection is passed over, unless every one has
    picker.down("http://b")
    assert {picker.pick(urls, set()) for _ in range(4)} == {"http://a", "http://c"}
    assert picker.pick(urls, {"http://a", "http://c"}) == "http://b"  # the request still tries it
    assert picker.pick(urls, set(urls)) is None  # all tried: the gateway answers 502
    now = time.monotonic()
    monkeypatch.setattr("service.gateway_replicas.time.monotonic", lambda: now + 11)  # DOWN_S later
    assert "http://b" in {picker.pick(urls, set()) for _ in range(6)}


# --- the local backend: devices and replicas -----------------------------------------------------------------


def test_device_pool_hands_out_disjoint_devices():
    pool = EngineDevices(["0", "1", "2"])
    assert pool.take("a", 2) == ("0", "1") and pool.take("b", 1) == ("2",)
    with pytest.raises(EngineStartError, match="needs 1 GPU.*0 of the 3"):
        pool.take("c", 1)
    pool.release("a")
    assert pool.take("c", 2) == ("0", "1")
    assert EngineDevices([]).take("d", 4) == ()  # no pool named: nothing counted, nothing assigned


FAKE_VLLM = """#!{python}
# A stand-in for `vllm serve MODEL FLAGS` (see the module docstring): records what it was given, then serves.
import json, os, sys
argv = sys.argv[1:]
with open({record!r}, "a") as out:
    out.write(json.dumps({{"argv": argv, "devices": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\\n")
assert argv[0] == "serve"
model, flags = argv[1], argv[2:]
for parallel in ("--tensor-parallel-size", "--pipeline-parallel-size", "--structured-outputs-config"):  # vLLM's own
    if parallel in flags:
        del flags[flags.index(parallel) : flags.index(parallel) + 2]
os.environ["PYTHONPATH"] = {repo!r}
os.execv(sys.executable, [sys.executable, "-m", "tests.fake_engine", "--model", model, *flags])
"""


def test_local_vllm_replicas_each_get_their_own_gpus(tmp_path):
    record = tmp_path / "vllm-runs.jsonl"
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    vllm = bin_dir / "vllm"  # found beside HONE_ENGINE_PYTHON, as a virtualenv's would be
    vllm.write_text(FAKE_VLLM.format(python=sys.executable, record=str(record), repo=str(REPO)))
    vllm.chmod(vllm.stat().st_mode | stat.S_IEXEC)
    settings = Settings(
        data_dir=tmp_path / "data",
        engine_python=str(bin_dir / "python"),
        engine_devices="0,1,2,3,4",
        model_cache_dir=str(MODEL_CACHE),
        engine_start_timeout_s=60,
    )
    spec = EngineSpec(
        "ep-split",
        "vllm",
        str(MODEL_CACHE / "hone-tiny"),
        "hone-tiny",
        max_loras=1,
        max_cpu_loras=1,
        max_lora_rank=16,
        model_source="builtin:hone-tiny",
        tensor_parallel_size=2,
        replicas=2,
    )
    engines = LocalEngines(settings)
    try:
        handle = engines.ensure(spec)
        runs = [json.loads(line) for line in record.read_text().splitlines()]
        assert len(runs) == 2 and len(handle.ready) == 2 and len(set(handle.request_urls)) == 2
        assert sorted(run["devices"] for run in runs) == ["0,1", "2,3"]  # two each, none shared
        for run in runs:
            assert run["argv"][run["argv"].index("--tensor-parallel-size") + 1] == "2"
            assert "--pipeline-parallel-size" not in run["argv"]  # 1: vLLM's default, not passed
        for url in handle.request_urls:  # both serve, with the key's one API key
            reply = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {handle.api_key}"})
            assert reply.status_code == 200
        state = json.loads(state_file(settings.server.data_dir, "ep-split").read_text())
        assert [r["url"] for r in state["replicas"]] == list(handle.request_urls)

        # A third replica needs two more GPUs; one is free: the endpoint keeps serving on the two it has.
        more = engines.ensure(dataclasses.replace(spec, replicas=3))
        assert len(more.ready) == 2 and len(record.read_text().splitlines()) == 2

        # A replica that dies frees its GPUs; ensuring again replaces it on them, the other left running.
        survivor, victim = state["replicas"]
        os.killpg(victim["pid"], signal.SIGKILL)
        wait_for(lambda: engines.get("ep-split") is not None and len(engines.get("ep-split").ready) == 1)
        again = engines.ensure(spec)
        assert len(again.ready) == 2 and survivor["url"] in again.request_urls
        assert victim["url"] not in again.request_urls
        assert json.loads(record.read_text().splitlines()[-1])["devices"] == victim_devices(runs, victim, record)
    finally:
        engines.close()
    assert engines.devices.held() == {}  # every GPU back in the pool


def victim_devices(runs: list[dict], victim: dict, record: Path) -> str:
    """The devices the killed replica had (its run recorded the port it served on)."""
    port = victim["url"].rsplit(":", 1)[1]
    return next(run["devices"] for run in runs if run["argv"][run["argv"].index("--port") + 1] == port)


# --- two real built-in engines behind one endpoint -----------------------------------------------------------


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """A tuned hone-tiny adapter served by an endpoint with two replicas: two `python -m inference` engines."""
    env = {
        "HONE_LOCAL_SLOTS": "1",
        "HONE_INFERENCE_ENGINE": "builtin",
        "HONE_BASE_MODELS": json.dumps({"acme/split": {"source": "/models/split", "tensor_parallel_size": 2}}),
    }
    server = HoneServer(tmp_path_factory.mktemp("replicas"), env)
    try:
        project = server.new_project("replicas")
        train, held_out = one_label_tickets(seed=7)
        # as the RFT tests train their parent: enough that the smoke generation of the parity gate stops
        job = tune_hone_tiny(project.openai(), train, n_epochs=3, batch_size=4, learning_rate_multiplier=3)
        with project.http() as http:
            created = http.post("/v1/endpoints", json={"model": job.fine_tuned_model, "replicas": 2})
            assert created.status_code == 200, created.text
            assert created.json()["replicas"] == 2 and created.json()["ready_replicas"] == 0
            endpoint = wait_endpoint(http, job.fine_tuned_model)
        assert endpoint["state"] == "ready" and endpoint["ready_replicas"] == 2, endpoint
        yield {
            "server": server,
            "project": project,
            "model": job.fine_tuned_model,
            "endpoint": endpoint,
            "rows": held_out * 3,  # 4 held-out prompts, each asked more than once
        }
    finally:
        server.stop()


def _replicas(server: HoneServer, endpoint_id: str) -> tuple[list[dict], str]:
    """The endpoint's engines (pid, url) and their API key, from the local backend's state file."""
    state = json.loads(state_file(server.data_dir, endpoint_id).read_text())
    return state["replicas"], state["api_key"]


def _served(url: str, api_key: str) -> int:
    """Requests an engine finished, from its own /metrics (vLLM's request_success counter)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {api_key}"}, timeout=10).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total")
        )
    )


def _ask(http: httpx.Client, model: str, row: dict) -> httpx.Response:
    messages = [m for m in row["messages"] if m["role"] != "assistant"]
    return http.post("/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 4})


def test_requests_spread_over_both_replicas(replicated):
    server, model = replicated["server"], replicated["model"]
    replicas, api_key = _replicas(server, replicated["endpoint"]["id"])
    assert len(replicas) == 2
    before = [_served(r["url"], api_key) for r in replicas]
    with replicated["project"].http() as http:
        for row in replicated["rows"][:8]:
            reply = _ask(http, model, row)
            # each replica has the adapter (one without would answer 404 for the model)
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == model
        # streamed: the replica is freed when the stream ends (else the next ones would all go to the other)
        for row in replicated["rows"][:2]:
            body = {"model": model, "messages": row["messages"][:-1], "max_tokens": 4, "stream": True}
            with http.stream("POST", "/v1/chat/completions", json=body) as streamed:
                assert streamed.status_code == 200 and "data: [DONE]" in streamed.read().decode()
    counted = [_served(r["url"], api_key) - b for r, b in zip(replicas, before)]
    assert sum(counted) == 10 and min(counted) >= 3, counted  # both served (5 and 5 with one gateway worker)


def test_a_killed_replica_leaves_the_endpoint_answering_and_is_replaced(replicated):
    server, model, endpoint_id = replicated["server"], replicated["model"], replicated["endpoint"]["id"]
    replicas, api_key = _replicas(server, endpoint_id)
    survivor, victim = replicas
    os.killpg(victim["pid"], signal.SIGKILL)
    with replicated["project"].http() as http:
        # Right away: the gateway still lists the dead one, its connection is refused, another replica answers.
        for row in replicated["rows"][:6]:
            reply = _ask(http, model, row)
            assert reply.status_code == 200, reply.text

        def replaced():
            ep = http.get(f"/v1/endpoints/{endpoint_id}").json()
            urls = [r["url"] for r in _replicas(server, endpoint_id)[0]]
            return ep if ep["ready_replicas"] == 2 and victim["url"] not in urls else None

        ep = wait_for(replaced, timeout=120, what="the dead replica replaced")
        assert ep["state"] == "ready" and ep["restarts"] == 0  # it never stopped serving
        fresh = next(r for r in _replicas(server, endpoint_id)[0] if r["url"] != survivor["url"])
        before = _served(fresh["url"], api_key)

        def fresh_serves():  # the gateway caches a route for a second: the new replica joins its rotation then
            for row in replicated["rows"][:2]:
                assert _ask(http, model, row).status_code == 200  # never a 404: no replica without the adapter
            return _served(fresh["url"], api_key) > before

        wait_for(fresh_serves, timeout=10, interval=0.2, what="the new replica serving the adapter")


def test_endpoint_requests_that_cannot_be_served_are_refused(replicated):
    with replicated["project"].http() as http:
        split = http.post("/v1/endpoints", json={"model": "acme/split"})
        assert split.status_code == 400 and split.json()["error"]["param"] == "model"
        assert "built-in engine" in split.json()["error"]["message"]
        for bad in (0, 65, "two"):
            refused = http.post("/v1/endpoints", json={"model": replicated["model"], "replicas": bad})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "replicas", refused.text
