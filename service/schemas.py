"""Request bodies, in OpenAI's shapes. Responses are plain dicts built by the domain modules."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from hone_kernel.graders.spec import Grader, TestingCriterion
from hone_kernel.strict import refuse_unknown_keys


def _auto_or(
    kind: type, *, gt: float | None = None, ge: float | None = None, le: float | None = None
) -> tuple[PlainValidator, WithJsonSchema]:
    """A hyperparameter that is "auto" or a number in range, with an error message that says so: the metadata of
    its `Annotated[Any, *_auto_or(...)]` (a type mypy can read, where a returned `Annotated` is not one)."""

    def check(value: Any):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f'must be "auto" or a number, got {value!r}')
        if not math.isfinite(value):  # 1e999 parses as inf; NaN compares false with every bound
            raise ValueError(f"must be a finite number, got {value}")
        if kind is int:
            if not float(value).is_integer():
                raise ValueError(f"must be an integer, got {value!r}")
            value = int(value)
        if gt is not None and not value > gt:
            raise ValueError(f"must be greater than {gt}, got {value}")
        if ge is not None and not value >= ge:
            raise ValueError(f"must be at least {ge}, got {value}")
        if le is not None and not value <= le:
            raise ValueError(f"must be at most {le}, got {value}")
        return kind(value)

    number: dict[str, Any] = {"type": "integer" if kind is int else "number"}
    for key, bound in (("exclusiveMinimum", gt), ("minimum", ge), ("maximum", le)):
        if bound is not None:
            number[key] = bound
    schema = {"anyOf": [{"type": "string", "enum": ["auto"]}, number], "default": "auto"}
    return PlainValidator(check), WithJsonSchema(schema)


BatchSize = Annotated[Any, *_auto_or(int, ge=1, le=256)]
# OpenAI documents no upper bound; Hone's keeps the value finite and lets a far too large one reach the trainer,
# which fails the job with `training_diverged` at the step it happens.
LearningRateMultiplier = Annotated[Any, *_auto_or(float, gt=0, le=1e6)]
Epochs = Annotated[Any, *_auto_or(int, ge=1, le=50)]
Beta = Annotated[Any, *_auto_or(float, gt=0, le=2)]


class _Body(BaseModel):
    # Unknown keys are refused, never ignored: a typo (`lora_rnk`) would otherwise train with the default without a
    # word. The openai SDK sends only the fields its caller gives (`extra_body` verbatim, which is how Hone's
    # extensions reach us); non-finite numbers are refused too.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, data: Any) -> Any:
        return refuse_unknown_keys(cls, data, {})


def _auto_or_bool(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):  # `1` and `"true"` are no booleans here
        return value
    raise ValueError(f'must be "auto", true or false, got {value!r}')


AutoOrBool = Annotated[
    Any,
    PlainValidator(_auto_or_bool),
    WithJsonSchema({"anyOf": [{"type": "string", "enum": ["auto"]}, {"type": "boolean"}], "default": "auto"}),
]
LoraRank = Annotated[Any, *_auto_or(int, ge=1, le=256)]
LoraAlpha = Annotated[Any, *_auto_or(float, gt=0)]
LoraDropout = Annotated[Any, *_auto_or(float, ge=0, le=0.9)]
WarmupRatio = Annotated[Any, *_auto_or(float, ge=0, le=0.5)]
WeightDecay = Annotated[Any, *_auto_or(float, ge=0, le=1)]
MaxGradNorm = Annotated[Any, *_auto_or(float, gt=0, le=1000)]
MaxLength = Annotated[Any, *_auto_or(int, ge=16, le=131072)]


class SupervisedHyperparameters(_Body):
    batch_size: BatchSize = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"
    n_epochs: Epochs = "auto"
    # Hone extensions; left out of responses unless given.
    tuning_mode: Literal["auto", "lora", "qlora", "full"] | None = Field(
        default=None,
        description='Hone: "lora" (default) trains an adapter; "qlora" trains one over the base loaded in 4 bits '
        '(about a quarter of its memory); "full" tunes every weight (small models).',
    )
    # QLoRA's quantization (bitsandbytes); accepted with tuning_mode "qlora" only (service/training_plan.py).
    quant_type: Literal["auto", "nf4", "fp4"] | None = Field(
        default=None, description='Hone, qlora only: 4-bit data type of the frozen base (auto: "nf4").'
    )
    double_quant: AutoOrBool | None = Field(
        default=None, description="Hone, qlora only: quantize the quantization constants too (auto: true)."
    )
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(
        default=None,
        description='Hone, qlora only: what the 4-bit weights are computed in (auto: "bfloat16" on GPU trainers, '
        '"float32" on CPU ones).',
    )
    lora_rank: LoraRank | None = Field(default=None, description="Hone: LoRA rank (default 16).")
    lora_alpha: LoraAlpha | None = Field(default=None, description="Hone: LoRA alpha (default twice the rank).")
    lora_dropout: LoraDropout | None = Field(default=None, description="Hone: LoRA dropout (default 0).")
    lora_target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Hone: module names to adapt (default: every attention and MLP projection).",
    )
    warmup_ratio: WarmupRatio | None = Field(
        default=None,
        description="Hone: share of the steps the learning rate warms up over (auto: the base "
        "model's default, about 3% with at least one step).",
    )
    lr_scheduler: Literal["auto", "cosine", "linear", "constant"] | None = Field(
        default=None, description="Hone: how the learning rate decays after warmup (auto: cosine)."
    )
    weight_decay: WeightDecay | None = Field(default=None, description="Hone: AdamW weight decay (auto: 0).")
    max_grad_norm: MaxGradNorm | None = Field(default=None, description="Hone: gradient clipping norm (auto: 1.0).")
    max_length: MaxLength | None = Field(
        default=None,
        description="Hone: tokens per example; longer ones are truncated (auto: the base model's "
        "default, capped by HONE_TRAIN_MAX_LENGTH).",
    )


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Beta = "auto"


ComputeMultiplier = Annotated[Any, *_auto_or(float, gt=1e-5, le=10)]
EvalInterval = Annotated[Any, *_auto_or(int, ge=1, le=100000)]
EvalSamples = Annotated[Any, *_auto_or(int, ge=1, le=64)]
KlBeta = Annotated[Any, *_auto_or(float, ge=0, le=10)]
MaxCompletionTokens = Annotated[Any, *_auto_or(int, ge=1, le=32768)]
Temperature = Annotated[Any, *_auto_or(float, gt=0, le=2)]


class ReinforcementHyperparameters(SupervisedHyperparameters):
    reasoning_effort: Literal["default", "low", "medium", "high"] = Field(
        default="default", description="For reasoning models; Hone's base models are not, so only 'default'."
    )
    compute_multiplier: ComputeMultiplier = Field(
        default="auto", description="Answers sampled per prompt: 8 times this (at least 2, at most 64)."
    )
    eval_interval: EvalInterval = Field(
        default="auto", description="Steps between validation rewards (auto: about ten in a run)."
    )
    eval_samples: EvalSamples = Field(default="auto", description="Answers sampled per validation prompt (auto: 1).")
    # Hone extensions
    beta: KlBeta | None = Field(
        default=None, description="Hone: weight of the KL divergence to the starting weights (auto: 0.04)."
    )
    max_completion_tokens: MaxCompletionTokens | None = Field(
        default=None, description="Hone: each sampled answer's length at most (auto: the base model's, 512 tokens)."
    )
    temperature: Temperature | None = Field(
        default=None, description="Hone: sampling temperature of the answers (auto: 1.0)."
    )


class ReinforcementMethod(_Body):
    grader: Grader
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)
    response_format: dict[str, Any] | None = Field(
        default=None,
        description="The answers' format: text (the default), json_object or json_schema. Every sampled answer "
        "is held to it by constrained decoding, as the built-in engine holds a served answer.",
    )


SamplesPerPrompt = Annotated[Any, *_auto_or(int, ge=1, le=16)]
TeacherTemperature = Annotated[Any, *_auto_or(float, ge=0, le=2)]


class DistillationHyperparameters(SupervisedHyperparameters):
    """Hone: the student's supervised hyperparameters, and how the teacher answers."""

    samples_per_prompt: SamplesPerPrompt = Field(default="auto", description="Teacher answers per prompt (auto: 1).")
    temperature: TeacherTemperature = Field(
        default="auto", description="The teacher's sampling temperature (auto: 0, greedy, for one answer; else 1)."
    )
    max_completion_tokens: MaxCompletionTokens = Field(
        default="auto", description="Each teacher answer's length at most (auto: the base model's, 512)."
    )


class DistillationMethod(_Body):
    """Hone: a teacher model's answers to the training file's prompts train the student, with the supervised loss."""

    teacher: str = Field(
        min_length=1,
        description="Any model the project can call: a base model, a tuned model (ft:...), or an external model "
        "it registered (ext:<name>).",
    )
    hyperparameters: DistillationHyperparameters = Field(default_factory=DistillationHyperparameters)


class SupervisedMethod(_Body):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoMethod(_Body):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(_Body):
    type: Literal["supervised", "dpo", "reinforcement", "distillation"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None
    distillation: DistillationMethod | None = Field(
        default=None, description="Hone: with type 'distillation', the teacher and the student's hyperparameters."
    )

    @field_validator("supervised", "dpo", "reinforcement", "distillation", mode="before")
    @classmethod
    def _section_of_its_type(cls, value: Any, info: ValidationInfo) -> Any:
        # Before the section's own checks: {"type": "supervised", "reinforcement": {...}} names the section that
        # does not belong, not what that section lacks (it would otherwise train supervised and drop it).
        kind = info.data.get("type")
        if value is not None and kind not in (None, info.field_name):
            raise ValueError(f"method.type is '{kind}' but a '{info.field_name}' section was given")
        return value


class WandbSettings(_Body):
    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=50)


class Integration(_Body):
    type: Literal["wandb"]
    wandb: WandbSettings


def _metadata_limits(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's metadata: at most 16 pairs, keys of 1 to 64 characters, values of at most 512."""
    if value is not None:
        if len(value) > 16:
            raise ValueError("at most 16 keys are allowed")
        for key in value:
            if not 1 <= len(key) <= 64:
                raise ValueError(f"key {key[:70]!r} must be 1 to 64 characters")
    return value


Metadata = Annotated[dict[str, Annotated[str, Field(max_length=512)]] | None, AfterValidator(_metadata_limits)]


class JobEvaluation(_Body):
    """Hone: measure the tuned model against its base (or another model) once training ends."""

    file: str = Field(
        default="auto",
        description='"auto": the validation file, or else a held-out slice of the training file that is then not '
        "trained on; or the id of a file in the training format.",
    )
    holdout_fraction: float = Field(
        default=0.1, gt=0, le=0.5, description='Share of the training file held out ("auto").'
    )
    max_rows: int = Field(default=200, ge=1, le=10000, description="Rows evaluated at most (held out at most).")
    testing_criteria: list[TestingCriterion] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Graders over {{item.reference}} (the expected answer) and {{sample.output_text}}; "
        "default: an exact match. A reinforcement job's rows are its prompt lines, each whole line the item "
        "({{item.<field>}}), and the default is the job's grader, compared by mean reward.",
    )
    compare_to: str = Field(
        default="base",
        min_length=1,
        description='"base" (the base model, also for a job that continues a tuned model), a model of the project '
        "(e.g. the parent ft: model a job continues), or an external model (ext:<name>) it registered.",
    )
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        le=32768,
        description="Each answer's length at most; default 256, or a reinforcement job's own max_completion_tokens.",
    )
    deploy_if_better: bool = Field(
        default=False,
        description="With auto_deploy: keep the tuned model's endpoint only if it beats compare_to by min_improvement.",
    )
    min_improvement: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Margin over compare_to: of the pass rate, or of the mean reward when a reinforcement job's own "
        "grader scores.",
    )

    @field_validator("testing_criteria")
    @classmethod
    def _unique_names(cls, criteria: list[Any] | None) -> list[Any] | None:
        names = [c.name for c in criteria or []]
        if len(set(names)) != len(names):
            raise ValueError("testing criteria need distinct names")
        return criteria


class JobResources(_Body):
    """Hone: the devices a job trains on, one trainer process each (data-parallel: the global batch is split over
    them, the losses and the result are those of one process). `gpus` on one machine, or `nodes` x
    `gpus_per_node`. On a host without GPUs the local executor runs a CPU process per device asked for."""

    gpus: int | None = Field(default=None, ge=1, le=1024, description="Hone: devices on one machine.")
    nodes: int | None = Field(default=None, ge=1, le=256, description="Hone: machines (with gpus_per_node).")
    gpus_per_node: int | None = Field(default=None, ge=1, le=64, description="Hone: devices on each machine.")

    @model_validator(mode="after")
    def _one_shape(self) -> JobResources:
        if self.gpus is not None and (self.nodes is not None or self.gpus_per_node is not None):
            raise ValueError("give either gpus (one machine) or nodes and gpus_per_node, not both")
        if self.gpus is None and self.gpus_per_node is None:
            raise ValueError("give gpus, or gpus_per_node (and nodes)")
        return self

    def resolved(self) -> dict[str, int]:
        if self.gpus is not None:
            return {"nodes": 1, "gpus_per_node": self.gpus}
        return {"nodes": self.nodes or 1, "gpus_per_node": self.gpus_per_node or 1}


class CreateFineTuningJob(_Body):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: SupervisedHyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int | None = Field(default=None, ge=0, le=2147483647)
    metadata: Metadata = None
    integrations: list[Integration] | None = Field(default=None, max_length=5)
    priority: int = Field(
        default=0,
        ge=-100,
        le=100,
        description="Hone: higher-priority jobs leave the queue first; FIFO within a priority.",
    )
    evaluation: JobEvaluation | None = Field(
        default=None, description="Hone: after training, evaluate the tuned model against its base (or a named model)."
    )
    auto_deploy: bool = Field(
        default=True,
        description="Hone: deploy an endpoint for the tuned model when the job "
        "succeeds (unless HONE_AUTO_DEPLOY is off).",
    )
    resources: JobResources | None = Field(
        default=None, description="Hone: train data-parallel on several devices (default: one)."
    )


class CreateEndpoint(_Body):
    model: str = Field(min_length=1, description="A tuned model (ft:...), a checkpoint id or name, or a base model.")
    idle_timeout_s: int | None = Field(
        None,
        ge=0,
        le=30 * 86400,
        description=(
            "Scale to zero after this many seconds without requests (the next request wakes it); 0: never; "
            "omitted: the server's HONE_ENDPOINT_IDLE_TIMEOUT_S."
        ),
    )
    replicas: int | None = Field(
        None,
        ge=1,
        le=64,
        description=(
            "Engines serving the model side by side, the gateway spreading requests over them (Kubernetes: the "
            "Deployment's replicas); omitted: 1 for a new endpoint, unchanged for an existing one."
        ),
    )


class CreateProject(_Body):
    name: str = Field(min_length=1, max_length=256)  # the column's size, on PostgreSQL a hard limit


class CreateServiceAccount(_Body):
    name: str = Field(min_length=1, max_length=256)


class GraderRunRequest(_Body):
    """POST /v1/fine_tuning/alpha/graders/run, as OpenAI's."""

    grader: Grader
    model_sample: str
    item: Any = None


class GraderValidateRequest(_Body):
    grader: Grader


class UpdateStoredCompletion(_Body):
    metadata: Metadata = Field(description="Replaces the stored completion's metadata (the only field that changes).")


class ExportStoredCompletions(_Body):
    """Hone: stored completions that match, as an OpenAI chat fine-tune file of the project."""

    model: str | None = Field(default=None, min_length=1, description="Only completions of this model.")
    metadata: Metadata = Field(default=None, description="Only completions with all these metadata pairs.")
    created_after: int | None = Field(default=None, ge=0, description="Unix seconds, inclusive.")
    created_before: int | None = Field(default=None, ge=0, description="Unix seconds, exclusive.")
    limit: int = Field(default=10000, ge=1, le=100000, description="Completions at most, oldest first.")
    filename: str = Field(default="stored-completions.jsonl", pattern=r"^[^/\\]{1,200}\.jsonl$")
