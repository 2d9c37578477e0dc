"""The training spec the control plane writes to `jobs/{id}/spec.json`: everything a trainer needs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class FileRef:
    key: str
    format: str


@dataclass
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate: float
    tuning_mode: str = "lora"  # "lora" | "full"
    beta: float = 0.1  # DPO only
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"])
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"  # "cosine" | "linear" | "constant", after warmup
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass
class TrainSpec:
    job_id: str
    fine_tuned_model: str
    model_name: str
    model_source: str  # local folder, Hugging Face id, or "builtin:hone-tiny"
    model_cache_dir: str
    storage_url: str
    training_file: FileRef
    validation_file: FileRef | None
    method: str
    hyperparameters: Hyperparameters
    seed: int
    output_prefix: str  # "jobs/{id}/"
    callback_url: str
    token: str
    attempt: int = 1
    s3_endpoint_url: str | None = None
    s3_max_attempts: int = 5  # each S3 call's attempts in all (retries with backoff), as HONE_S3_MAX_ATTEMPTS
    s3_timeout_s: float = 30.0  # connect and read timeout of each attempt, as HONE_S3_TIMEOUT_S
    max_length: int = 2048
    packing: bool = True
    token_budget: int = 16384  # padded tokens per micro-batch
    eval_interval: int = 0  # 0: about ten validation points per run
    eval_examples: int = 64  # examples in an interval validation (the full set at the end)
    checkpoint_interval_steps: int = 0  # 0: once per epoch
    # A job continuing a tuned model or checkpoint: the storage folder of the weights training starts from
    init_weights_prefix: str | None = None
    integrations: list[dict] = field(default_factory=list)  # the job's, as the API echoes them (wandb)
    # The project's W&B key (online logging) and server; no key: the wandb run is logged offline
    wandb_api_key: str | None = field(default=None, repr=False)
    wandb_base_url: str | None = None

    @classmethod
    def from_json(cls, raw: bytes | str) -> "TrainSpec":
        data = json.loads(raw)
        data["training_file"] = FileRef(**data["training_file"])
        if data.get("validation_file"):
            data["validation_file"] = FileRef(**data["validation_file"])
        data["hyperparameters"] = Hyperparameters(**data["hyperparameters"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})
