"""Response bodies of the OpenAI-shaped and admin routes, as pydantic models: for the OpenAPI document only.

The routes still return the domain's dicts directly (service/api/routing.py); these models describe them
exactly (required or not, nullable or not, enums), and tests/test_schemathesis.py checks real responses against
the generated document. A field that is sometimes left out is `T = Field(None)`: not required, never null."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.endpoint_states import EndpointState
from service.job_states import JobStatus


class Exact(BaseModel):
    # additionalProperties: false, so that a field added to a response without its model fails the contract test.
    model_config = ConfigDict(extra="forbid")


def absent_or(description: str = "") -> Any:
    """A field that is left out rather than null (its schema stays non-nullable and not required)."""
    return Field(None, description=description or None)


# --- errors ----------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    # Open: dataset errors add `line`, `field`, `total_errors`, `errors`, a file's id.
    model_config = ConfigDict(extra="allow")
    message: str
    type: str = Field(description="invalid_request_error, or server_error for 5xx.")
    param: str | None
    code: str | None


class ErrorEnvelope(Exact):
    """OpenAI's error envelope: every 4xx and 5xx of the OpenAI-shaped and admin routes."""

    error: ErrorDetail


# --- files -----------------------------------------------------------------------------------------------------


class DatasetLineError(BaseModel):
    model_config = ConfigDict(extra="allow")
    line: int | None = None
    field: str | None = None
    message: str | None = None


class DatasetSummary(Exact):
    """Hone: what validation found in a fine-tune file."""

    format: str | None
    examples: int | None
    errors: list[DatasetLineError] = absent_or("The first errors, one per bad line (only when some were found).")
    total_errors: int = absent_or()
    images: int = absent_or("Image parts in the file's examples (only when it holds some).")
    image_examples: int = absent_or("Examples holding at least one image.")


class FileObject(Exact):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int = absent_or()
    status_details: str = absent_or()
    dataset: DatasetSummary = absent_or("Hone: purpose fine-tune only.")


class FileList(Exact):
    object: Literal["list"]
    data: list[FileObject]
    has_more: bool
    first_id: str
    last_id: str


class FileDeleted(Exact):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


# --- fine-tuning jobs ------------------------------------------------------------------------------------------

AutoInt = int | Literal["auto"]
AutoFloat = float | Literal["auto"]


class JobHyperparameters(Exact):
    batch_size: AutoInt
    learning_rate_multiplier: AutoFloat
    n_epochs: AutoInt


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str
    param: str | None = None


class FineTuningJob(Exact):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    error: JobError | None
    finished_at: int | None
    fine_tuned_model: str | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    status: JobStatus
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    seed: int | None
    estimated_finish: int | None
    method: dict[str, Any]
    integrations: list[dict[str, Any]]
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    priority: int = Field(description="Hone: higher-priority jobs leave the queue first.")
    auto_deploy: bool = Field(description="Hone: deploy an endpoint for the tuned model on success.")
    evaluation: dict[str, Any] | None = Field(
        description="Hone: the job's evaluation against its base (status, eval and run ids, results side by side)."
    )
    resources: dict[str, int] = Field(
        description="Hone: the devices it trains on, one process each: {nodes, gpus_per_node} (default 1 x 1)."
    )
    queue_position: int | None = Field(
        description="Hone: while queued, its place in the cluster's queue (1: the next the scheduler claims); "
        "null otherwise. Answered by retrieve and list."
    )


class FineTuningJobList(Exact):
    object: Literal["list"]
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(Exact):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any]


class JobEventList(Exact):
    object: Literal["list"]
    data: list[JobEvent]
    has_more: bool


class JobCheckpoint(Exact):
    id: str
    object: Literal["fine_tuning.job.checkpoint"]
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float | None]


class JobCheckpointList(Exact):
    object: Literal["list"]
    data: list[JobCheckpoint]
    has_more: bool
    first_id: str | None
    last_id: str | None


# --- models ----------------------------------------------------------------------------------------------------


class ModelObject(Exact):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Exact):
    object: Literal["list"]
    data: list[ModelObject]


class ModelDeleted(Exact):
    id: str
    object: Literal["model"]
    deleted: Literal[True]


# --- endpoints (Hone) ------------------------------------------------------------------------------------------


class EndpointUsage(Exact):
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float | None


class EndpointError(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class EndpointObject(Exact):
    id: str
    object: Literal["endpoint"]
    created_at: int
    updated_at: int
    model: str
    base_model: str
    kind: Literal["adapter", "full", "base"]
    state: EndpointState
    engine: Literal["builtin", "vllm"] | None
    fine_tuning_job_id: str | None
    checkpoint_id: str | None
    ready_at: int | None
    restarts: int
    error: EndpointError | None
    idle_timeout_s: int | None
    replicas: int  # engines asked for
    ready_replicas: int  # of them serving now; 0 unless ready
    usage: EndpointUsage


class EndpointList(Exact):
    object: Literal["list"]
    data: list[EndpointObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class EndpointDeleted(Exact):
    id: str
    object: Literal["endpoint.deleted"]
    deleted: Literal[True]


# --- health ----------------------------------------------------------------------------------------------------


class Health(Exact):
    status: Literal["ok"]


class Readiness(Exact):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="database, storage, scheduler: ok, standby, or why not.")
    loops: dict[str, str]


# --- administration (admin key) --------------------------------------------------------------------------------


class Project(Exact):
    object: Literal["organization.project"]
    id: str
    name: str
    created_at: int
    archived_at: int | None
    status: Literal["active", "archived"]


class ProjectList(Exact):
    object: Literal["list"]
    data: list[Project]
    has_more: bool
    first_id: str | None
    last_id: str | None


class ProjectArchived(Exact):
    object: Literal["organization.project.deleted"]
    id: str
    deleted: Literal[True]


class ServiceAccountKey(Exact):
    object: Literal["organization.project.service_account.api_key"]
    id: str
    name: str
    created_at: int
    value: str = absent_or("The key itself: only in the answer that created it.")
    redacted_value: str = absent_or()


class ServiceAccount(Exact):
    object: Literal["organization.project.service_account"]
    id: str
    name: str
    role: str
    created_at: int
    api_key: ServiceAccountKey = absent_or("Its key: the secret in the create answer, redacted when retrieved.")


class ServiceAccountList(Exact):
    object: Literal["list"]
    data: list[ServiceAccount]
    has_more: bool
    first_id: str | None
    last_id: str | None


class ServiceAccountDeleted(Exact):
    object: Literal["organization.project.service_account.deleted"]
    id: str
    deleted: Literal[True]


class WandbKey(Exact):
    object: Literal["organization.project.integration.wandb"]
    project_id: str
    type: Literal["wandb"]
    redacted_api_key: str
    base_url: str | None
    created_at: int
    updated_at: int


class WandbKeyDeleted(Exact):
    object: Literal["organization.project.integration.wandb.deleted"]
    project_id: str
    deleted: Literal[True]


class DatasetGrant(Exact):
    object: Literal["organization.project.dataset_grant"]
    id: str
    project_id: str
    uri: str
    created_at: int


class DatasetGrantList(Exact):
    object: Literal["list"]
    data: list[DatasetGrant]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DatasetGrantDeleted(Exact):
    object: Literal["organization.project.dataset_grant.deleted"]
    id: str
    deleted: Literal[True]


class BaseModelObject(Exact):
    id: str
    object: Literal["base_model"]
    created: int
    source: str
    origin: str
    tensor_parallel_size: int  # devices each engine of it splits the model over (vLLM), set in HONE_BASE_MODELS
    pipeline_parallel_size: int
    vision: bool  # reads images (an image-text model), set in HONE_BASE_MODELS
    lora_vision_tower: bool  # its LoRA adapts the vision tower and projector too, not the language model alone
    tool_call_parser: str | None  # how the family writes tool calls (vLLM's parser name); null: no "auto" tool choice


class BaseModelList(Exact):
    object: Literal["list"]
    data: list[BaseModelObject]


class BaseModelDeleted(Exact):
    id: str
    object: Literal["base_model"]
    deleted: Literal[True]


class ScrapeTargetGroup(Exact):
    """Prometheus HTTP service discovery: one group per engine."""

    targets: list[str]
    labels: dict[str, str]
