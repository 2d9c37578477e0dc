"""What a job will train with: "auto" hyperparameters resolved from the dataset, and the trainer's spec.

The spec (jobs/{id}/spec.json) is the whole contract with the trainer process, which imports nothing
from here: job id, base model, files, method, hyperparameters, seed, output prefix, callback and token."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy.orm import object_session

from hone_kernel.trainer_contract import QUANT_FIELDS, FileRef, Hyperparameters, TrainSpec
from service import distillation, job_resources, projects, reinforcement
from service.base_models import TrainingDefaults
from service.context import AppContext
from service.db.tables import File, Job
from service.errors import ErrorCode, InvalidRequest
from service.settings import Settings

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_LORA_RANK = TrainingDefaults().lora_rank
MAX_AUTO_BATCH = 256


@dataclass(frozen=True)
class DatasetShape:
    """What "auto" looks at in a training file: its examples and (estimated) tokens per example."""

    examples: int
    mean_tokens: float

    @classmethod
    def of(cls, file: File, defaults: TrainingDefaults, held_out: int = 0) -> DatasetShape:
        """`held_out`: examples the job does not train on (its evaluation's), left out of the count."""
        examples = max(1, file.example_count or 1)
        media = file.dataset_media or {}
        # An image is not its bytes' worth of tokens: its data URL is left out, and it counts as the model's run of
        # image tokens instead.
        text_bytes = (file.bytes or 0) - media.get("image_bytes", 0)
        tokens = text_bytes / defaults.bytes_per_token + media.get("images", 0) * defaults.image_tokens
        return cls(max(1, examples - held_out), max(1.0, tokens / examples))


def auto_batch_size(shape: DatasetShape, d: TrainingDefaults) -> int:
    """About `tokens_per_step` tokens per step, keeping at least `min_steps_per_epoch` steps in an epoch."""
    by_tokens = max(1, round(d.tokens_per_step / shape.mean_tokens))
    by_steps = max(1, shape.examples // d.min_steps_per_epoch)
    return max(1, min(MAX_AUTO_BATCH, by_tokens, by_steps))


def auto_epochs(shape: DatasetShape, d: TrainingDefaults) -> int:
    """`epochs`, more for small sets (until `min_examples_seen`), fewer for huge ones (to `max_examples_seen`)."""
    n = shape.examples
    if n * d.epochs < d.min_examples_seen:
        return min(d.max_epochs, math.ceil(d.min_examples_seen / n))
    if n * d.epochs > d.max_examples_seen:
        return max(1, d.max_examples_seen // n)
    return d.epochs


def resolve_hyperparameters(
    method: dict, shape: DatasetShape, d: TrainingDefaults, max_length_cap: int, on_gpu: bool = True
) -> dict:
    """The method with every "auto" (or absent) hyperparameter made concrete, as the job then shows them.
    `on_gpu`: whether the job's trainer runs on a GPU (trainer_on_gpu), which QLoRA's compute_dtype follows."""
    section = dict(method.get(method["type"]) or {})
    hp = dict(section.get("hyperparameters") or {})
    if method["type"] == "reinforcement":
        hp = reinforcement.resolve(
            hp, shape.examples, d, json_answers=reinforcement.response_format(method) is not None
        )
    if method["type"] == "distillation":
        hp = distillation.resolve(hp, d)

    def auto(key: str) -> bool:
        return hp.get(key) in (None, "auto")

    if auto("batch_size"):
        hp["batch_size"] = auto_batch_size(shape, d)
    hp["batch_size"] = min(hp["batch_size"], shape.examples)
    if auto("n_epochs"):
        hp["n_epochs"] = auto_epochs(shape, d)
    if auto("learning_rate_multiplier"):
        # the base model's learning rate is tuned for the auto batch size; DPO and RFT take a fraction of it
        hp["learning_rate_multiplier"] = {
            "dpo": d.dpo_learning_rate_multiplier,
            "reinforcement": d.rl_learning_rate_multiplier,
        }.get(method["type"], 1.0)
    if method["type"] == "dpo" and auto("beta"):
        hp["beta"] = 0.1
    if auto("tuning_mode"):
        hp["tuning_mode"] = "lora"
    if hp["tuning_mode"] == "qlora":
        if auto("quant_type"):
            hp["quant_type"] = "nf4"  # the QLoRA paper's: normally distributed weights, better than fp4 at 4 bits
        if auto("double_quant"):
            hp["double_quant"] = True
        if auto("compute_dtype"):
            # bf16 is what GPUs train in; CPUs have no fast bf16 matmul on most hosts, and fp32 costs them nothing
            hp["compute_dtype"] = "bfloat16" if on_gpu else "float32"
    if hp["tuning_mode"] in ("lora", "qlora"):
        if auto("lora_rank"):
            hp["lora_rank"] = d.lora_rank
        if auto("lora_alpha"):
            hp["lora_alpha"] = d.lora_alpha_per_rank * hp["lora_rank"]
        if auto("lora_dropout"):
            hp["lora_dropout"] = 0.0
        if not hp.get("lora_target_modules"):
            hp["lora_target_modules"] = LLAMA_PROJECTIONS
    for key in ("warmup_ratio", "lr_scheduler", "weight_decay", "max_grad_norm"):
        if auto(key):
            hp[key] = getattr(d, key)
    if auto("max_length"):
        hp["max_length"] = d.max_length
    hp["max_length"] = min(hp["max_length"], max_length_cap)
    section["hyperparameters"] = hp
    return {**method, method["type"]: section}


def trainer_hyperparameters(ctx: AppContext, method: dict, d: TrainingDefaults) -> dict:
    """The trainer's view of a resolved method: absolute learning rate, LoRA shape, schedule."""
    hp = method[method["type"]]["hyperparameters"]
    mode = hp["tuning_mode"]
    settings = ctx.settings
    if mode == "full":
        base_lr = settings.training.full_learning_rate or d.full_learning_rate
    else:
        base_lr = settings.training.lora_learning_rate or d.lora_learning_rate
    extra = {"beta": hp["beta"]} if method["type"] == "dpo" else {}
    lora = (
        {
            "lora_rank": hp["lora_rank"],
            "lora_alpha": hp["lora_alpha"],
            "lora_dropout": hp["lora_dropout"],
            "lora_target_modules": hp["lora_target_modules"],
        }
        if mode in ("lora", "qlora")
        else {}
    )
    quant = {key: hp[key] for key in QUANT_FIELDS} if mode == "qlora" else {}
    return {
        **extra,
        **lora,
        **quant,
        "n_epochs": hp["n_epochs"],
        "batch_size": hp["batch_size"],
        "learning_rate": base_lr * hp["learning_rate_multiplier"],
        "tuning_mode": mode,
        "warmup_ratio": hp["warmup_ratio"],
        "lr_scheduler": hp["lr_scheduler"],
        "weight_decay": hp["weight_decay"],
        "max_grad_norm": hp["max_grad_norm"],
    }


def trainer_on_gpu(settings: Settings) -> bool:
    """Whether the executor gives trainers a GPU: the local one with CUDA_VISIBLE_DEVICES set, Kubernetes with
    HONE_K8S_GPUS_PER_JOB above 0."""
    if settings.training.executor == "kubernetes":
        return settings.kubernetes.k8s_gpus_per_job > 0
    return bool(settings.training.gpu_devices)


def check_tuning_options(method: dict, param_prefix: str) -> None:
    """QLoRA's quantization options do nothing for another tuning mode, so given with one they are refused
    (naming the field) rather than ignored; "auto" among them is no request and passes."""
    hp = (method.get(method["type"]) or {}).get("hyperparameters") or {}
    if hp.get("tuning_mode") == "qlora":
        return
    for key in QUANT_FIELDS:
        if hp.get(key) not in (None, "auto"):
            raise InvalidRequest(
                f"{key} sets how QLoRA quantizes the base model, and this job's tuning_mode is "
                f'{hp.get("tuning_mode") or "auto"!r} (which loads it unquantized); set tuning_mode "qlora" '
                f"or leave {key} out.",
                param=f"{param_prefix}.{key}",
                code=ErrorCode.INVALID_VALUE,
            )


def training_defaults(ctx: AppContext, job: Job) -> TrainingDefaults:
    base = ctx.base_models.get(job.base_model)
    return base.training if base else TrainingDefaults()


def held_out_examples(job: Job) -> list[int]:
    """The training examples the job's evaluation holds out (service/job_evaluation.py), never trained on."""
    return list((job.evaluation or {}).get("holdout") or [])


def spec_key(job_id: str) -> str:
    return f"jobs/{job_id}/spec.json"


def _file_ref(f: File, exclude: list[int] | None = None) -> FileRef:
    if f.dataset_format is None:  # jobs are created on validated files only: a row without one is malformed
        raise ValueError(f"file {f.id} has no dataset format")
    objects = (f.dataset_media or {}).get("objects") or {}  # images named by reference, copied in at upload
    return FileRef(f.storage_key, f.dataset_format, list(exclude or []), dict(objects))


def build_spec(ctx: AppContext, job: Job, files: dict[str, File], token: str, model_name: str) -> TrainSpec:
    settings = ctx.settings
    base = ctx.base_models.get(job.base_model)
    train = files[job.training_file]
    valid = files.get(job.validation_file) if job.validation_file else None
    rl = job.method["type"] == "reinforcement"
    return TrainSpec(
        job_id=job.id,
        fine_tuned_model=model_name,
        model_name=job.base_model,
        model_source=base.source if base else job.base_model,
        model_cache_dir=str(settings.resolved_model_cache_dir),
        storage_url=settings.resolved_storage_url,
        s3_endpoint_url=settings.storage.s3_endpoint_url,
        s3_max_attempts=settings.storage.s3_max_attempts,
        s3_timeout_s=settings.storage.s3_timeout_s,
        training_file=_file_ref(train, held_out_examples(job)),
        validation_file=_file_ref(valid) if valid else None,
        method=job.method["type"],
        hyperparameters=Hyperparameters(
            **trainer_hyperparameters(ctx, job.method, base.training if base else TrainingDefaults())
        ),
        seed=job.seed,
        output_prefix=f"jobs/{job.id}/",
        callback_url=settings.resolved_internal_url,
        token=token,
        attempt=job.attempts,
        max_length=job.method[job.method["type"]]["hyperparameters"]["max_length"],
        packing=settings.training.train_packing,
        token_budget=settings.training.train_token_budget,
        # Twice the stall timeout: by then the scheduler has replaced a trainer it could not hear from.
        control_plane_timeout_s=2 * settings.training.trainer_stall_timeout_s,
        checkpoint_interval_steps=settings.training.checkpoint_interval_steps,
        init_weights_prefix=job.parent_prefix,
        lora_vision_tower=bool(base and base.lora_vision_tower),
        resources=job_resources.of_job(job.resources),
        reinforcement=reinforcement.trainer_section(job.method, settings.graders) if rl else None,
        eval_interval=reinforcement.eval_interval(job.method) if rl else 0,
        distillation=(
            distillation.trainer_section(job.id, job.method, settings.graders)
            if job.method["type"] == "distillation"
            else None
        ),
        **projects.trainer_integrations(object_session(job), job),  # wandb: the project's key, if any
    )


def write_spec(ctx: AppContext, job: Job, files: dict[str, File], token: str, model_name: str) -> str:
    """Writes the spec and returns its URL, which is all `python -m trainer --spec` needs."""
    key = spec_key(job.id)
    ctx.storage.put_bytes(key, build_spec(ctx, job, files, token, model_name).to_json())
    return f"{ctx.settings.resolved_storage_url.rstrip('/')}/{key}"
