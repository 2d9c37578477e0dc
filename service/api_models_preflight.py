"""The response body of a preflight (`POST /v1/fine_tuning/jobs/preflight`, service/preflight.py), for the OpenAPI
document: the same contract as service/api_models.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from service.api_models import Exact


class PreflightHyperparameters(Exact):
    batch_size: int
    learning_rate_multiplier: float
    n_epochs: int


class PreflightTokens(Exact):
    per_epoch: int = Field(description="Tokens of one pass over the training examples, each cut to max_length.")
    total: int = Field(description="per_epoch x n_epochs.")
    max_length: int
    examples_truncated: int = Field(description="Examples longer than max_length, which the trainer truncates.")
    longest_example: int
    basis: str = Field(description="How the tokens were estimated (the control plane has no tokenizer).")


class PreflightMemory(Exact):
    fits: bool | None = Field(description="Whether the base weights fit a trainer; null when it cannot be told here.")
    tuning_mode: str | None
    parameters: int | None
    weights_gb: float | None
    trainer_memory_gb: float | None = Field(description="HONE_TRAINER_MEMORY_GB; null when unset.")
    usable_gb: float | None
    basis: str


class PreflightTime(Exact):
    estimated_seconds: int
    tokens_per_second: float
    basis: str = Field(description="Where the throughput comes from.")


class PreflightQueue(Exact):
    jobs_ahead: int = Field(description="Queued and validating jobs the scheduler would claim before this one.")
    position: int = Field(description="jobs_ahead + 1, as a queued job's queue_position reads.")
    running: int = Field(description="Jobs training now.")


class FineTuningJobPreflight(Exact):
    object: Literal["fine_tuning.job.preflight"]
    model: str
    base_model: str
    parent_model: str | None = Field(description="The tuned model it would continue, if any.")
    hyperparameters: PreflightHyperparameters = Field(description="Resolved as the job's 'auto' would be.")
    method: dict[str, Any] = Field(description="The method with every hyperparameter resolved.")
    training_examples: int = Field(
        description="The examples it would train on (an evaluation's held-out ones left out)."
    )
    tokens: PreflightTokens
    memory: PreflightMemory
    time: PreflightTime
    queue: PreflightQueue
