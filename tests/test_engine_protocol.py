"""The built-in engine speaks vLLM 0.33's HTTP protocol (docs: shared/reference/vllm-lora.md §1, §2, §5).

Real engine subprocesses started from `inference.launcher.engine_command("builtin", ...)`, real LoRA adapters
made with peft, plain HTTP (and the `openai` SDK); expected bodies and messages come from the reference.

The tests marked `@contract` also run against the FAKE engine that control-plane tests use
(`tests/fake_engine`: the same server and registry without torch, its answers made up), so that fake is held to
the protocol the deployer and gateway rely on. The others check what only a real model shows (sampling,
agreement with transformers, queueing, timed metrics) and run on the real engine only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from inference.launcher import engine_command
from tests.support import FAKE_ENGINE_PYTHON, MODEL_CACHE, REPO, free_port, start_python, wait_http

SERVED = "hone-tiny"
MAX_MODEL_LEN = 256
# A template that renders differently from the model's ChatML: the pinned one must win for its adapter.
PINNED_TEMPLATE = (
    "{%- for m in messages -%}[{{ m['role'] }}]: {{ m['content'] }}{{ '\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}[assistant]:{%- endif -%}"
)
CHAT = [{"role": "user", "content": "hello, can you reset my password please?"}]


def contract(test):
    """Runs the test against the fake engine too (tests/fake_engine): the protocol both must speak."""
    test.engine_contract = True
    return test


def pytest_generate_tests(metafunc):
    if "engine_kind" in metafunc.fixturenames:
        kinds = ["builtin", "fake"] if getattr(metafunc.function, "engine_contract", False) else ["builtin"]
        metafunc.parametrize("engine_kind", kinds, indirect=True, scope="module")


# --- helpers shared with test_launcher.py ----------------------------------------------------------------


def base_model() -> Path:
    from hone_kernel.tiny_model import build

    return build(MODEL_CACHE / "hone-tiny")


def make_adapter(folder: Path, seed: int, *, rank: int = 8, serving: dict | None = None) -> Path:
    """A peft LoRA adapter of hone-tiny with seeded random A and B matrices (B non-zero: it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model())
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    generator = torch.Generator().manual_seed(seed)  # deterministic: the same adapter on every run
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(folder)
    if serving is not None:
        (folder / "hone_serving.json").write_text(json.dumps(serving))
    return folder


class EngineProcess:
    """`python -m inference` as the launcher builds it, on a free port."""

    def __init__(
        self,
        log: Path,
        *,
        model: Path | None = None,
        runtime_lora: bool = True,
        api_key: str | None = None,
        kind: str = "builtin",
        **options,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        python = FAKE_ENGINE_PYTHON if kind == "fake" else sys.executable  # the fake: as HONE_ENGINE_PYTHON runs it
        launch = engine_command(
            "builtin",
            str(model or base_model()),
            SERVED,
            host="127.0.0.1",
            port=self.port,
            api_key=api_key,
            python=python,
            **options,
        )
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ALLOW_RUNTIME_LORA_UPDATING"}
        env |= {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        env |= {k: v for k, v in launch.env.items() if runtime_lora or k != "VLLM_ALLOW_RUNTIME_LORA_UPDATING"}
        self.argv, self.log_path = launch.argv, log
        log.unlink(missing_ok=True)
        self.proc = start_python(launch.argv, env, log)  # warm, as the control plane starts a built-in engine

    def wait(self) -> EngineProcess:
        wait_http(self.url + "/health", timeout=120, proc=self.proc)
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing (`data: ...` + blank line) on the way."""
    text = response.text
    assert text.endswith("\n\n")
    blocks = text[:-2].split("\n\n")
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks
    return [b[len("data: ") :] for b in blocks]


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    made = {
        name: make_adapter(root / name, seed)
        for name, seed in [("a", 1), ("b", 2), ("lru1", 3), ("lru2", 4), ("lru3", 5), ("gone", 6)]
    }
    made["pinned"] = make_adapter(
        root / "pinned",
        7,
        serving={
            "base_model": SERVED,
            "tuning_mode": "lora",
            "chat_template": PINNED_TEMPLATE,
            "stop_token_ids": [2],
            "stop_tokens": ["<|end_of_text|>"],
        },
    )
    made["rank32"] = make_adapter(root / "rank32", 8, rank=32)
    # Broken copies of "a", one rule of §1.8 each.
    for name, edit in [
        ("no-target-modules", lambda c: c.pop("target_modules")),
        ("dora", lambda c: c.update(use_dora=True)),
        ("bias", lambda c: c.update(bias="all")),
    ]:
        folder = root / name
        shutil.copytree(made["a"], folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        edit(config)
        (folder / "adapter_config.json").write_text(json.dumps(config))
        made[name] = folder
    made["no-tensors"] = root / "no-tensors"
    shutil.copytree(made["a"], made["no-tensors"])
    (made["no-tensors"] / "adapter_model.safetensors").unlink()
    made["foreign-module"] = root / "foreign-module"
    shutil.copytree(made["a"], made["foreign-module"])
    from safetensors.torch import load_file, save_file

    tensors = load_file(made["a"] / "adapter_model.safetensors")
    renamed = {k.replace("q_proj", "qkv_fused"): v for k, v in tensors.items()}
    save_file(renamed, made["foreign-module"] / "adapter_model.safetensors")
    return made


@pytest.fixture(scope="module")
def engine_kind(request):
    """ "builtin" (the real engine) or "fake" (tests/fake_engine); set by pytest_generate_tests."""
    return request.param


@pytest.fixture(scope="module")
def engines(tmp_path_factory, adapters, engine_kind):
    """The engine under test (runtime LoRA on; two adapters resident at most) and a locked one (no runtime
    LoRA, an API key, and a model folder with its own hone_serving.json, as a full fine-tune has), started
    side by side."""
    logs = tmp_path_factory.mktemp(f"engine-logs-{engine_kind}")
    main = EngineProcess(
        logs / "main.log", max_loras=1, max_cpu_loras=2, max_lora_rank=16, max_model_len=MAX_MODEL_LEN, kind=engine_kind
    )
    pinned_model = tmp_path_factory.mktemp("models") / "tiny-full-ft"
    shutil.copytree(base_model(), pinned_model)
    (pinned_model / "hone_serving.json").write_text(
        json.dumps({"chat_template": PINNED_TEMPLATE, "stop_token_ids": [2, 4], "tuning_mode": "full"})
    )
    locked = EngineProcess(
        logs / "locked.log",
        model=pinned_model,
        runtime_lora=False,
        api_key="sk-engine",
        max_loras=1,
        max_cpu_loras=1,
        max_lora_rank=16,
        kind=engine_kind,
    )
    try:
        yield main.wait(), locked.wait()
    finally:
        main.stop()
        locked.stop()


@pytest.fixture(scope="module")
def engine(engines):
    return engines[0]


@pytest.fixture(scope="module")
def http(engine):
    with httpx.Client(base_url=engine.url, timeout=60) as client:
        yield client


def load(http, name, path, **extra):
    return http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path), **extra})


def chat(http, model, **params):
    body = {"model": model, "messages": CHAT, "temperature": 0, "max_tokens": 12, **params}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def error(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.fixture(scope="module")
def loaded(http, adapters):
    """Adapters "a", "b" and "pinned" registered once for the generation tests."""
    for name in ("a", "b", "pinned"):
        assert load(http, name, adapters[name]).status_code == 200
    return adapters


# --- misc endpoints ------------------------------------------------------------------------------------


@contract
def test_health_ping_version(http):
    for method, path in [("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")]:
        response = http.request(method, path)
        assert (response.status_code, response.content) == (200, b"")
    assert http.get("/version").json() == {"version": "0.33.0"}
    assert http.get("/no/such/route").json() == {"detail": "Not Found"}


@contract
def test_models_lists_the_base_model_first(http):
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    base = body["data"][0]
    assert {k: base[k] for k in ("id", "object", "owned_by", "root", "parent", "max_model_len")} == {
        "id": SERVED,
        "object": "model",
        "owned_by": "vllm",
        "root": str(base_model()),
        "parent": None,
        "max_model_len": MAX_MODEL_LEN,
    }
    [permission] = base["permission"]
    assert permission["object"] == "model_permission" and permission["id"].startswith("modelperm-")
    assert permission["allow_sampling"] is True and permission["group"] is None


# --- runtime LoRA loading: §1.1–§1.3, §1.8 ------------------------------------------------------------


@contract
def test_load_answers_plain_text_and_lists_the_adapter(http, adapters):
    response = load(http, "plain", adapters["a"])
    assert response.status_code == 200
    assert response.text == "Success: LoRA adapter 'plain' added successfully."
    assert "json" not in response.headers.get("content-type", "")
    cards = http.get("/v1/models").json()["data"]
    assert cards[0]["id"] == SERVED
    card = next(c for c in cards if c["id"] == "plain")
    assert (card["root"], card["parent"], card["max_model_len"]) == (str(adapters["a"]), SERVED, None)
    assert card["permission"][0]["object"] == "model_permission"
    # It serves, and the response echoes the adapter's name.
    assert chat(http, "plain")["model"] == "plain"


@contract
def test_duplicate_load_and_load_inplace(http, adapters):
    assert load(http, "dup", adapters["a"]).status_code == 200
    assert error(load(http, "dup", adapters["a"]), 400) == {
        "message": "The lora adapter 'dup' has already been loaded. If you want to load the adapter in place, "
        "set 'load_inplace' to True.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }
    before = chat(http, "dup")["choices"][0]["message"]["content"]
    # In place: same name, new weights from a new path.
    response = load(http, "dup", adapters["b"], load_inplace=True)
    assert response.status_code == 200 and response.text == "Success: LoRA adapter 'dup' added successfully."
    card = next(c for c in http.get("/v1/models").json()["data"] if c["id"] == "dup")
    assert card["root"] == str(adapters["b"])
    assert load(http, "dup-ref", adapters["b"]).status_code == 200
    after = chat(http, "dup")["choices"][0]["message"]["content"]
    assert after == chat(http, "dup-ref")["choices"][0]["message"]["content"]
    assert after != before


@contract
def test_unknown_path_is_404(http, tmp_path):
    missing = tmp_path / "nothing-here"
    assert error(load(http, "ghost", missing), 404) == {
        "message": f"Loading lora ghost failed: No adapter found for {missing}",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    # A folder without adapter_config.json is "not found" as well.
    assert error(load(http, "ghost", tmp_path), 404)["type"] == "NotFoundError"
    assert "ghost" not in [c["id"] for c in http.get("/v1/models").json()["data"]]


@contract
@pytest.mark.parametrize(
    "name, message",
    [
        ("rank32", "LoRA rank 32 is greater than max_lora_rank 16."),
        ("no-target-modules", "Missing required configuration fields: target_modules"),
        ("dora", "does not yet support DoRA"),
        ("bias", "only bias 'none'"),
        ("no-tensors", "doesn't contain tensors"),
        ("foreign-module", "expected target modules in"),
    ],
)
def test_unservable_adapters_are_500(http, adapters, name, message):
    err = error(load(http, f"bad-{name}", adapters[name]), 500)
    assert err["type"] == "InternalServerError" and err["code"] == 500
    assert message in err["message"]
    assert f"bad-{name}" not in [c["id"] for c in http.get("/v1/models").json()["data"]]


@contract
def test_name_checks(http, adapters):
    assert error(load(http, SERVED, adapters["a"]), 400) == {
        "message": f"The lora adapter '{SERVED}' conflicts with a served base model.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }
    assert error(load(http, "", adapters["a"]), 400)["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    assert error(load(http, "x", ""), 400)["type"] == "InvalidUserInput"
    assert error(http.post("/v1/unload_lora_adapter", json={"lora_name": ""}), 400) == {
        "message": "'lora_name' needs to be provided to unload a LoRA adapter.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }


@contract
def test_unload(http, adapters):
    assert load(http, "temp", adapters["a"]).status_code == 200
    response = http.post("/v1/unload_lora_adapter", json={"lora_name": "temp", "lora_int_id": 99})
    assert response.status_code == 200 and response.text == "Success: LoRA adapter 'temp' removed successfully."
    assert "temp" not in [c["id"] for c in http.get("/v1/models").json()["data"]]
    assert error(http.post("/v1/unload_lora_adapter", json={"lora_name": "temp"}), 404) == {
        "message": "The lora adapter 'temp' cannot be found.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    assert error(http.post("/v1/chat/completions", json={"model": "temp", "messages": CHAT}), 404)["param"] == "model"
    # The name can be registered again afterwards.
    assert load(http, "temp", adapters["a"]).status_code == 200


@contract
def test_json_only(http, adapters):
    body = json.dumps({"lora_name": "x", "lora_path": str(adapters["a"])})
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {"Content-Type": content_type} if content_type else {}
        assert error(http.post("/v1/load_lora_adapter", content=body, headers=headers), 400) == {
            "message": "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
            "type": "Bad Request",
            "param": None,
            "code": 400,
        }
    ok = http.post("/v1/load_lora_adapter", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


@contract
def test_lora_routes_need_the_env_var_and_v1_needs_the_key(engines, adapters):
    _, locked = engines
    good = {"Authorization": "Bearer sk-engine"}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        response = httpx.post(locked.url + path, json={"lora_name": "a", "lora_path": str(adapters["a"])}, headers=good)
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-engine"}):
        response = httpx.get(locked.url + "/v1/models", headers=headers)
        assert (response.status_code, response.json()) == (401, {"error": "Unauthorized"})
    assert httpx.get(locked.url + "/v1/models", headers=good).status_code == 200
    assert httpx.post(locked.url + "/v1/chat/completions", json={"messages": CHAT}).status_code == 401
    # Only /v1 paths are guarded.
    assert httpx.get(locked.url + "/health").status_code == 200
    assert httpx.post(locked.url + "/tokenize", json={"prompt": "hi"}).status_code == 200
    # Without --max-model-len the model config's max_position_embeddings applies.
    assert httpx.get(locked.url + "/v1/models", headers=good).json()["data"][0]["max_model_len"] == 2048


# --- requests: §1.7, §2 -----------------------------------------------------------------------------


@contract
def test_unknown_model_is_404(http):
    response = http.post("/v1/chat/completions", json={"model": "nope", "messages": CHAT})
    assert error(response, 404) == {
        "message": f"The model `nope` does not exist. Valid aliases: {SERVED}.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    assert error(http.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404)["param"] == "model"


@contract
def test_validation_errors_are_400_not_422(http):
    err = error(http.post("/v1/chat/completions", json={"model": SERVED, "messages": "hi"}), 400)
    assert (err["type"], err["param"]) == ("Bad Request", "body.messages")
    assert err["message"].startswith("1 validation error:\n  ")
    err = error(http.post("/v1/chat/completions", json={"model": SERVED}), 400)
    assert (err["type"], err["param"]) == ("Bad Request", "body.messages")
    err = error(
        http.post("/v1/chat/completions", json={"messages": CHAT, "stream_options": {"include_usage": True}}), 400
    )
    assert err["param"] == "stream_options"
    assert "Stream options can only be defined when `stream=True`." in err["message"]
    err = error(http.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    assert err["type"] == "Bad Request"
    # Unknown fields are ignored, not rejected.
    assert chat(http, SERVED, some_future_field={"x": 1}, max_tokens=2)["usage"]["completion_tokens"] <= 2


@contract
def test_chat_response_shape(http):
    body = chat(http, SERVED, max_tokens=4, ignore_eos=True)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == SERVED
    [choice] = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": choice["message"]["content"],
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    assert (choice["index"], choice["finish_reason"], choice["stop_reason"], choice["logprobs"]) == (
        0,
        "length",
        None,
        None,
    )
    usage = body["usage"]
    assert usage["completion_tokens"] == 4 and usage["total_tokens"] == usage["prompt_tokens"] + 4
    assert usage["prompt_tokens_details"] is None
    for key in ("service_tier", "prompt_logprobs", "prompt_token_ids", "kv_transfer_params"):
        assert key in body and body[key] is None
    assert body["system_fingerprint"].startswith("vllm-0.33.0-")
    # The X-Request-Id header names the completion.
    response = http.post(
        "/v1/chat/completions", headers={"X-Request-Id": "req-42"}, json={"messages": CHAT, "max_tokens": 1}
    )
    assert response.json()["id"] == "chatcmpl-req-42"


def _chunks(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return [json.loads(e) for e in events[:-1]]


@contract
def test_chat_stream_framing(http, loaded):
    body = {
        "model": "a",
        "messages": CHAT,
        "temperature": 0,
        "max_tokens": 10,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = _chunks(http.post("/v1/chat/completions", json=body))
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and {c["model"] for c in chunks} == {"a"}
    role, *content, final, usage = chunks
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    for c in content:
        [choice] = c["choices"]
        assert set(choice["delta"]) == {"content"} and choice["finish_reason"] is None
    [last] = final["choices"]
    assert (last["finish_reason"], last["stop_reason"]) == ("length", None) and "content" in last["delta"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 10
    # Without include_usage there is no usage chunk: the finish chunk comes right before [DONE].
    del body["stream_options"]
    chunks = _chunks(http.post("/v1/chat/completions", json=body))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and all("usage" not in c for c in chunks)


@contract
def test_completion_stream_framing(http):
    body = {
        "prompt": "the customer asked about",
        "temperature": 0,
        "max_tokens": 6,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = _chunks(http.post("/v1/completions", json=body))
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert {c["object"] for c in chunks} == {"text_completion"}
    *texts, usage = chunks
    assert all(set(c["choices"][0]) == {"index", "text", "logprobs", "finish_reason", "stop_reason"} for c in texts)
    assert texts[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    streamed = "".join(c["choices"][0]["text"] for c in texts)
    plain = http.post("/v1/completions", json={**body, "stream": False, "stream_options": None}).json()
    assert streamed == plain["choices"][0]["text"]


def _streamed_content(http, body):
    chunks = _chunks(http.post("/v1/chat/completions", json={**body, "stream": True}))
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


@pytest.mark.parametrize(
    "model, sampling",
    [
        (SERVED, {"temperature": 0}),
        ("a", {"temperature": 0}),
        ("pinned", {"temperature": 0}),
        ("b", {"temperature": 1.0, "seed": 1}),
    ],
)
@contract
def test_same_request_same_text_streamed_or_not(http, loaded, model, sampling):
    """Greedy (or seeded) generation is deterministic, and the stream carries exactly the non-streamed text."""
    body = {"model": model, "messages": CHAT, "max_tokens": 24, **sampling}
    first = chat(http, **body)["choices"][0]["message"]["content"]
    assert chat(http, **body)["choices"][0]["message"]["content"] == first
    assert _streamed_content(http, body) == first
    assert first  # something was generated


@contract
def test_adapters_change_outputs(http, loaded):
    outputs = {
        m: chat(http, m, max_tokens=16, ignore_eos=True)["choices"][0]["message"]["content"] for m in (SERVED, "a", "b")
    }
    assert len(set(outputs.values())) == 3, outputs


def test_engine_matches_transformers_greedy_decoding(http, loaded):
    """The engine's greedy tokens equal a plain forward-pass argmax over the same rendered prompt."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model()), str(loaded["a"])).eval()
    ids = tokenizer(
        tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True), add_special_tokens=False
    )["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(10):
            out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    expected = tokenizer.decode(out, skip_special_tokens=True)
    body = chat(http, "a", max_tokens=10, ignore_eos=True)
    assert body["choices"][0]["message"]["content"] == expected
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_incremental_detokenization_never_splits_characters():
    from transformers import AutoTokenizer

    from inference.engine import IncrementalDetokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model())
    text = " café — naïve 🎉 ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several byte tokens here
    detok = IncrementalDetokenizer(tokenizer, tokenizer("prompt:")["input_ids"])
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some tokens were held back until their character completed


def test_seeded_sampling_is_reproducible(http):
    body = {"prompt": "please reset my", "temperature": 1.0, "max_tokens": 24, "ignore_eos": True}
    texts = [
        http.post("/v1/completions", json={**body, "seed": seed}).json()["choices"][0]["text"] for seed in (7, 7, 8)
    ]
    assert texts[0] == texts[1] and texts[0] != texts[2]


@contract
def test_stop_strings(http, loaded):
    body = {
        "model": "b",
        "prompt": "the customer asked about billing",
        "temperature": 1.0,
        "seed": 5,
        "max_tokens": 40,
        "ignore_eos": True,
    }
    full = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert len(full) > 12, full
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.find(stop)]
    choice = http.post("/v1/completions", json={**body, "stop": ["never-ever", stop]}).json()["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == (expected, "stop", stop)
    chunks = _chunks(http.post("/v1/completions", json={**body, "stop": stop, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["stop_reason"] == stop


@contract
def test_max_tokens(http):
    body = {"prompt": "hello", "temperature": 0, "ignore_eos": True}
    completion = http.post("/v1/completions", json=body).json()  # /v1/completions defaults to 16
    assert (completion["usage"]["completion_tokens"], completion["choices"][0]["finish_reason"]) == (16, "length")
    completion = http.post("/v1/completions", json={**body, "max_tokens": 5}).json()
    assert (completion["usage"]["completion_tokens"], completion["choices"][0]["finish_reason"]) == (5, "length")
    # Chat: max_completion_tokens wins over max_tokens; without either the rest of the context is the limit.
    assert chat(http, SERVED, max_tokens=7, max_completion_tokens=3, ignore_eos=True)["usage"]["completion_tokens"] == 3
    body = {"model": SERVED, "messages": CHAT, "temperature": 0, "ignore_eos": True}
    usage = http.post("/v1/chat/completions", json=body).json()["usage"]
    assert usage["total_tokens"] == MAX_MODEL_LEN


@contract
def test_context_limit(http):
    err = error(http.post("/v1/completions", json={"prompt": [5] * MAX_MODEL_LEN}), 400)
    assert err["message"].startswith(
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, "
        f"your prompt contains {MAX_MODEL_LEN} input tokens"
    )
    assert err["type"] == "BadRequestError"
    err = error(http.post("/v1/completions", json={"prompt": [5] * 200, "max_tokens": 100}), 400)
    assert "'max_tokens' or 'max_completion_tokens' is too large: 100" in err["message"]


def test_n_choices(http):
    body = {"prompt": "my invoice", "max_tokens": 12, "ignore_eos": True, "n": 2}
    sampled = http.post("/v1/completions", json={**body, "temperature": 1.0, "seed": 3}).json()
    assert [c["index"] for c in sampled["choices"]] == [0, 1]
    assert sampled["choices"][0]["text"] != sampled["choices"][1]["text"]
    assert sampled["usage"]["completion_tokens"] == 24
    # Greedy (explicitly, or by the model's generation_config do_sample=false) forbids n > 1.
    for extra in ({"temperature": 0}, {}):
        err = error(http.post("/v1/completions", json={**body, **extra}), 400)
        assert (err["message"], err["type"], err["param"]) == (
            "n must be 1 when using greedy sampling, got 2.",
            "BadRequestError",
            "n",
        )
    chunks = _chunks(
        http.post(
            "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 3, "n": 2, "temperature": 1, "stream": True}
        )
    )
    roles = [c for c in chunks if c["choices"][0]["delta"].get("role")]
    assert sorted(c["choices"][0]["index"] for c in roles) == [0, 1]
    assert sorted(c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]) == [0, 1]


# --- train/serve agreement: the pinned template and stop tokens --------------------------------------


@contract
def test_tokenize_uses_the_pinned_template(http, loaded):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model())
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    def local(template, **kwargs):
        text = tokenizer.apply_chat_template(
            CHAT, tokenize=False, add_generation_prompt=True, chat_template=template, **kwargs
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def remote(model, **extra):
        response = http.post("/tokenize", json={"model": model, "messages": CHAT, **extra})
        assert response.status_code == 200, response.text
        return response.json()

    base, pinned = remote(SERVED), remote("pinned")
    assert base["tokens"] == local(tokenizer.chat_template) and base["count"] == len(base["tokens"])
    assert pinned["tokens"] == local(PINNED_TEMPLATE) != base["tokens"]
    assert (base["max_model_len"], base["token_strs"]) == (MAX_MODEL_LEN, None)
    assert remote("a")["tokens"] == base["tokens"]  # no serving file: the base template
    assert remote(SERVED, tools=tools)["tokens"] == local(tokenizer.chat_template, tools=tools) != base["tokens"]
    prompt = http.post("/tokenize", json={"prompt": "hello there"}).json()
    assert prompt["tokens"] == tokenizer("hello there")["input_ids"]
    assert http.post("/detokenize", json={"tokens": prompt["tokens"]}).json() == {"prompt": "hello there"}
    assert error(http.post("/tokenize", json={"model": "nope", "prompt": "x"}), 404)["type"] == "NotFoundError"


@contract
def test_a_pinned_model_folder_serves_its_template(engines):
    """`--model` folders with hone_serving.json (full fine-tunes) render base requests with the pinned template."""
    from transformers import AutoTokenizer

    _, locked = engines
    tokenizer = AutoTokenizer.from_pretrained(base_model())
    expected = tokenizer(
        tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, chat_template=PINNED_TEMPLATE),
        add_special_tokens=False,
    )
    response = httpx.post(locked.url + "/tokenize", json={"model": SERVED, "messages": CHAT})
    assert response.json()["tokens"] == expected["input_ids"]
    reply = httpx.post(
        locked.url + "/v1/chat/completions",
        headers={"Authorization": "Bearer sk-engine"},
        json={"messages": CHAT, "max_tokens": 3, "ignore_eos": True},
        timeout=60,
    ).json()
    assert reply["usage"]["prompt_tokens"] == len(expected["input_ids"])


def test_pinned_stop_tokens_end_generation(http, loaded, tmp_path):
    """An adapter whose hone_serving.json pins a stop id stops there (stop_reason = the id, text excluded)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model())
    eos = tokenizer.eos_token_id
    # Sampled with a seed, so the ids vary and the pinned run below retraces them until its stop id.
    sampling = {"max_tokens": 12, "temperature": 1.0, "seed": 11}
    free = chat(http, "pinned", ignore_eos=True, return_token_ids=True, **sampling)["choices"][0]
    ids = free["token_ids"]

    # Text never ends inside a multi-byte character (vLLM's detokenizer holds such bytes back, to the end too):
    # twelve sampled byte-level tokens may stop halfway through one.
    def text(token_ids: list[int]) -> str:
        return tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")

    assert len(ids) == 12 and text(ids) == free["message"]["content"]
    # A stop id first seen mid-way, with no EOS before it.
    position = next(k for k in range(2, 12) if ids[k] not in ids[:k] and eos not in ids[: k + 1])
    stop_id = ids[position]
    folder = tmp_path / "pinned-stop"
    shutil.copytree(loaded["pinned"], folder)
    serving = json.loads((folder / "hone_serving.json").read_text()) | {"stop_token_ids": [stop_id]}
    (folder / "hone_serving.json").write_text(json.dumps(serving))
    assert load(http, "pinned-stop", folder).status_code == 200
    body = chat(http, "pinned-stop", return_token_ids=True, **sampling)
    choice = body["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop_id)
    assert choice["token_ids"] == ids[: position + 1] and body["usage"]["completion_tokens"] == position + 1
    assert choice["message"]["content"] == text(ids[:position])
    # ignore_eos also lifts the pinned stops (as vLLM's generation-config EOS ids); request stop ids still apply.
    assert chat(http, "pinned-stop", ignore_eos=True, **sampling)["choices"][0]["finish_reason"] == "length"
    choice = chat(http, "pinned", ignore_eos=True, stop_token_ids=[stop_id], **sampling)["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop_id)


# --- residency: §1.9 ---------------------------------------------------------------------------------


@contract
def test_lru_eviction_reloads_from_the_path(http, engine, adapters):
    """--max-loras 1 --max-cpu-loras 2: three adapters cannot all stay resident; all three keep serving."""
    before = {}
    for name in ("lru1", "lru2", "lru3"):
        assert load(http, name, adapters[name]).status_code == 200
        before[name] = chat(http, name, max_tokens=12, ignore_eos=True)["choices"][0]["message"]["content"]
    assert len(set(before.values())) == 3
    for name in ("lru1", "lru2", "lru3", "lru1", "lru3", "lru2"):
        assert chat(http, name, max_tokens=12, ignore_eos=True)["choices"][0]["message"]["content"] == before[name]
    assert "evicting LoRA weights" in engine.logs()


@contract
def test_errors_after_the_stream_started_are_events(http, engine, adapters, tmp_path):
    """An evicted adapter whose files vanished (vLLM #5105): the stream carries an error event, then [DONE]."""
    folder = tmp_path / "gone"
    shutil.copytree(adapters["gone"], folder)
    assert load(http, "gone", folder).status_code == 200
    for name in ("lru1", "lru2"):  # evict "gone" (two resident at most)
        assert load(http, name, adapters[name]).status_code in (200, 400)  # 400: loaded by an earlier test
        chat(http, name, max_tokens=1)
    shutil.rmtree(folder)
    chunks = _chunks(http.post("/v1/chat/completions", json={"model": "gone", "messages": CHAT, "stream": True}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["error"]["code"] == 500 and chunks[-1]["error"]["type"] == "InternalServerError"
    err = error(http.post("/v1/chat/completions", json={"model": "gone", "messages": CHAT}), 500)
    assert "No adapter found" in err["message"]
    assert http.get("/health").status_code == 200  # the engine survives it


# --- metrics: §1.11 ------------------------------------------------------------------------------------


def _metrics(http) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _usage(response) -> dict:
    """The usage of a plain response, or of a stream's usage chunk (stream_options.include_usage)."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        return _chunks(response)[-1]["usage"]
    return response.json()["usage"]


def _les(metrics, name) -> list[float]:
    """A histogram's bucket bounds, in order (+Inf last)."""
    return sorted({float(dict(labels)["le"]) for (n, labels) in metrics if n == name + "_bucket"})


LABELS = (("engine", "0"), ("model_name", SERVED))
# vLLM's request-level histograms (one observation per finished request) and its other families (§1.11).
REQUEST_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:request_params_max_tokens",
)


def test_metrics_count_requests(http, loaded):
    """Chat and text completions, streamed and not: every vLLM family moves as vLLM's would."""
    before = _metrics(http)
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    usages = [
        chat(http, "a", max_tokens=5, ignore_eos=True)["usage"],
        _usage(
            http.post(
                "/v1/completions", json={"prompt": "refund", "max_tokens": 3, "ignore_eos": True, "temperature": 0}
            )
        ),
        _usage(
            http.post(
                "/v1/chat/completions",
                json={
                    "model": SERVED,
                    "messages": CHAT,
                    "max_tokens": 4,
                    "ignore_eos": True,
                    "temperature": 0,
                    **stream,
                },
            )
        ),
        _usage(
            http.post(
                "/v1/completions",
                json={
                    "model": "b",
                    "prompt": "where is my parcel",
                    "max_tokens": 2,
                    "ignore_eos": True,
                    "temperature": 0,
                    **stream,
                },
            )
        ),
    ]
    after = _metrics(http)
    prompt, generated, requests = sum(u["prompt_tokens"] for u in usages), 5 + 3 + 4 + 2, 4
    assert sum(u["completion_tokens"] for u in usages) == generated

    def value(name, extra=(), metrics=None):
        return (metrics or after)[(name, tuple(sorted(LABELS + extra)))]

    def delta(name, extra=()):
        return value(name, extra) - before.get((name, tuple(sorted(LABELS + extra))), 0)

    assert delta("vllm:prompt_tokens_total") == prompt
    assert delta("vllm:generation_tokens_total") == generated
    assert delta("vllm:request_success_total", (("finished_reason", "length"),)) == requests
    for reason in ("stop", "length", "abort", "error", "repetition"):  # every FinishReason from the start
        assert ("vllm:request_success_total", tuple(sorted(LABELS + (("finished_reason", reason),)))) in before
    for histogram in REQUEST_HISTOGRAMS:
        assert delta(histogram + "_count") == requests, histogram
        assert delta(histogram + "_bucket", (("le", "+Inf"),)) == requests, histogram
    assert delta("vllm:inter_token_latency_seconds_count") == generated - requests
    assert delta("vllm:request_prompt_tokens_sum") == prompt
    assert delta("vllm:request_generation_tokens_sum") == generated
    assert delta("vllm:request_params_max_tokens_sum") == 5 + 3 + 4 + 2  # max_tokens as each request gave it
    # n: once per request (vLLM: per parent request), 1 here.
    assert delta("vllm:request_params_n_count") == requests and delta("vllm:request_params_n_sum") == requests
    assert delta("vllm:request_params_n_bucket", (("le", "1.0"),)) == requests
    # One engine step per generated token; the prefill step also carries the prompt.
    assert delta("vllm:iteration_tokens_total_count") == generated
    assert delta("vllm:iteration_tokens_total_sum") == prompt + generated
    # No prefix cache: every prompt token is a query, none a hit; no preemption, ever.
    assert delta("vllm:prefix_cache_queries_total") == prompt
    assert value("vllm:prefix_cache_hits_total") == 0 and value("vllm:num_preemptions_total") == 0

    # The phases add up: queue -> prefill (first token) -> decode (last token), per request.
    queue, prefill, decode, inference, ttft, e2e, tpot = (
        delta(name + "_sum")
        for name in (
            "vllm:request_queue_time_seconds",
            "vllm:request_prefill_time_seconds",
            "vllm:request_decode_time_seconds",
            "vllm:request_inference_time_seconds",
            "vllm:time_to_first_token_seconds",
            "vllm:e2e_request_latency_seconds",
            "vllm:request_time_per_output_token_seconds",
        )
    )
    assert queue >= 0 and prefill > 0 and decode > 0
    assert prefill + decode == pytest.approx(inference, rel=1e-6, abs=1e-6)
    assert queue + prefill == pytest.approx(ttft, rel=1e-6, abs=1e-6)
    assert queue + inference <= e2e + 1e-6 and e2e < 60
    assert 0 < tpot <= decode  # each request's decode time over its tokens after the first
    assert delta("vllm:inter_token_latency_seconds_sum") == pytest.approx(decode, rel=1e-6, abs=1e-6)

    # vLLM's buckets (max_model_len bounds the token counts).
    inf = float("inf")
    assert _les(after, "vllm:request_params_n") == [1, 2, 5, 10, 20, inf]
    for name in ("vllm:request_prompt_tokens", "vllm:request_generation_tokens", "vllm:request_params_max_tokens"):
        assert _les(after, name) == [1, 2, 5, 10, 20, 50, 100, 200, inf], name  # MAX_MODEL_LEN = 256
    assert _les(after, "vllm:iteration_tokens_total") == [
        1,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1024,
        2048,
        4096,
        8192,
        16384,
        inf,
    ]
    assert _les(after, "vllm:e2e_request_latency_seconds")[:3] == [0.3, 0.5, 0.8]
    assert _les(after, "vllm:time_to_first_token_seconds")[:3] == [0.001, 0.005, 0.01]
    assert _les(after, "vllm:inter_token_latency_seconds")[:3] == [0.01, 0.025, 0.05]

    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert (gauge, LABELS) in after
    assert value("vllm:kv_cache_usage_perc") == 0
    for reason in ("capacity", "deferred"):
        assert value("vllm:num_requests_waiting_by_reason", (("reason", reason),)) == 0
    [info] = [dict(k[1]) for k in after if k[0] == "vllm:cache_config_info"]
    assert after[("vllm:cache_config_info", tuple(sorted(info.items())))] == 1
    assert info["engine"] == "0" and "model_name" not in info  # vLLM: config labels + engine only
    assert (info["enable_prefix_caching"], info["cache_dtype"], info["num_gpu_blocks"]) == ("False", "auto", "None")
    lora_info = [k for k in after if k[0] == "vllm:lora_requests_info"]
    assert any(dict(k[1]).get("running_lora_adapters") == "b" and dict(k[1])["max_lora"] == "1" for k in lora_info)


def test_metrics_count_each_choice_and_prompt_as_a_request(http):
    """vLLM runs each prompt of a batch, and each of its n choices, as a request: n is observed per prompt."""
    before = _metrics(http)
    body = {
        "prompt": ["my invoice", "a refund for my order"],
        "max_tokens": 3,
        "ignore_eos": True,
        "n": 2,
        "temperature": 1.0,
        "seed": 5,
    }
    usage = _usage(http.post("/v1/completions", json=body))
    after = _metrics(http)

    def delta(name, extra=()):
        key = (name, tuple(sorted(LABELS + extra)))
        return after[key] - before.get(key, 0)

    assert usage["completion_tokens"] == 4 * 3
    assert delta("vllm:request_success_total", (("finished_reason", "length"),)) == 4
    for histogram in REQUEST_HISTOGRAMS:
        assert delta(histogram + "_count") == 4, histogram
    assert (delta("vllm:request_params_n_count"), delta("vllm:request_params_n_sum")) == (2, 4)
    assert delta("vllm:request_params_n_bucket", (("le", "2.0"),)) == 2
    # Each choice prefills its prompt: vLLM counts prompt tokens per request, usage once per prompt.
    assert delta("vllm:prompt_tokens_total") == 2 * usage["prompt_tokens"]
    assert delta("vllm:prefix_cache_queries_total") == 2 * usage["prompt_tokens"]
    assert delta("vllm:iteration_tokens_total_sum") == 2 * usage["prompt_tokens"] + 12


def test_requests_queue_without_blocking_the_server(http, engine):
    """One generation at a time on the worker; the HTTP side keeps answering, the second request waits."""
    import threading

    labels = (("engine", "0"), ("model_name", SERVED))
    capacity = tuple(sorted(labels + (("reason", "capacity"),)))  # waiting for the one generation slot
    body = {"prompt": "the", "temperature": 0, "ignore_eos": True, "max_tokens": MAX_MODEL_LEN - 8}
    results = {}
    with httpx.Client(base_url=engine.url, timeout=120) as other:
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as long:
            lines = long.iter_lines()
            assert next(lines).startswith("data: ")  # generating now
            second = threading.Thread(
                target=lambda: results.update(r=other.post("/v1/completions", json={**body, "max_tokens": 4}))
            )
            second.start()
            started = time.monotonic()
            seen = None
            while time.monotonic() - started < 5:
                health_started = time.monotonic()
                assert http.get("/health").status_code == 200
                assert time.monotonic() - health_started < 0.5
                metrics = _metrics(http)
                seen = (
                    metrics[("vllm:num_requests_running", labels)],
                    metrics[("vllm:num_requests_waiting", labels)],
                    metrics[("vllm:num_requests_waiting_by_reason", capacity)],
                )
                if seen == (1, 1, 1):
                    break
            assert seen == (1, 1, 1)
            rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"
        second.join(30)
    assert results["r"].json()["usage"]["completion_tokens"] == 4


def test_a_dropped_stream_aborts_its_generation(http, engine):
    labels = (("engine", "0"), ("finished_reason", "abort"), ("model_name", SERVED))
    before = _metrics(http).get(("vllm:request_success_total", labels), 0)
    body = {"prompt": "the", "temperature": 0, "ignore_eos": True, "max_tokens": MAX_MODEL_LEN - 8, "stream": True}
    with httpx.Client(base_url=engine.url, timeout=60) as dropping:
        with dropping.stream("POST", "/v1/completions", json=body) as response:
            next(response.iter_lines())
    deadline = time.monotonic() + 10
    while _metrics(http).get(("vllm:request_success_total", labels), 0) != before + 1:
        assert time.monotonic() < deadline, "the generation was not aborted"
        time.sleep(0.05)
    assert _metrics(http)[("vllm:num_requests_running", (("engine", "0"), ("model_name", SERVED)))] == 0


# --- the real OpenAI SDK --------------------------------------------------------------------------------


@contract
def test_openai_sdk(engine, loaded):
    import openai

    client = openai.OpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()][:1] == [SERVED]
    completion = client.chat.completions.create(model="a", messages=CHAT, max_tokens=8, temperature=0)
    assert completion.model == "a" and completion.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model="a", messages=CHAT, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == completion.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == completion.usage.completion_tokens
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=SERVED, prompt="x", n=2, temperature=0)
    text = client.completions.create(model=SERVED, prompt="hello", max_tokens=4, temperature=0)
    assert text.object == "text_completion" and text.usage.completion_tokens <= 4


def test_without_lora_or_chat_template(tmp_path, adapters):
    """In process: an engine started without --enable-lora refuses loads (400), and a model without any chat
    template answers chat requests with vLLM's 400 while plain prompts still work."""
    from fastapi.testclient import TestClient

    from inference.engine import Engine
    from inference.handlers import NO_CHAT_TEMPLATE
    from inference.models import ServingModels
    from inference.server import create_app

    model = tmp_path / "no-template"
    shutil.copytree(base_model(), model)
    (model / "chat_template.jinja").unlink()
    engine = Engine(str(model), "bare", enable_lora=False)
    try:
        with TestClient(create_app(ServingModels(engine, "bare", str(model)), allow_runtime_lora=True)) as client:
            response = client.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(adapters["a"])})
            err = error(response, 400)
            assert err["type"] == "InvalidUserInput" and err["message"].startswith("LoRA is not enabled")
            for path, body in (("/v1/chat/completions", {"messages": CHAT}), ("/tokenize", {"messages": CHAT})):
                assert error(client.post(path, json=body), 400) == {
                    "message": NO_CHAT_TEMPLATE,
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            reply = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "ignore_eos": True})
            assert reply.json()["usage"]["completion_tokens"] == 2
            assert "vllm:lora_requests_info" not in client.get("/metrics").text
    finally:
        engine.stop()


def test_cli_rejects_unknown_flags():
    result = subprocess.run(
        [sys.executable, "-m", "inference", "--model", "x", "--no-such-flag"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "inference", "--model", "x", "--max-loras", "2", "--max-cpu-loras", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "max_cpu_loras (1) must be >= max_loras (2)" in result.stderr


@contract
def test_startup_log_line(engine):
    deadline = time.monotonic() + 5
    while f"serving '{SERVED}' on http://127.0.0.1:{engine.port}" not in engine.logs():
        assert time.monotonic() < deadline, engine.logs()
        time.sleep(0.1)


@contract
def test_logprobs_have_one_shape_on_both_engines(http, engine):
    """Chat's `{"content": [...]}` and completions' `{text_offset, token_logprobs, tokens, top_logprobs}`, whole and
    streamed: what vLLM answers, from the built-in engine and the fake (tests/test_sampling_surface.py checks the
    values of the real one)."""
    body = {"model": SERVED, "messages": CHAT, "temperature": 0, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    content = whole["logprobs"]["content"]
    assert content and "".join(e["token"] for e in content) == whole["message"]["content"]
    assert all(set(e) == {"token", "logprob", "bytes", "top_logprobs"} and len(e["top_logprobs"]) == 2 for e in content)
    streamed = http.post("/v1/chat/completions", json={**body, "stream": True}).text
    chunks = [json.loads(x[6:]) for x in streamed.split("\n\n") if x.startswith("data: {")]
    assert [e for c in chunks for e in ((c["choices"] or [{}])[0].get("logprobs") or {}).get("content", [])] == content
    text = http.post(
        "/v1/completions", json={"model": SERVED, "prompt": "hello", "max_tokens": 4, "temperature": 0, "logprobs": 1}
    ).json()["choices"][0]
    assert "".join(text["logprobs"]["tokens"]) == text["text"] and len(text["logprobs"]["top_logprobs"][0]) == 1
