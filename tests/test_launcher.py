"""Engine command lines (vLLM and built-in), engine choice, and EngineClient against a real built-in engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from inference.client import (
    AdapterLoadError,
    AdapterNotFound,
    EngineClient,
    EngineError,
    EngineUnavailable,
    error_message,
)
from inference.launcher import EngineLaunch, choose_engine, engine_command
from tests.support import REPO, free_port
from tests.test_engine_protocol import CHAT, PINNED_TEMPLATE, SERVED, EngineProcess, base_model, make_adapter

FLAGS = [
    "--served-model-name",
    "base",
    "--host",
    "0.0.0.0",
    "--port",
    "8001",
    "--enable-lora",
    "--max-loras",
    "2",
    "--max-cpu-loras",
    "6",
]


# response_format by the grammar library the built-in engine uses, whatever vLLM's "auto" would pick
XGRAMMAR = ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']


def command(engine, **overrides):
    options = dict(host="0.0.0.0", port=8001, max_loras=2, max_cpu_loras=6, max_lora_rank=16) | overrides
    return engine_command(engine, "/models/base", "base", **options)


# --- command lines --------------------------------------------------------------------------------------


def test_vllm_command(tmp_path):
    launch = command("vllm", python="/nonexistent/bin/python")
    assert launch == EngineLaunch(
        ["vllm", "serve", "/models/base", *FLAGS, "--max-lora-rank", "16", *XGRAMMAR],
        {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
    )
    # The vllm script beside the interpreter (same virtualenv) wins over PATH.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "vllm").write_text("#!/bin/sh\n")
    launch = command(
        "vllm",
        python=str(tmp_path / "bin" / "python"),
        max_model_len=4096,
        api_key="sk-x",
        chat_template="/t/chat.jinja",
    )
    assert launch.argv == [
        str(tmp_path / "bin" / "vllm"),
        "serve",
        "/models/base",
        *FLAGS,
        "--max-lora-rank",
        "16",
        "--max-model-len",
        "4096",
        "--chat-template",
        "/t/chat.jinja",
        *XGRAMMAR,
    ]
    assert launch.env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_API_KEY": "sk-x"}  # not on argv: ps shows it
    assert not any(a.startswith("--api-server-count") for a in launch.argv)


@pytest.mark.parametrize("rank, served", [(1, 1), (2, 8), (8, 8), (9, 16), (20, 32), (64, 64), (300, 320), (512, 512)])
def test_lora_rank_rounds_up_to_what_vllm_accepts(rank, served):
    for engine in ("vllm", "builtin"):
        argv = command(engine, max_lora_rank=rank).argv
        assert argv[argv.index("--max-lora-rank") + 1] == str(served)


def test_invalid_launch_settings():
    with pytest.raises(ValueError, match="above the largest"):
        command("vllm", max_lora_rank=513)
    with pytest.raises(ValueError, match="max_cpu_loras"):
        command("vllm", max_loras=4, max_cpu_loras=2)
    with pytest.raises(ValueError, match="unknown engine"):
        command("tgi")


@pytest.mark.parametrize(
    "tp, pp, added",
    [
        (1, 1, []),  # vLLM's defaults: a model that fits one GPU keeps its command line
        (4, 1, ["--tensor-parallel-size", "4"]),
        (1, 2, ["--pipeline-parallel-size", "2"]),
        (2, 2, ["--tensor-parallel-size", "2", "--pipeline-parallel-size", "2"]),
    ],
)
def test_vllm_parallel_flags(tp, pp, added):
    launch = command("vllm", python="/nonexistent/bin/python", tensor_parallel_size=tp, pipeline_parallel_size=pp)
    assert launch.argv == ["vllm", "serve", "/models/base", *FLAGS, "--max-lora-rank", "16", *added, *XGRAMMAR]


def test_vision_models_get_the_image_limit_on_both_engines():
    limit = ["--limit-mm-per-prompt", '{"image": 4}']
    vllm = command("vllm", python="/nonexistent/bin/python", images_per_prompt=4)
    assert vllm.argv == ["vllm", "serve", "/models/base", *FLAGS, "--max-lora-rank", "16", *limit, *XGRAMMAR]
    builtin = command("builtin", python="/venv/bin/python", images_per_prompt=4)
    assert builtin.argv[-2:] == limit
    from inference.__main__ import parse_args

    assert parse_args(builtin.argv[3:]).limit_mm_per_prompt == {"image": 4}
    assert "--limit-mm-per-prompt" not in command("builtin").argv  # a text model's engine: no flag
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--limit-mm-per-prompt", '{"audio": 1}'])


def test_builtin_engine_refuses_to_split_a_model():
    with pytest.raises(ValueError, match="built-in engine cannot split a model.*serve it with vLLM"):
        command("builtin", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="built-in engine cannot split"):
        command("builtin", pipeline_parallel_size=2)
    with pytest.raises(ValueError, match="parallel sizes must be >= 1"):
        command("vllm", tensor_parallel_size=0)
    assert "--tensor-parallel-size" not in command("builtin", tensor_parallel_size=1).argv


def test_builtin_command_is_accepted_by_the_engine_cli():
    launch = command("builtin", python="/venv/bin/python", max_model_len=512, api_key="k")
    assert launch.argv == [
        "/venv/bin/python",
        "-m",
        "inference",
        "--model",
        "/models/base",
        *FLAGS,
        "--max-lora-rank",
        "16",
        "--max-model-len",
        "512",
    ]
    assert launch.env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_API_KEY": "k"}
    from inference.__main__ import parse_args

    os.environ["VLLM_API_KEY"] = "k"  # how the engine gets it, as vLLM does
    try:
        args = parse_args(launch.argv[3:])
    finally:
        del os.environ["VLLM_API_KEY"]
    assert (
        args.model,
        args.served_model_name,
        args.port,
        args.enable_lora,
        args.max_loras,
        args.max_cpu_loras,
        args.max_lora_rank,
        args.max_model_len,
        args.api_key,
    ) == ("/models/base", "base", 8001, True, 2, 6, 16, 512, "k")


def test_launcher_and_client_do_not_import_torch():
    code = "import sys, inference.launcher, inference.client; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# --- engine choice ---------------------------------------------------------------------------------------


def test_choose_engine_as_given():
    assert choose_engine("vllm") == "vllm" and choose_engine("builtin") == "builtin"
    with pytest.raises(ValueError, match="unknown engine setting"):
        choose_engine("fastest")


def test_choose_engine_auto(tmp_path, monkeypatch):
    import importlib.util

    gpu = Path("/dev/nvidia0").exists()
    has_vllm = importlib.util.find_spec("vllm") is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 9\n")  # a driver tool that lists nothing
    smi.chmod(0o755)
    assert choose_engine("auto") == ("vllm" if gpu and has_vllm else "builtin")
    # vLLM importable and nvidia-smi listing a GPU: vLLM.
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)'\n")
    packages = tmp_path / "site"
    (packages / "vllm").mkdir(parents=True)
    (packages / "vllm" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(packages))
    assert choose_engine("auto") == "vllm"


# --- EngineClient against the built-in engine -------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("client-adapters")
    return {
        "x": make_adapter(root / "x", 21),
        "y": make_adapter(root / "y", 22),
        "pinned": make_adapter(root / "pinned", 23, serving={"chat_template": PINNED_TEMPLATE, "stop_token_ids": [2]}),
        "rank32": make_adapter(root / "rank32", 24, rank=32),
    }


@pytest.fixture(scope="module")
def engine(tmp_path_factory, adapters):
    process = EngineProcess(
        tmp_path_factory.mktemp("client-engine") / "engine.log",
        max_loras=1,
        max_cpu_loras=2,
        max_lora_rank=16,
        api_key="sk-client",
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(engine):
    with EngineClient(engine.url, api_key="sk-client", timeout=60) as c:
        c.wait_healthy(120, alive=lambda: engine.proc.poll() is None)
        yield c


def test_health(client, engine):
    assert client.health() is True
    client.wait_healthy(1)
    with pytest.raises(EngineUnavailable, match="exited"):
        client.wait_healthy(30, alive=lambda: False)
    with EngineClient(f"http://127.0.0.1:{free_port()}") as nobody:
        assert nobody.health() is False
        with pytest.raises(EngineUnavailable, match="not healthy within"):
            nobody.wait_healthy(0.5)
        with pytest.raises(EngineUnavailable):
            nobody.models()


def test_hot_load_lifecycle(client, adapters):
    client.load_adapter("ft-x-1", str(adapters["x"]))
    client.load_adapter("ft-x-1", str(adapters["x"]))  # idempotent: same name, same path
    cards = {c["id"]: c for c in client.models()}
    assert cards["ft-x-1"]["root"] == str(adapters["x"]) and cards["ft-x-1"]["parent"] == SERVED
    with pytest.raises(AdapterLoadError) as caught:  # same name, another path: a real conflict
        client.load_adapter("ft-x-1", str(adapters["y"]))
    assert caught.value.status == 400 and "already been loaded" in caught.value.message
    reply = client.chat("ft-x-1", CHAT, max_tokens=4, temperature=0, ignore_eos=True)
    assert reply["model"] == "ft-x-1" and reply["usage"]["completion_tokens"] == 4
    reply = client.complete("ft-x-1", "refund", max_tokens=3, temperature=0, ignore_eos=True)
    assert reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] == 3
    assert client.unload_adapter("ft-x-1") is True
    assert client.unload_adapter("ft-x-1") is False
    assert "ft-x-1" not in [c["id"] for c in client.models()]
    with pytest.raises(EngineError) as caught:
        client.chat("ft-x-1", CHAT)
    assert caught.value.status == 404 and "does not exist" in caught.value.message


def test_load_failures(client, adapters, tmp_path):
    with pytest.raises(AdapterNotFound) as caught:
        client.load_adapter("missing", str(tmp_path / "missing"))
    assert caught.value.status == 404 and "No adapter found" in caught.value.message
    with pytest.raises(AdapterLoadError) as caught:
        client.load_adapter("too-big", str(adapters["rank32"]))
    assert caught.value.status == 500
    assert caught.value.message == "LoRA rank 32 is greater than max_lora_rank 16."
    with pytest.raises(AdapterLoadError) as caught:
        client.load_adapter(SERVED, str(adapters["x"]))
    assert caught.value.status == 400 and "conflicts with a served base model" in caught.value.message


def test_tokenize_renders_like_the_trainer(client, adapters):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model())
    client.load_adapter("ft-pinned", str(adapters["pinned"]))
    for model, template in ((SERVED, tokenizer.chat_template), ("ft-pinned", PINNED_TEMPLATE)):
        for add_generation_prompt in (True, False):
            text = tokenizer.apply_chat_template(
                CHAT, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
            )
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert client.tokenize(model, messages=CHAT, add_generation_prompt=add_generation_prompt) == expected
    assert client.tokenize(SERVED, messages=CHAT) != client.tokenize("ft-pinned", messages=CHAT)
    assert client.tokenize(SERVED, prompt="refund please") == tokenizer("refund please")["input_ids"]
    assert (
        client.tokenize(SERVED, prompt="hi", add_special_tokens=False)
        == tokenizer("hi", add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(ValueError):
        client.tokenize(SERVED)


def test_client_needs_the_key(engine):
    with EngineClient(engine.url) as anonymous:
        assert anonymous.health() is True  # /health is not under /v1
        with pytest.raises(EngineError) as caught:
            anonymous.models()
    assert (caught.value.status, caught.value.message) == (401, "Unauthorized")


@pytest.mark.parametrize(
    "body, message",
    [
        ({"error": {"message": "nested", "type": "NotFoundError", "param": None, "code": 404}}, "nested"),
        ({"object": "error", "message": "flat", "type": "NotFoundError", "param": None, "code": 404}, "flat"),
        ({"error": "Unauthorized"}, "Unauthorized"),
        ({"detail": "Not Found"}, "Not Found"),
    ],
)
def test_both_error_envelopes_are_read(body, message):
    assert error_message(httpx.Response(404, content=json.dumps(body).encode())) == message
    assert error_message(httpx.Response(500, content=b"plain failure")) == "plain failure"
