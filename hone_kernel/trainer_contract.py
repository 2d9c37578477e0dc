"""The trainer contract: the one module both sides of a training run import.

- The spec the control plane writes to `jobs/{id}/spec.json` (TrainSpec): everything a trainer needs, with the
  contract's version, so a trainer image older than the control plane refuses a spec it cannot read instead of
  half-reading it.
- The reports a trainer sends back over the internal API (REPORT, COMPLETE, FAIL under
  `/internal/fine_tuning/jobs/{id}`): the message shapes, with the limits the control plane enforces.
- The exit codes a trainer ends with, and those an executor reports for what the machine did to it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

# Bumped when a spec field changes meaning or becomes required; additions with defaults keep the version.
CONTRACT_VERSION = 1


class ContractError(ValueError):
    """A spec this trainer cannot read (written by a newer control plane)."""


class ExitCode(IntEnum):
    """How a trainer process ends, as the scheduler reads it."""

    OK = 0  # the run is complete (or superseded after its result was accepted)
    FATAL = 2  # reported as failed through FAIL; retrying would not help
    SUPERSEDED = 3  # the control plane no longer wants this run (cancelled, or a newer attempt owns it)
    STORAGE = 74  # EX_IOERR: storage failed after the S3 client's retries; counted as a crash and retried
    THREAD_CRASHED = 70  # EX_SOFTWARE: a crash in a trainer thread; counted as a crash, retried from the checkpoint
    STOPPED = 75  # EX_TEMPFAIL: SIGTERM, checkpointed and stopped (pause, preemption); resumes without a crash
    # What executors report for what the machine did, not the trainer:
    DEADLINE = 124  # ran past its deadline (Kubernetes activeDeadlineSeconds)
    KILLED = 137  # SIGKILL, OOMKilled on Kubernetes


# The internal API, relative to `{callback_url}/internal/fine_tuning/jobs/{job_id}`.
REPORT, COMPLETE, FAIL = "/report", "/complete", "/fail"
# A chat completion of a model the job's project may call (a grader's model, a distillation teacher), answered as
# ModelAnswer; the control plane calls it as the project, through its gateway or the registered external model.
MODEL_CHAT = "/model_chat"
MAX_EVENTS_PER_REPORT = 5000
MAX_MESSAGE_CHARS = 4000
MAX_FAILURE_CODE_CHARS = 64
EVENT_ID_PATTERN = r"^ftevent-[A-Za-z0-9]{1,40}$"


@dataclass(frozen=True)
class ReportedEvent:
    id: str  # EVENT_ID_PATTERN; the same id twice is one event (reports are retried)
    created_at: int
    level: str  # info | warn | error
    message: str
    type: str  # message | metrics
    data: dict | None = None


@dataclass(frozen=True)
class ReportedCheckpoint:
    step: int
    metrics: dict
    storage_prefix: str  # under the job's own folder


@dataclass(frozen=True)
class Report:
    """REPORT: what happened since the last one; an empty one is a heartbeat. Replied with the job's status and
    the heartbeat interval to keep."""

    events: list[ReportedEvent] = field(default_factory=list)
    checkpoints: list[ReportedCheckpoint] = field(default_factory=list)
    progress: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """COMPLETE: the run's result; the job succeeds with it."""

    trained_tokens: int
    adapter_prefix: str
    result_key: str
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """FAIL: a failure retrying would not mend; the job fails with this error."""

    code: str
    message: str


@dataclass(frozen=True)
class ModelChat:
    """MODEL_CHAT's body: OpenAI's chat completion request, as `model`, `messages` and the other parameters."""

    model: str
    messages: list[dict]
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelAnswer:
    """MODEL_CHAT's reply (200). A model that could not answer is a 502 with the error envelope."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


def message(body: Any) -> dict:
    """A report dataclass as the JSON body it is sent as."""
    return dataclasses.asdict(body)


@dataclass
class FileRef:
    key: str
    format: str
    # Examples (0-based, counting non-blank lines) not to train on: a job's evaluation holds them out.
    exclude_examples: list[int] = field(default_factory=list)
    # Images the lines name by reference (a file id, an s3:// or gs:// URI) -> the storage key of the copy the
    # server checked at upload; the trainer puts each back into its line as a data URL (trainer/inputs.lines_of)
    images: dict[str, str] = field(default_factory=dict)


QUANT_FIELDS = ("quant_type", "double_quant", "compute_dtype")  # Hyperparameters' QLoRA-only fields


@dataclass
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate: float
    tuning_mode: str = "lora"  # "lora" | "qlora" (LoRA over the base loaded in 4 bits) | "full"
    beta: float = 0.1  # DPO only
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"  # "cosine" | "linear" | "constant", after warmup
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # QLoRA only: how bitsandbytes stores the frozen base (BitsAndBytesConfig's bnb_4bit_* options)
    quant_type: str = "nf4"  # "nf4" | "fp4"
    double_quant: bool = True  # the quantization constants quantized too (~0.4 bit a weight saved)
    compute_dtype: str = "bfloat16"  # "bfloat16" | "float16" | "float32": what the 4-bit weights are dequantized to


@dataclass
class Reinforcement:
    """Reinforcement fine-tuning (method "reinforcement"): answers sampled per prompt, graded, and the better ones
    made likelier (trainer/rft.py)."""

    grader: dict  # OpenAI's grader object as the job holds it (hone_kernel.graders.spec.Grader)
    samples_per_prompt: int = 8  # the group whose rewards are compared
    max_completion_tokens: int = 64
    temperature: float = 1.0
    kl_beta: float = 0.04  # weight of the KL divergence to the starting weights
    eval_samples: int = 1  # answers sampled per validation prompt at each evaluation
    model_call_timeout_s: float = 60.0  # one MODEL_CHAT call of a model grader, retries included
    # A python grader's sandbox (hone_kernel.graders.sandbox.SandboxLimits fields) and grades at once
    sandbox: dict = field(default_factory=dict)
    python_processes: int = 4
    # OpenAI's response_format (json_object or json_schema) every sampled answer is held to, by the grammar the
    # built-in engine uses for it (hone_kernel/structured.py); None: free text
    response_format: dict | None = None


@dataclass
class Distillation:
    """Distillation (method "distillation"): a teacher answers each prompt, then the student trains on the answers
    with the supervised loss (trainer/distill.py)."""

    teacher: str  # a model the job's project may call, through MODEL_CHAT
    samples_per_prompt: int = 1
    temperature: float = 0.0
    max_completion_tokens: int = 512
    model_call_timeout_s: float = 60.0
    concurrency: int = 8  # teacher calls at once
    answers_key: str = ""  # where the teacher's answers are written (under the job's folder), as OpenAI chat lines


@dataclass
class Resources:
    """The processes a run trains in: `nodes` machines with `gpus_per_node` devices each, one trainer process per
    device under torchrun (DDP for adapters, FSDP for full weights; trainer/distributed.py). On a host without
    GPUs the local executor runs one CPU process (gloo) per device asked for. The defaults are one process."""

    nodes: int = 1
    gpus_per_node: int = 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


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
    # A control plane not answering for this long has replaced this attempt or is gone: the trainer stops (0: never)
    control_plane_timeout_s: float = 0.0
    eval_interval: int = 0  # 0: about ten validation points per run
    eval_examples: int = 64  # examples in an interval validation (the full set at the end)
    checkpoint_interval_steps: int = 0  # 0: once per epoch
    # A job continuing a tuned model or checkpoint: the storage folder of the weights training starts from
    init_weights_prefix: str | None = None
    integrations: list[dict] = field(default_factory=list)  # the job's, as the API echoes them (wandb)
    # The project's W&B key (online logging) and server; no key: the wandb run is logged offline
    wandb_api_key: str | None = field(default=None, repr=False)
    wandb_base_url: str | None = None
    reinforcement: Reinforcement | None = None  # method "reinforcement" only
    distillation: Distillation | None = None  # method "distillation" only
    # A vision base model's LoRA also adapts its vision tower and projector (the base model registry's choice);
    # by default only its language model, as vLLM serves adapters
    lora_vision_tower: bool = False
    # How many processes train it; each checks WORLD_SIZE against it (a launcher that started too few fails fast)
    resources: Resources = field(default_factory=Resources)
    contract_version: int = CONTRACT_VERSION  # required in spec.json: see from_json

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        # Only what applies to this job: no DPO beta for SFT, no LoRA shape for full tuning (from_json restores
        # the defaults, which the trainer never reads for such a job).
        hp = data["hyperparameters"]
        if self.method != "dpo":
            hp.pop("beta")
        if self.hyperparameters.tuning_mode not in ("lora", "qlora"):
            for key in [k for k in hp if k.startswith("lora_")]:
                hp.pop(key)
        if self.hyperparameters.tuning_mode != "qlora":
            for key in QUANT_FIELDS:
                hp.pop(key)
        return json.dumps(data, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> TrainSpec:
        data = json.loads(raw)
        version = data.get("contract_version")
        if not isinstance(version, int) or version > CONTRACT_VERSION:
            raise ContractError(
                f"spec has trainer contract version {version!r}; this trainer reads up to "
                f"{CONTRACT_VERSION}: run a trainer image as new as the control plane"
            )
        data["training_file"] = FileRef(**data["training_file"])
        if data.get("validation_file"):
            data["validation_file"] = FileRef(**data["validation_file"])
        data["hyperparameters"] = Hyperparameters(**data["hyperparameters"])
        if data.get("reinforcement"):
            data["reinforcement"] = Reinforcement(**data["reinforcement"])
        if data.get("distillation"):
            data["distillation"] = Distillation(**data["distillation"])
        if data.get("resources"):
            data["resources"] = Resources(**data["resources"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})
