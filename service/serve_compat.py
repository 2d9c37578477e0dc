""" "If it trains, it serves": a job is checked against the serving fleet before anything is spent.

vLLM hot-loads LoRA adapters only up to its `--max-lora-rank`, only on the projections it implements LoRA
for, and without `modules_to_save` or new vocabulary (the trainer never adds either; embedding and output
layers are refused here because adapting them changes what the base vocabulary means to vLLM)."""

from __future__ import annotations

from service.errors import ErrorCode, InvalidRequest
from service.training_plan import DEFAULT_LORA_RANK, LLAMA_PROJECTIONS

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
