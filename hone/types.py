"""The API's objects, typed.

What OpenAI's API defines (files, fine-tuning jobs, their events and checkpoints, models, chat completions) is
openai's own types (`openai.types...`), subclassed where Hone answers more: a file's `dataset` summary, a job's
`evaluation` and `queue_position`, a metrics event's `.metrics`, a completion's `.text`. So a `hone.types.FineTuningJob`
is an `openai.types.fine_tuning.FineTuningJob`, and code written against either works with both. Hone's own
objects (endpoints, projects, keys, grants, ...) are `HoneObject`s, on openai's base model too.

Every model keeps fields it does not declare (`model_extra`), so a newer server's additions reach the caller
instead of failing validation. Responses are built as openai builds them: without validation (`construct`).
"""

from __future__ import annotations

import builtins
from typing import Literal

import openai
from openai.types import FileDeleted, Model, ModelDeleted
from openai.types import FileObject as _OpenAIFileObject
from openai.types.chat import ChatCompletion as _OpenAIChatCompletion
from openai.types.chat import ChatCompletionChunk as _OpenAIChunk
from openai.types.fine_tuning import FineTuningJob as _OpenAIFineTuningJob
from openai.types.fine_tuning import FineTuningJobEvent as _OpenAIJobEvent
from openai.types.fine_tuning.fine_tuning_job import Error as JobError
from openai.types.fine_tuning.fine_tuning_job import Hyperparameters
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint as Checkpoint
from pydantic import Field

__all__ = [
    "TERMINAL_STATUSES",
    "JobLog",
    "JobStatus",
    "HoneObject",
    "DatasetLineError",
    "DatasetSummary",
    "FileObject",
    "FileDeleted",
    "JobError",
    "Hyperparameters",
    "EvaluationSide",
    "EvaluationResults",
    "JobEvaluation",
    "FineTuningJob",
    "StepMetrics",
    "JobEvent",
    "Preflight",
    "Checkpoint",
    "JobProgress",
    "JobUpdate",
    "Model",
    "ModelDeleted",
    "EndpointError",
    "EndpointUsage",
    "Endpoint",
    "Project",
    "ServiceAccountKey",
    "ServiceAccount",
    "Deleted",
    "DatasetGrant",
    "CheckpointPermission",
    "CheckpointPermissionList",
    "WandbKey",
    "ChatCompletion",
    "ChatCompletionChunk",
]

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# A job's status: OpenAI's six and Hone's `paused` (what `jobs.list(status=...)` filters by).
JobStatus = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]


class HoneObject(openai.BaseModel):
    """An object of Hone's own (not in OpenAI's API). Fields a newer server adds are kept in `model_extra`."""


class JobLog(HoneObject):
    """What a job's trainer printed in one attempt: while it runs, its log so far (`complete` false); once the
    attempt has ended, the whole log."""

    attempt: int
    text: str
    complete: bool


# --- files ------------------------------------------------------------------------------------------------------


class DatasetLineError(HoneObject):
    line: int
    field: str
    code: str
    message: str


class DatasetSummary(HoneObject):
    """What the server's validator found in a fine-tune file (a Hone extension of the file object)."""

    format: str | None = None
    examples: int | None = None
    errors: list[DatasetLineError] = Field(default_factory=list)
    total_errors: int = 0


class FileObject(_OpenAIFileObject):
    """OpenAI's file object, with Hone's `dataset`: the format and examples of a fine-tune file, or its errors."""

    dataset: DatasetSummary | None = None


# --- fine-tuning jobs -------------------------------------------------------------------------------------------


class EvaluationSide(HoneObject):
    """One model's figures in a job's evaluation (the tuned model's, or the model it is compared to)."""

    model: str | None = None
    status: str | None = None
    score: float | None = None
    passed: int = 0
    failed: int = 0
    errored: int = 0
    total: int = 0
    reward_mean: float | None = None


class EvaluationResults(HoneObject):
    tuned: EvaluationSide | None = None
    compare: EvaluationSide | None = None


class JobEvaluation(HoneObject):
    """Hone: a job's evaluation against its base (or `compare_to`), when the job asked for one."""

    status: str | None = None  # pending, deploying, running, completed, failed, skipped
    source: str | None = None  # validation_file, holdout, file
    file: str | None = None
    compare_to: str | None = None
    metric: str | None = None  # pass_rate, or mean_reward for a reinforcement job graded by its own grader
    max_rows: int | None = None
    max_completion_tokens: int | None = None
    deploy_if_better: bool | None = None
    min_improvement: float | None = None
    results: EvaluationResults | None = None
    improvement: float | None = None
    deployed: bool | None = None
    reason: str | None = None


class FineTuningJob(_OpenAIFineTuningJob):
    """OpenAI's fine-tuning job, with Hone's fields: `status` may also be `paused`; `priority`, `auto_deploy`,
    `evaluation`, and `queue_position` where the server reports it. Constructible with only the fields that
    matter (the rest default), for tests and tools."""

    status: str  # type: ignore[assignment]  # OpenAI's six, and Hone's `paused`
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str = ""
    result_files: list[str] = Field(default_factory=list)
    seed: int = 0
    priority: int | None = None
    auto_deploy: bool | None = None
    evaluation: JobEvaluation | None = None
    queue_position: int | None = None  # Hone: jobs ahead of it in the queue, while it is queued

    @property
    def done(self) -> bool:
        """The job has ended: succeeded, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


class PreflightTokens(HoneObject):
    per_epoch: int
    total: int
    max_length: int
    examples_truncated: int
    longest_example: int
    basis: str


class PreflightMemory(HoneObject):
    fits: bool | None = None  # None: it cannot be told on the server (no HONE_TRAINER_MEMORY_GB, a remote base)
    tuning_mode: str | None = None
    parameters: int | None = None
    weights_gb: float | None = None
    trainer_memory_gb: float | None = None
    usable_gb: float | None = None
    basis: str = ""


class PreflightTime(HoneObject):
    estimated_seconds: int
    tokens_per_second: float
    basis: str


class PreflightQueue(HoneObject):
    jobs_ahead: int
    position: int
    running: int


class Preflight(HoneObject):
    """Hone: what a job would be, asked without creating it (`client.jobs.preflight`)."""

    object: Literal["fine_tuning.job.preflight"] = "fine_tuning.job.preflight"
    model: str
    base_model: str
    parent_model: str | None = None
    hyperparameters: Hyperparameters
    method: dict[str, builtins.object]  # the method with every hyperparameter resolved (`object` is a field here)
    training_examples: int
    tokens: PreflightTokens
    memory: PreflightMemory
    time: PreflightTime
    queue: PreflightQueue


class StepMetrics(HoneObject):
    """One training step's figures, as a metrics event and the result file carry them."""

    step: int
    total_steps: int | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class JobEvent(_OpenAIJobEvent):
    """OpenAI's job event; a `metrics` event's step figures are `.metrics`."""

    @property
    def metrics(self) -> StepMetrics | None:
        """The step's metrics when this is a `metrics` event."""
        if self.type == "metrics" and isinstance(self.data, dict) and "step" in self.data:
            return StepMetrics.model_validate(self.data)
        return None


class JobProgress(HoneObject):
    """Where a job stands, for progress displays: built by the SDK from the job and its metrics events."""

    status: str
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    n_epochs: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    trained_tokens: int | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    queue_position: int | None = None

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)


class JobUpdate(HoneObject):
    """One look at a job while watching it: the job, the events new since the last look (oldest first), and
    its progress."""

    job: FineTuningJob
    events: list[JobEvent]
    progress: JobProgress


# --- endpoints --------------------------------------------------------------------------------------------------


class EndpointError(HoneObject):
    code: str | None = None
    message: str = ""


class EndpointUsage(HoneObject):
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_latency_ms: float | None = None


class Endpoint(HoneObject):
    id: str
    object: str = "endpoint"
    created_at: int
    updated_at: int | None = None
    model: str
    base_model: str | None = None
    kind: str | None = None
    state: str
    engine: str | None = None
    fine_tuning_job_id: str | None = None
    checkpoint_id: str | None = None
    ready_at: int | None = None
    restarts: int = 0
    error: EndpointError | None = None
    usage: EndpointUsage = Field(default_factory=EndpointUsage)


# --- projects and keys (admin) ----------------------------------------------------------------------------------


class Project(HoneObject):
    id: str
    object: str = "organization.project"
    name: str
    created_at: int
    archived_at: int | None = None
    status: str = "active"


class ServiceAccountKey(HoneObject):
    id: str
    name: str | None = None
    created_at: int | None = None
    value: str | None = None  # only in the answer to the create call
    redacted_value: str | None = None


class ServiceAccount(HoneObject):
    id: str
    object: str = "organization.project.service_account"
    name: str
    role: str | None = None
    created_at: int
    api_key: ServiceAccountKey | None = None


class Deleted(HoneObject):
    id: str
    object: str
    deleted: bool


class DatasetGrant(HoneObject):
    """Hone: a bucket or prefix (s3://b/p/ or gs://b/p/) whose objects the project's Vertex dataset URIs may read."""

    id: str
    object: str = "organization.project.dataset_grant"
    project_id: str
    uri: str
    created_at: int


class CheckpointPermission(HoneObject):
    """A project's permission to use another project's tuned model or checkpoint (OpenAI's checkpoint.permission)."""

    id: str
    object: str = "checkpoint.permission"
    project_id: str
    created_at: int


class CheckpointPermissionList(HoneObject):
    """The permissions a share made (one per project), as the API answers them."""

    object: str = "list"
    data: list[CheckpointPermission]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class WandbKey(HoneObject):
    """Hone: a project's Weights & Biases key, as the server answers it (redacted), or its deletion."""

    project_id: str
    object: str = "organization.project.integration.wandb"
    redacted_api_key: str | None = None
    base_url: str | None = None
    created_at: int | None = None
    updated_at: int | None = None
    deleted: bool = False


# --- chat -------------------------------------------------------------------------------------------------------


class ChatCompletion(_OpenAIChatCompletion):
    """OpenAI's chat completion; `.text` is the first choice's content."""

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "") if self.choices else ""


class ChatCompletionChunk(_OpenAIChunk):
    """OpenAI's streamed chunk; `.text` is the first choice's new content ('' for a role-only or usage chunk)."""

    @property
    def text(self) -> str:
        return (self.choices[0].delta.content or "") if self.choices else ""
