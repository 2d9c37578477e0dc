"""ORM tables. `seq` is an autoincrement key that orders lists and backs `after` cursors."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    slug: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    archived_at: Mapped[int | None] = mapped_column(BigInteger)


class ProjectWandb(Base):
    """A project's Weights & Biases key: its jobs with a `wandb` integration log online with it (else offline).
    Kept readable, not hashed, because trainers need the key itself; the API only ever answers it redacted."""

    __tablename__ = "project_wandb"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    api_key: Mapped[str] = mapped_column(String(512))
    base_url: Mapped[str | None] = mapped_column(String(512))  # None: W&B's cloud
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class DatasetGrant(Base):
    """A bucket and prefix (`s3://b/p/` or `gs://b/p/`) whose objects the project's Vertex dataset URIs may read.
    None by default: an admin grants them (service/dataset_grants.py)."""

    __tablename__ = "dataset_grants"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(String(1100))  # normalised: scheme://bucket/prefix ending in '/'
    scheme: Mapped[str] = mapped_column(String(8))
    bucket: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(1024))  # '' (the whole bucket) or ending in '/'
    created_at: Mapped[int] = mapped_column(BigInteger)


class ServiceAccount(Base):
    __tablename__ = "service_accounts"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    __tablename__ = "api_keys"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    service_account_id: Mapped[str] = mapped_column(ForeignKey("service_accounts.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the key itself is never stored
    redacted_value: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)


class File(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str | None] = mapped_column(String(64))
    dataset_format: Mapped[str | None] = mapped_column(String(32))
    example_count: Mapped[int | None] = mapped_column(Integer)
    # {"errors": [{line, field, code, message}, ...first 20], "total": n} when validation failed
    validation_errors: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # {"images": n, "image_examples": k, "first_image": {line, field}} when the dataset holds images
    dataset_media: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))  # SQL NULL: text only

    __table_args__ = (Index("ix_files_project_seq", "project_id", "seq"),)


class Job(Base):
    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    model: Mapped[str] = mapped_column(String(512))
    base_model: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger)
    training_file: Mapped[str] = mapped_column(String(64), index=True)
    validation_file: Mapped[str | None] = mapped_column(String(64), index=True)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    integrations: Mapped[list[Any] | None] = mapped_column(JSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_files: Mapped[list[Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # trainer launches so far
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # launches that crashed
    trainer_token_hash: Mapped[str | None] = mapped_column(String(64))  # sha256 of the current attempt's token
    executor_ref: Mapped[str | None] = mapped_column(String(256))  # e.g. "local:<host>:<pid>"
    last_report_at: Mapped[int | None] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # higher is claimed first
    auto_deploy: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())  # endpoint on success
    queued_at: Mapped[int | None] = mapped_column(BigInteger)  # when it last entered the queue
    # A job continued from a tuned model or checkpoint: its name, and the storage prefix of the weights it starts from
    parent_model: Mapped[str | None] = mapped_column(String(512))
    parent_prefix: Mapped[str | None] = mapped_column(String(512))
    # The trainer's latest figures while it runs (step, loss, tokens/s, ...), exported as per-job metrics.
    live_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A job created through the Vertex API: its display name, description and dataset URIs as given.
    vertex_spec: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A job measured against its base after training (Hone's `evaluation`): what was asked, where it stands, and
    # the side-by-side summary once both runs finished (service/job_evaluation.py).
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluation_open: Mapped[bool] = mapped_column(Boolean, server_default=false(), index=True)  # evaluation to move on
    # Hone's `resources` as resolved ({"nodes", "gpus_per_node"}); None: one process (the executor's default device)
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_jobs_project_seq", "project_id", "seq"),)


class JobMetadata(Base):
    """One row per metadata pair, so `metadata[k]=v` filters are an indexed join on any database."""

    __tablename__ = "job_metadata"
    job_seq: Mapped[int] = mapped_column(ForeignKey("jobs.seq", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))

    __table_args__ = (Index("ix_job_metadata_kv", "key", "value"),)


class JobEvent(Base):
    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    step_number: Mapped[int] = mapped_column(Integer)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    storage_prefix: Mapped[str] = mapped_column(String(512))

    __table_args__ = (Index("ix_checkpoints_job_seq", "job_id", "seq"),)


class IdempotencyKey(Base):
    """A create request's `Idempotency-Key`, so a retried request returns what the first one made."""

    __tablename__ = "idempotency_keys"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)


class TunedModel(Base):
    __tablename__ = "tuned_models"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(512), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))  # None: imported, no job made it
    base_model: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(BigInteger)
    storage_prefix: Mapped[str] = mapped_column(String(512))
    origin: Mapped[str] = mapped_column(String(16), default="job", server_default="job")  # job | import


class CheckpointPermission(Base):
    """A tuned model or checkpoint (`model`, by name) of `owner_project_id` that `project_id` may use: list, serve,
    call and continue, never delete, download or see the jobs of. Made with the admin key
    (service/checkpoint_permissions.py); gone with the model."""

    __tablename__ = "checkpoint_permissions"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(512))  # ft:... or ft:...:ckpt-step-N
    owner_project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (UniqueConstraint("model", "project_id", name="uq_checkpoint_permissions_model_project"),)


class RegisteredBaseModel(Base):
    """A base model added through the admin API (settings-configured ones are not stored)."""

    __tablename__ = "base_models"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Endpoint(Base):
    """A served model: a tuned model, a checkpoint or a base model on an inference engine."""

    __tablename__ = "endpoints"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    model: Mapped[str] = mapped_column(String(512), index=True)  # the name requests use, also the engine's name
    kind: Mapped[str] = mapped_column(String(16))  # adapter | full | base
    base_model: Mapped[str] = mapped_column(String(512))
    job_id: Mapped[str | None] = mapped_column(String(64))
    checkpoint_id: Mapped[str | None] = mapped_column(String(64))
    weights_prefix: Mapped[str | None] = mapped_column(String(512))  # storage folder of the adapter or weights
    state: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    engine: Mapped[str | None] = mapped_column(String(16))  # builtin | vllm
    engine_key: Mapped[str | None] = mapped_column(String(256))  # which engine serves it (shared per base or own)
    url: Mapped[str | None] = mapped_column(String(512))
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # engine restarts, ever
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # deploys failed in a row
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    ready_at: Mapped[int | None] = mapped_column(BigInteger)
    # scale to zero after this long without requests; None: HONE_ENDPOINT_IDLE_TIMEOUT_S, 0: never
    idle_timeout_s: Mapped[int | None] = mapped_column(Integer)
    replicas: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # engines asked for
    ready_replicas: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # of them serving now
    # where the gateway sends requests (each local replica, or one Kubernetes Service); None: [url]
    urls: Mapped[list[str] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_endpoints_project_seq", "project_id", "seq"),)


class ModelUsage(Base):
    """Gateway accounting per project and model, flushed from memory every few seconds."""

    __tablename__ = "model_usage"
    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(512), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_total: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class Eval(Base):
    """An eval (OpenAI's Evals API): what items look like and how samples are graded."""

    __tablename__ = "evals"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)  # as requested (custom: item_schema, ...)
    testing_criteria: Mapped[list[Any]] = mapped_column(JSON)  # graders, as validated
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_evals_project_seq", "project_id", "seq"),)


class EvalRun(Base):
    """One run of an eval over a data source; its counts are filled in as output items are graded."""

    __tablename__ = "eval_runs"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(512))  # the sampled model; "" for pre-made samples (jsonl)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    per_testing_criteria_results: Mapped[list[Any]] = mapped_column(JSON)
    per_model_usage: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_eval_runs_eval_seq", "eval_id", "seq"),)


class EvalOutputItem(Base):
    """One graded item of a run. (run, item number) is unique: a run resumed after a restart grades the rest."""

    __tablename__ = "eval_output_items"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    eval_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    datasource_item_id: Mapped[int] = mapped_column(Integer)
    datasource_item: Mapped[dict[str, Any]] = mapped_column(JSON)
    results: Mapped[list[Any]] = mapped_column(JSON)
    sample: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(8))  # pass | fail | error
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_eval_output_items_run_seq", "run_id", "seq"),
        UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_item"),
    )


class ExternalModel(Base):
    """An OpenAI-compatible endpoint outside Hone that a project registered (its key sealed: service/secret_box.py),
    named `ext:<name>` in eval runs and model graders."""

    __tablename__ = "external_models"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    base_url: Mapped[str] = mapped_column(String(1024))
    model: Mapped[str] = mapped_column(String(256))  # the endpoint's own name for it
    api_key_sealed: Mapped[str | None] = mapped_column(Text)
    api_key_hint: Mapped[str | None] = mapped_column(String(16))  # the last 4 characters, to recognise it
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_external_models_project_name"),)


class StoredCompletion(Base):
    """A chat completion made through the gateway with `store: true` (OpenAI's Stored Completions), kept per project:
    the request (messages and parameters) and the response as the caller got it, with its metadata."""

    __tablename__ = "stored_completions"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(128))  # the completion's id, as answered
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(256))  # as the caller named it
    created_at: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSON)
    request: Mapped[dict] = mapped_column(JSON)
    response: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("project_id", "id", name="uq_stored_completions_project_id"),
        Index("ix_stored_completions_project_created", "project_id", "created_at"),
    )


class WebhookEndpoint(Base):
    """A URL a project has events delivered to (OpenAI's webhook endpoints), with the event types it subscribes to
    and its signing secret (sealed: service/secret_box.py; answered once, when made or rotated)."""

    __tablename__ = "webhook_endpoints"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[Any]] = mapped_column(JSON)
    secret_sealed: Mapped[str] = mapped_column(Text)
    secret_hint: Mapped[str] = mapped_column(String(32))  # whsec_ and the last 4 characters
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row written in the transaction that changed the job's or run's status,
    then the delivery's log (each attempt's time, status code and error). Its status moves through
    service/webhook_states.py."""

    __tablename__ = "webhook_deliveries"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)  # the webhook-id header: the same on every attempt
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the body as signed and sent
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    next_attempt_at: Mapped[float | None] = mapped_column(Float)  # when pending: due at this Unix time
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[list[Any]] = mapped_column(JSON)  # [{attempt, started_at, duration_ms, status_code, error}]

    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_seq", "endpoint_id", "seq"),
        Index("ix_webhook_deliveries_status_due", "status", "next_attempt_at"),
    )
