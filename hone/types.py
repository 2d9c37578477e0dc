"""The API's objects as pydantic models. Unknown fields are kept (`extra="allow"`), so a newer server's
additions reach the caller instead of failing validation."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class HoneObject(BaseModel):
    # Schemas are built on first use, not at import: a `hone` command starts faster.
    model_config = ConfigDict(extra="allow", defer_build=True)


class BoundObject(HoneObject):
    """An object with methods that call the API again: it keeps the client that fetched it."""

    _client: Any = PrivateAttr(default=None)


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


class FileObject(HoneObject):
    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None
    dataset: DatasetSummary | None = None


# --- fine-tuning jobs -------------------------------------------------------------------------------------------


class JobError(HoneObject):
    code: str | None = None
    message: str = ""
    param: str | None = None


class Hyperparameters(HoneObject):
    batch_size: int | str | None = None
    learning_rate_multiplier: float | str | None = None
    n_epochs: int | str | None = None


class FineTuningJob(BoundObject):
    id: str
    object: str = "fine_tuning.job"
    created_at: int
    status: str
    model: str
    fine_tuned_model: str | None = None
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    method: dict[str, Any] | None = None
    error: JobError | None = None
    finished_at: int | None = None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    seed: int | None = None
    estimated_finish: int | None = None
    metadata: dict[str, str] | None = None
    organization_id: str | None = None
    user_provided_suffix: str | None = None
    # Hone: the evaluation against its base, when the job asked for one (status, results side by side, ...)
    evaluation: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """The job has ended: succeeded, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    # With an AsyncClient these return awaitables (and follow an async iterator), as the client's own methods do.
    def refresh(self):
        return self._client.jobs.retrieve(self.id)

    def wait(self, **kwargs):
        return self._client.jobs.wait(self.id, **kwargs)

    def follow(self, **kwargs):
        return self._client.jobs.follow(self.id, **kwargs)

    def cancel(self):
        return self._client.jobs.cancel(self.id)


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


class JobEvent(HoneObject):
    id: str
    object: str = "fine_tuning.job.event"
    created_at: int
    level: str = "info"
    message: str
    type: str | None = "message"
    data: dict[str, Any] | None = None

    @property
    def metrics(self) -> StepMetrics | None:
        """The step's metrics when this is a `metrics` event."""
        if self.type == "metrics" and self.data and "step" in self.data:
            return StepMetrics.model_validate(self.data)
        return None


class Checkpoint(HoneObject):
    id: str
    object: str = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any] = Field(default_factory=dict)


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


# --- models and endpoints ---------------------------------------------------------------------------------------


class Model(HoneObject):
    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None


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


class ChatMessage(HoneObject):
    role: str
    content: str | None = None


class ChatChoice(HoneObject):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = None


class Usage(HoneObject):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(HoneObject):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The first choice's content."""
        return (self.choices[0].message.content or "") if self.choices else ""


class ChatDelta(HoneObject):
    role: str | None = None
    content: str | None = None


class ChunkChoice(HoneObject):
    index: int = 0
    delta: ChatDelta = Field(default_factory=ChatDelta)
    finish_reason: str | None = None


class ChatCompletionChunk(HoneObject):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The first choice's new content ('' for a role-only or usage chunk)."""
        return (self.choices[0].delta.content or "") if self.choices else ""


# --- list pages -------------------------------------------------------------------------------------------------

ItemT = TypeVar("ItemT", bound=HoneObject)


class Page(HoneObject, Generic[ItemT]):
    """One page of a list: `after=<last id>` asks for the next one while `has_more` is true."""

    object: str = "list"
    data: list[ItemT]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @property
    def next_cursor(self) -> str | None:
        return self.data[-1].id if self.has_more and self.data else None  # type: ignore[attr-defined]
