""" "If it trains, it serves": a job is checked against the serving fleet before anything is spent.

vLLM hot-loads LoRA adapters only up to its `--max-lora-rank`, only on the projections it implements LoRA
for, and without `modules_to_save` or new vocabulary (the trainer never adds either; embedding and output
layers are refused here because adapting them changes what the base vocabulary means to vLLM). Adapters of
"lora" and "qlora" jobs alike: a QLoRA adapter is a LoRA adapter over the full-precision base.

And "if it is accepted, it fits": with HONE_TRAINER_MEMORY_GB set, a job whose base model's weights, as its tuning
mode holds them in training, would not fit a trainer's GPU is refused naming tuning_mode (check_memory_fit)."""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from service.context import AppContext
from service.errors import ErrorCode, InvalidRequest
from service.training_plan import DEFAULT_LORA_RANK, LLAMA_PROJECTIONS

# Trainer memory per base-model parameter on a GPU (bf16), before activations, by tuning mode:
# - full: the weights, their gradients and AdamW's two states, all bf16 (torch keeps the states in the weights' dtype)
# - lora: the frozen bf16 base; the adapter and its optimizer state add under 1% at rank 16
# - qlora: 4-bit weights (half a byte) plus bitsandbytes' constants: an absmax per 64 weights, float32 (4/64 byte a
#   weight), or with double quantization 8-bit (1/64) plus a float32 per 256 of those (4/16384). Embeddings and norms
#   stay bf16; counted at half a byte too, the estimate is low by their share (a few % on 7B-class models).
FULL_BYTES_PER_PARAM = 2 + 2 + 2 * 2
LORA_BYTES_PER_PARAM = 2
QLORA_BYTES_PER_PARAM = {True: 0.5 + 1 / 64 + 4 / 16384, False: 0.5 + 4 / 64}
# Activations, the CUDA context and the allocator's slack: left free of the trainer's memory
HEADROOM = 0.8

SERVABLE_MODULES = frozenset(LLAMA_PROJECTIONS)
VOCABULARY_MODULES = frozenset({"embed_tokens", "lm_head", "wte", "word_embeddings"})
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own bound


@dataclass(frozen=True)
class LoraFields:
    """Where a LoRA shape's fields were given, for the errors' `param` (the word a message names is its last part):
    a job's hyperparameters, or an imported adapter's adapter_config.json."""

    rank: str
    target_modules: str
    modules_to_save: str = "modules_to_save"


def _word(param: str) -> str:
    return re.split(r"[.:]", param)[-1]


def check_lora_servable(
    rank: int,
    target_modules: Iterable[str],
    max_lora_rank: int,
    fields: LoraFields,
    modules_to_save: Iterable[str] = (),
) -> None:
    """The serving fleet's rules for a LoRA adapter, for a job before it trains one and for an adapter imported
    from elsewhere: a rank vLLM's --max-lora-rank takes, projections vLLM implements LoRA for, and no vocabulary
    or whole layers beside the adapter (400 `unservable_adapter` naming the field)."""
    if rank > max_lora_rank:
        raise InvalidRequest(
            f"LoRA rank {rank} is above the serving fleet's max_lora_rank {max_lora_rank}, so the "
            f"adapter could not be served; use {_word(fields.rank)} {max_lora_rank} or less (or raise "
            "HONE_MAX_LORA_RANK on every engine).",
            param=fields.rank,
            code=ErrorCode.UNSERVABLE_ADAPTER,
        )
    saved = sorted(modules_to_save)
    if saved:
        raise InvalidRequest(
            f"{_word(fields.modules_to_save)} {saved} keeps whole layers beside the adapter, which vLLM cannot "
            "hot-load with a LoRA adapter (it serves the base model's own); train the adapter without them.",
            param=fields.modules_to_save,
            code=ErrorCode.UNSERVABLE_ADAPTER,
        )
    modules = list(target_modules)
    vocab = sorted(m for m in modules if m in VOCABULARY_MODULES)
    if vocab:
        raise InvalidRequest(
            f"{_word(fields.target_modules)} {vocab} adapt the embeddings or output head, which vLLM cannot "
            f"hot-load as a LoRA adapter; choose from {sorted(SERVABLE_MODULES)}.",
            param=fields.target_modules,
            code=ErrorCode.UNSERVABLE_ADAPTER,
        )
    unknown = sorted(set(modules) - SERVABLE_MODULES)
    if unknown:
        raise InvalidRequest(
            f"{_word(fields.target_modules)} {unknown} cannot be served by vLLM for this architecture; "
            f"choose from {sorted(SERVABLE_MODULES)}.",
            param=fields.target_modules,
            code=ErrorCode.UNSERVABLE_ADAPTER,
        )


def check_servable(method: dict, max_lora_rank: int) -> None:
    """A job's adapter, as its hyperparameters ask for it (check_lora_servable)."""
    hp = (method.get(method["type"]) or {}).get("hyperparameters") or {}
    if (hp.get("tuning_mode") or "auto") == "full":
        return  # full weights are served as their own model, not hot-loaded
    param = f"method.{method['type']}.hyperparameters"
    rank = hp.get("lora_rank")
    rank = DEFAULT_LORA_RANK if rank in (None, "auto") else rank
    fields = LoraFields(f"{param}.lora_rank", f"{param}.lora_target_modules")
    check_lora_servable(rank, hp.get("lora_target_modules") or [], max_lora_rank, fields)


def weight_memory_bytes(parameters: int, hp: dict) -> int:
    """What a trainer holds for the base model's weights in the job's (resolved or asked) tuning mode."""
    mode = hp.get("tuning_mode") or "auto"
    if mode == "full":
        return parameters * FULL_BYTES_PER_PARAM
    if mode == "qlora":
        return round(parameters * QLORA_BYTES_PER_PARAM[hp.get("double_quant") in (None, "auto", True)])
    return parameters * LORA_BYTES_PER_PARAM  # "lora", and "auto" (which resolves to it)


def check_memory_fit(method: dict, parameters: int, memory_gb: float) -> None:
    """Refuses a job whose base weights, as its tuning mode trains them, would fill more than HEADROOM of a
    trainer's `memory_gb`; the message names the mode that would fit."""
    hp = (method.get(method["type"]) or {}).get("hyperparameters") or {}
    need, room = weight_memory_bytes(parameters, hp), HEADROOM * memory_gb * 1e9
    if need <= room:
        return
    fits = [m for m in ("lora", "qlora") if weight_memory_bytes(parameters, {"tuning_mode": m}) <= room]
    hint = f"use tuning_mode {fits[0]!r}, which needs less" if fits else "no tuning mode fits it"
    raise InvalidRequest(
        f"tuning_mode {hp.get('tuning_mode') or 'auto'!r} holds this {parameters / 1e9:.1f}B-parameter base model in "
        f"about {need / 1e9:.1f} GB in training, more than the {HEADROOM:.0%} of a trainer's {memory_gb:g} GB "
        f"(HONE_TRAINER_MEMORY_GB) left beside activations; {hint}.",
        param=f"method.{method['type']}.hyperparameters.tuning_mode",
        code=ErrorCode.INVALID_VALUE,
    )


def check_fits_trainer(ctx: AppContext, model: str, method: dict) -> None:
    """check_memory_fit for a job on a base model in a local folder, when HONE_TRAINER_MEMORY_GB is set. A Hugging
    Face id (its size unknown until downloaded) and a tuned model being continued are not checked."""
    memory_gb = ctx.settings.training.trainer_memory_gb
    base = ctx.base_models.get(model) if memory_gb else None
    parameters = local_parameter_count(base.source) if base is not None else None
    if parameters:
        check_memory_fit(method, parameters, memory_gb)


def safetensors_header(fh: BinaryIO, size: int) -> dict:
    """The JSON header of a safetensors file (its tensors' names, dtypes, shapes and byte ranges) read from `fh`,
    `size` bytes long, without its weights; ValueError when the file cannot be one."""
    if size < 8:
        raise ValueError("it is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > min(size - 8, MAX_SAFETENSORS_HEADER):
        raise ValueError(f"its header claims {length} bytes, more than the file (or {MAX_SAFETENSORS_HEADER}) holds")
    try:
        header = json.loads(fh.read(length))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header


@functools.cache
def local_tensor_shapes(folder: str) -> dict[str, list[int]] | None:
    """The shape of every tensor of a base model in a local folder, from its safetensors headers (no weights
    read); None for a Hugging Face id or a folder without safetensors."""
    shapes: dict[str, list[int]] = {}
    for shard in sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []:
        with open(shard, "rb") as fh:
            header = safetensors_header(fh, shard.stat().st_size)
        shapes |= {name: list(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    return shapes or None


def local_parameter_count(folder: str) -> int | None:
    """Parameters of a base model in a local folder (local_tensor_shapes); None when they cannot be read there."""
    shapes = local_tensor_shapes(folder)
    return sum(math.prod(shape) for shape in shapes.values()) if shapes else None
