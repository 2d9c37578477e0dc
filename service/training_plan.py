"""What a job will train with: "auto" hyperparameters resolved from the dataset, and the trainer's spec.

The spec (jobs/{id}/spec.json) is the whole contract with the trainer process, which imports nothing
from here: job id, base model, files, method, hyperparameters, seed, output prefix, callback and token."""

from __future__ import annotations

import json
import math

from service.context import AppContext
from service.db.tables import File, Job

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_LORA_RANK = 16


def auto_epochs(n_examples: int) -> int:
    """OpenAI's cookbook heuristic: 3 epochs, more for tiny sets, fewer for huge ones."""
    if n_examples * 3 < 100:
        return min(25, max(1, 100 // n_examples))
    if n_examples * 3 > 25000:
        return max(1, 25000 // n_examples)
    return 3


def auto_batch_size(n_examples: int) -> int:
    """About 0.2% of the examples, at least 1 and at most 256 (1 for small sets, as OpenAI resolves them)."""
    return max(1, min(256, math.ceil(n_examples * 0.002)))


def auto_learning_rate_multiplier(batch_size: int) -> float:
    # OpenAI resolves to 1.8-2 for small batches; larger batches take larger steps with the same multiplier.
    return 2.0 if batch_size <= 8 else 1.0


def resolve_hyperparameters(method: dict, n_examples: int) -> dict:
    """Returns the method with its OpenAI hyperparameters made concrete (Hone extensions stay as given)."""
    section = dict(method.get(method["type"]) or {})
    hp = dict(section.get("hyperparameters") or {})
    if hp.get("n_epochs", "auto") == "auto":
        hp["n_epochs"] = auto_epochs(n_examples)
    if hp.get("batch_size", "auto") == "auto":
        hp["batch_size"] = auto_batch_size(n_examples)
    hp["batch_size"] = min(hp["batch_size"], n_examples)
    if hp.get("learning_rate_multiplier", "auto") == "auto":
        hp["learning_rate_multiplier"] = auto_learning_rate_multiplier(hp["batch_size"])
    if method["type"] == "dpo" and hp.get("beta", "auto") == "auto":
        hp["beta"] = 0.1
    section["hyperparameters"] = hp
    return {**method, method["type"]: section}


def trainer_hyperparameters(ctx: AppContext, method: dict) -> dict:
    hp = method[method["type"]]["hyperparameters"]
    mode = hp.get("tuning_mode") or "auto"
    mode = "lora" if mode == "auto" else mode
    rank = hp.get("lora_rank") or "auto"
    rank = DEFAULT_LORA_RANK if rank == "auto" else rank
    alpha = hp.get("lora_alpha") or "auto"
    dropout = hp.get("lora_dropout", "auto")
    base_lr = ctx.settings.full_learning_rate if mode == "full" else ctx.settings.lora_learning_rate
    extra = {"beta": hp["beta"]} if method["type"] == "dpo" else {}
    return {
        **extra, "n_epochs": hp["n_epochs"], "batch_size": hp["batch_size"],
        "learning_rate": base_lr * hp["learning_rate_multiplier"], "tuning_mode": mode,
        "lora_rank": rank, "lora_alpha": 2.0 * rank if alpha == "auto" else alpha,
        "lora_dropout": 0.0 if dropout in ("auto", None) else dropout,
        "lora_target_modules": hp.get("lora_target_modules") or LLAMA_PROJECTIONS,
    }


def spec_key(job_id: str) -> str:
    return f"jobs/{job_id}/spec.json"


def build_spec(ctx: AppContext, job: Job, files: dict[str, File], token: str, model_name: str) -> dict:
    settings = ctx.settings
    base = ctx.base_models.get(job.base_model)
    train = files[job.training_file]
    valid = files.get(job.validation_file) if job.validation_file else None
    return {
        "job_id": job.id, "fine_tuned_model": model_name,
        "model_name": job.base_model, "model_source": base.source if base else job.base_model,
        "model_cache_dir": str(settings.resolved_model_cache_dir),
        "storage_url": settings.resolved_storage_url, "s3_endpoint_url": settings.s3_endpoint_url,
        "training_file": {"key": train.storage_key, "format": train.dataset_format},
        "validation_file": {"key": valid.storage_key, "format": valid.dataset_format} if valid else None,
        "method": job.method["type"], "hyperparameters": trainer_hyperparameters(ctx, job.method),
        "seed": job.seed, "output_prefix": f"jobs/{job.id}/", "callback_url": settings.resolved_internal_url,
        "token": token, "attempt": job.attempts, "max_length": settings.train_max_length,
        "packing": settings.train_packing, "token_budget": settings.train_token_budget,
        "checkpoint_interval_steps": settings.checkpoint_interval_steps,
    }


def write_spec(ctx: AppContext, job: Job, files: dict[str, File], token: str, model_name: str) -> str:
    """Writes the spec and returns its URL, which is all `python -m trainer --spec` needs."""
    key = spec_key(job.id)
    ctx.storage.put_bytes(key, json.dumps(build_spec(ctx, job, files, token, model_name), indent=2).encode())
    return f"{ctx.settings.resolved_storage_url.rstrip('/')}/{key}"
