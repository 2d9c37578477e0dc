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
import struct
from pathlib import Path

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


def check_servable(method: dict, max_lora_rank: int) -> None:
    hp = (method.get(method["type"]) or {}).get("hyperparameters") or {}
    if (hp.get("tuning_mode") or "auto") == "full":
        return  # full weights are served as their own model, not hot-loaded
    param = f"method.{method['type']}.hyperparameters"
    rank = hp.get("lora_rank")
    rank = DEFAULT_LORA_RANK if rank in (None, "auto") else rank
    if rank > max_lora_rank:
        raise InvalidRequest(
            f"LoRA rank {rank} is above the serving fleet's max_lora_rank {max_lora_rank}, so the "
            f"adapter could not be served; use lora_rank {max_lora_rank} or less (or raise "
            "HONE_MAX_LORA_RANK on every engine).",
            param=f"{param}.lora_rank",
            code=ErrorCode.UNSERVABLE_ADAPTER,
        )
    modules = hp.get("lora_target_modules") or []
    vocab = sorted(m for m in modules if m in VOCABULARY_MODULES)
    if vocab:
        raise InvalidRequest(
            f"lora_target_modules {vocab} adapt the embeddings or output head, which vLLM cannot "
            f"hot-load as a LoRA adapter; choose from {sorted(SERVABLE_MODULES)}.",
            param=f"{param}.lora_target_modules",
            code=ErrorCode.UNSERVABLE_ADAPTER,
        )
    unknown = sorted(set(modules) - SERVABLE_MODULES)
    if unknown:
        raise InvalidRequest(
            f"lora_target_modules {unknown} cannot be served by vLLM for this architecture; "
            f"choose from {sorted(SERVABLE_MODULES)}.",
            param=f"{param}.lora_target_modules",
            code=ErrorCode.UNSERVABLE_ADAPTER,
        )


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


@functools.cache
def local_parameter_count(folder: str) -> int | None:
    """Parameters of a base model in a local folder, from its safetensors headers (no weights read); None for a
    Hugging Face id or a folder without safetensors."""
    total, found = 0, False
    for shard in sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []:
        with open(shard, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total, found = total + count, True
    return total if found else None
