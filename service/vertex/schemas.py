"""Vertex request bodies. Keys are accepted in camelCase or snake_case (Vertex's proto3 JSON parser takes both,
and google-genai mixes them), int64 fields as JSON numbers or strings, enums as names or proto numbers."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from service.vertex.body import VertexBody
from service.vertex.evaluation import EvaluationConfig

# AdapterSize: name -> (proto number, LoRA rank). The numbers are not in rank order (TWO was added last).
ADAPTER_SIZES = {
    "ADAPTER_SIZE_ONE": (1, 1),
    "ADAPTER_SIZE_TWO": (6, 2),
    "ADAPTER_SIZE_FOUR": (2, 4),
    "ADAPTER_SIZE_EIGHT": (3, 8),
    "ADAPTER_SIZE_SIXTEEN": (4, 16),
    "ADAPTER_SIZE_THIRTY_TWO": (5, 32),
}
ADAPTER_SIZE_OF_RANK = {rank: name for name, (_, rank) in ADAPTER_SIZES.items()}
_RANK_OF_NUMBER = {number: rank for number, rank in ADAPTER_SIZES.values()}


def _lora_rank(value: Any) -> int | None:
    """An AdapterSize given by name or proto number (a number may come as a string) -> its LoRA rank."""
    if value in (None, 0, "0", "ADAPTER_SIZE_UNSPECIFIED"):
        return None
    if isinstance(value, str) and value in ADAPTER_SIZES:
        return ADAPTER_SIZES[value][1]
    if (
        isinstance(value, (int, str))
        and not isinstance(value, bool)
        and str(value).isdigit()
        and int(value) in _RANK_OF_NUMBER
    ):
        return _RANK_OF_NUMBER[int(value)]
    raise ValueError(f"unknown AdapterSize {value!r}; use one of {', '.join(ADAPTER_SIZES)} or its number")


LoraRank = Annotated[int | None, BeforeValidator(_lora_rank)]


class HyperParameters(VertexBody):
    # int64 fields: pydantic's lax mode reads "3" as 3, as proto3 JSON allows.
    epoch_count: int | None = Field(default=None, ge=1, le=50)
    learning_rate_multiplier: float | None = Field(default=None, gt=0, le=1e6)  # OpenAI's bound in Hone
    adapter_size: LoraRank = None
    batch_size: int | None = Field(default=None, ge=1, le=256)  # v1beta1, for open models
    learning_rate: float | None = None  # v1beta1; refused with what to use instead


class PreferenceHyperParameters(HyperParameters):
    beta: float | None = Field(default=None, gt=0, le=2)


# TuningMode (v1beta1): name or proto number -> Hone's tuning_mode.
TUNING_MODES = {
    "TUNING_MODE_UNSPECIFIED": (0, None),
    "TUNING_MODE_FULL": (1, "full"),
    "TUNING_MODE_PEFT_ADAPTER": (2, "lora"),
}


def _tuning_mode(value: Any) -> str | None:
    for name, (number, mode) in TUNING_MODES.items():
        if value in (name, number, str(number)) and not isinstance(value, bool):
            return mode
    if value is None:
        return None
    raise ValueError(f"unknown TuningMode {value!r}; use one of {', '.join(TUNING_MODES)} or its number")


class SupervisedTuningSpec(VertexBody):
    training_dataset_uri: str = Field(min_length=1)
    validation_dataset_uri: str | None = None
    hyper_parameters: HyperParameters = Field(default_factory=HyperParameters)
    export_last_checkpoint_only: bool | None = None
    tuning_mode: Annotated[str | None, BeforeValidator(_tuning_mode)] = None  # v1beta1; Hone's tuning_mode
    evaluation_config: EvaluationConfig | None = None  # auto-evaluation after tuning (service/vertex/evaluation.py)


class PreferenceOptimizationSpec(SupervisedTuningSpec):
    hyper_parameters: PreferenceHyperParameters = Field(default_factory=PreferenceHyperParameters)


class TeacherGeneration(VertexBody):
    """How the teacher answers (DistillationHyperParameters.generationConfig): Hone's teacher `temperature`,
    `samples_per_prompt` and `max_completion_tokens`; any other GenerationConfig field is refused."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    candidate_count: int | None = Field(default=None, ge=1, le=16)
    max_output_tokens: int | None = Field(default=None, ge=1, le=32768)


class DistillationHyperParameters(HyperParameters):
    # The weight of the student's SFT loss (Vertex mixes it with a distillation loss): Hone trains with the SFT loss
    # alone, so only 1 is what it does (service/vertex/distillation.py refuses another value).
    sft_loss_weight_multiplier: float | None = None
    generation_config: TeacherGeneration | None = None


class DistillationSpec(VertexBody):
    """A teacher answers the prompts, and the student (baseModel) trains on the answers: Hone's `distillation`."""

    refused = {
        "studentModel": "give the student as baseModel (studentModel is deprecated).",
        "trainingDatasetUri": "give the prompts as promptDatasetUri (trainingDatasetUri is deprecated).",
        "pipelineRootDirectory": "Hone runs no pipeline: its artifacts (the teacher's answers, checkpoints) are kept "
        "in Hone's storage and listed as the job's result files.",
        "evaluationConfig": "Hone evaluates a tuned model against the answers of its dataset, and a distillation "
        "dataset holds prompts only.",
    }
    prompt_dataset_uri: str = Field(min_length=1)
    validation_dataset_uri: str | None = None
    base_teacher_model: str | None = None
    tuned_teacher_model_source: str | None = None
    hyper_parameters: DistillationHyperParameters = Field(default_factory=DistillationHyperParameters)
    export_last_checkpoint_only: bool | None = None
    tuning_mode: Annotated[str | None, BeforeValidator(_tuning_mode)] = None  # the student's


_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
MAX_LABELS = 16  # what a job's metadata holds


_OUTPUT_ONLY = (
    "name",
    "state",
    "tuningJobState",
    "tuningJobMetadata",
    "createTime",
    "startTime",
    "endTime",
    "updateTime",
    "error",
    "experiment",
    "tunedModel",
    "tuningDataStats",
    "evaluateDatasetRuns",
    "gcsMetricsUri",
    "pipelineJob",
    "satisfiesPzs",
    "satisfiesPzi",
)


class CreateTuningJob(VertexBody):
    refused = {
        "encryptionSpec": "customer-managed encryption keys are not supported; data is stored as HONE_STORAGE_URL "
        "says.",
        "serviceAccount": "trainers run with Hone's own credentials.",
        "outputUri": "tuned weights are kept in Hone's storage and served by Hone.",
        "customBaseModel": "give baseModel, one of the base models Hone serves (HONE_BASE_MODELS).",
        **{field: "it is output only, set by the service." for field in _OUTPUT_ONLY},
    }
    base_model: str | None = None
    pre_tuned_model: dict[str, Any] | None = None
    supervised_tuning_spec: SupervisedTuningSpec | None = None
    preference_optimization_spec: PreferenceOptimizationSpec | None = None
    distillation_spec: DistillationSpec | None = None
    # Specs Hone does not train; named so that asking for one gets a clear answer instead of being ignored.
    reinforcement_tuning_spec: dict[str, Any] | None = None
    partner_model_tuning_spec: dict[str, Any] | None = None
    full_fine_tuning_spec: dict[str, Any] | None = None
    veo_tuning_spec: dict[str, Any] | None = None
    veo_lora_tuning_spec: dict[str, Any] | None = None
    tuned_model_display_name: str | None = Field(default=None, max_length=128)
    description: str | None = Field(default=None, max_length=4096)
    labels: dict[str, str] | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str] | None):
        if value is None:
            return value
        if len(value) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels are allowed, got {len(value)}")
        for key, label in value.items():
            if not _LABEL_KEY.match(key):
                raise ValueError(
                    f"label key {key[:70]!r} must start with a lowercase letter and hold at most 63 "
                    "lowercase letters, digits, '_' or '-'"
                )
            if not _LABEL_VALUE.match(label):
                raise ValueError(
                    f"label value {label[:70]!r} of {key!r} must be at most 63 lowercase letters, digits, '_' or '-'"
                )
        return value


# --- generateContent ---------------------------------------------------------------------------------


class Part(VertexBody):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="allow"
    )  # kept, so that a non-text part can be named in the error
    text: str | None = None
    thought: bool | None = None


class Content(VertexBody):
    role: str | None = None
    parts: list[Part] = Field(default_factory=list)


class GenerationConfig(VertexBody):
    refused = {
        "thinkingConfig": "Hone's models do not think.",
        "responseLogprobs": "log probabilities are not returned.",
        "logprobs": "log probabilities are not returned.",
        "responseModalities": "this model answers with text only.",
    }
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: float | None = Field(default=None, ge=0)
    candidate_count: int | None = Field(default=None, ge=1, le=8)
    max_output_tokens: int | None = Field(default=None, ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=5)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    # structured output: service/vertex/response_schema.py
    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None


class Prompt(VertexBody):
    refused = {
        "tools": "function calling is not supported by Hone's endpoints.",
        "toolConfig": "function calling is not supported by Hone's endpoints.",
    }
    contents: list[Content] = Field(min_length=1)
    system_instruction: Content | None = None


class GenerateContentRequest(Prompt):
    refused = Prompt.refused | {
        "safetySettings": "Hone applies no safety filters to set.",
        "cachedContent": "context caching is not supported.",
        "labels": "request labels are not supported.",
    }
    generation_config: GenerationConfig | None = None


class CountTokensRequest(Prompt):
    """countTokens counts the prompt alone."""
