"""Command lines for an inference engine: real vLLM (`vllm serve`) or the built-in one (`python -m inference`),
with the same flags. Pure Python: importing this never imports torch."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from inference.adapters import LORA_RANKS  # pure Python too

ENGINES = ("vllm", "builtin")


@dataclass
class EngineLaunch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # only the variables to add to the parent's environment


def served_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that serves adapters of `rank`."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above the largest vLLM serves ({LORA_RANKS[-1]})")


def vllm_executable(python: str = sys.executable) -> str:
    """The `vllm` script installed beside `python` (same virtualenv), else whatever `vllm` PATH finds."""
    beside = Path(python).parent / "vllm"
    return str(beside) if beside.is_file() else "vllm"


def engine_command(
    engine: str,
    model: str,
    served_model_name: str,
    *,
    host: str,
    port: int,
    max_loras: int,
    max_cpu_loras: int,
    max_lora_rank: int,
    max_model_len: int | None = None,
    api_key: str | None = None,
    chat_template: str | None = None,
    python: str = sys.executable,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    images_per_prompt: int = 0,
    tool_call_parser: str | None = None,
) -> EngineLaunch:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if tensor_parallel_size < 1 or pipeline_parallel_size < 1:
        raise ValueError(f"parallel sizes must be >= 1, got {tensor_parallel_size} and {pipeline_parallel_size}")
    if engine == "builtin" and tensor_parallel_size * pipeline_parallel_size > 1:
        # One CPU process: it has no way to split a model, and quietly serving it whole would defeat the reason
        # the operator asked (a model too big for one device).
        raise ValueError(
            "the built-in engine cannot split a model (tensor_parallel_size "
            f"{tensor_parallel_size}, pipeline_parallel_size {pipeline_parallel_size}); serve it with vLLM"
        )
    if max_loras < 1 or max_cpu_loras < max_loras:
        raise ValueError(f"need 1 <= max_loras <= max_cpu_loras, got {max_loras} and {max_cpu_loras}")
    flags = [
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(max_loras),
        "--max-cpu-loras",
        str(max_cpu_loras),
        "--max-lora-rank",
        str(served_lora_rank(max_lora_rank)),
    ]
    if max_model_len is not None:
        flags += ["--max-model-len", str(max_model_len)]
    if chat_template:
        flags += ["--chat-template", chat_template]
    # Only when above one: vLLM's defaults are one, and the command lines of models that fit one GPU stay as before.
    if tensor_parallel_size > 1:
        flags += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if pipeline_parallel_size > 1:
        flags += ["--pipeline-parallel-size", str(pipeline_parallel_size)]
    if images_per_prompt:  # a vision model: images a request may hold (vLLM's flag; the built-in engine takes it too)
        flags += ["--limit-mm-per-prompt", json.dumps({"image": images_per_prompt})]
    if tool_call_parser:  # tool_choice "auto", read in the model family's format (the built-in engine takes it too)
        flags += ["--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser]
    if engine == "vllm":
        # One API server only: vLLM 0.33 refuses runtime LoRA updating with --api-server-count > 1, and the
        # adapter registry is per API-server process anyway.
        # response_format by xgrammar, compact JSON: what the built-in engine does (hone_kernel/structured.py says why),
        # not vLLM's "auto" choice: a schema is enforced, or refused with a 400, the same way on both engines.
        structured = ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
        argv = [vllm_executable(python), "serve", model, *flags, *structured]
    else:
        argv = [python, "-m", "inference", "--model", model, *flags]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    if api_key:  # vLLM reads it from the environment too; on the command line any `ps` would show it
        env["VLLM_API_KEY"] = api_key
    return EngineLaunch(argv, env)


def _has_nvidia_gpu() -> bool:
    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def choose_engine(setting: str) -> str:
    """ "vllm" or "builtin" as given; "auto" picks vLLM when it is installed and an NVIDIA GPU is present."""
    if setting in ENGINES:
        return setting
    if setting != "auto":
        raise ValueError(f"unknown engine setting {setting!r}; expected auto, vllm or builtin")
    return "vllm" if importlib.util.find_spec("vllm") is not None and _has_nvidia_gpu() else "builtin"
