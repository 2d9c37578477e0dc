"""All control-plane settings, read once from `HONE_*` environment variables, in groups.

Each group is a pydantic-settings model of its own that reads the same flat variables as always
(`HONE_HOST`, `HONE_S3_TIMEOUT_S`, `HONE_K8S_NAMESPACE`, ...); code reads them by group (`settings.server.host`,
`settings.storage.s3_timeout_s`). `Settings(data_dir=..., storage_url=...)` still takes flat names, each routed to
its group, and what derives from several groups (paths under the data dir, the URLs in use) is on `Settings`.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from hone_kernel.graders.sandbox import SandboxLimits
from service.datasets import MIN_TRAINING_EXAMPLES

_ENV = SettingsConfigDict(env_prefix="HONE_", extra="ignore")


_LIST_SETTINGS = ("k8s_tolerations", "external_model_urls")


def _json(value, info: ValidationInfo):
    """Dict and list settings come as JSON in the environment (NoDecode: read here, not by pydantic-settings, which
    refused an empty variable); an empty variable is an empty one."""
    if isinstance(value, str):
        return json.loads(value) if value.strip() else ([] if info.field_name in _LIST_SETTINGS else {})
    return value


class ServerSettings(BaseSettings):
    model_config = _ENV

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./.hone")
    workers: int = 1  # server processes; one of them (holding a lock in data_dir) runs the background loops
    admin_api_key: str | None = None  # default: generated once, kept in data_dir
    organization_id: str = "org-hone"
    internal_url: str | None = None  # how trainers reach this server; default http://{host}:{port}
    key_cache_ttl_s: float = 5.0  # how long another replica may still accept a revoked key
    log_level: str = "INFO"
    graceful_shutdown_s: int = 10
    # How long an idle keep-alive connection stays open. Longer than the idle expiry of clients (httpx and the
    # openai SDK: 5 s) and of proxies in front (nginx, cloud load balancers: 60 s): when the server's is the
    # same or shorter, it closes connections a client is just reusing, and that request fails (uvicorn's 5 s
    # default dropped 8 of 480 requests of openai-SDK-like clients pausing about 5 s between calls).
    http_keep_alive_s: int = Field(default=75, ge=1)
    max_json_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)  # JSON request bodies; 413 above it
    # Worker threads for the requests that only read the database (lists and retrieves). Few, on purpose: 32
    # requests each in its own thread of the default pool (40) fight over the GIL, and each hand-over costs more
    # than the query (list jobs: 4.9 ms of CPU a request with 40 threads, 1.9 ms with one). 0: on the event loop
    # itself. Default: 0 for SQLite and for PostgreSQL on this host (loopback or a Unix socket), where a read
    # holds the loop for less than a thread's hand-over costs; 2 for a PostgreSQL across a network, whose round
    # trips would stall the loop (and every stream the gateway relays on it).
    database_threads: int | None = Field(default=None, ge=0)
    metrics_max_label_values: int = 500  # distinct models a metric may label before the rest become "_other"
    metrics_token: str | None = None  # GET /metrics wants `Authorization: Bearer <it>`; unset or empty: open
    secret_key: str | None = None  # Fernet key sealing stored secrets (service/secret_box.py); default: data dir
    metrics_model_labels: bool = True  # false: every label naming a model reads "_all", so /metrics names none
    # Trainers and built-in engines fork from one interpreter that imported torch, transformers and peft once
    # (service/warm_start.py): ~5 s of CPU less for each, on start-up. Only for this interpreter's own Python.
    warm_start: bool = True
    # A warm interpreter another process started with a socket here (hone_kernel/warm_start.py --listen): runs fork
    # from it instead of one of this server's own, so several control planes on one machine (the test suite's
    # servers) pay for one preload, not one each. Whoever can open the socket can run code as its user.
    warm_start_socket: Path | None = None


class DatabaseSettings(BaseSettings):
    model_config = _ENV

    database_url: str | None = None  # default: SQLite file in data_dir
    # PostgreSQL connections each server process keeps open (and never exceeds): mind max_connections (100 by
    # default) across replicas and workers
    database_pool_size: int = Field(default=30, ge=1)
    auto_migrate: bool = True


class StorageSettings(BaseSettings):
    model_config = _ENV

    storage_url: str | None = None  # default: file:// folder in data_dir
    s3_endpoint_url: str | None = None  # else boto3 reads AWS_ENDPOINT_URL itself
    # Every S3 call (control plane and trainers): attempts in all, retries with backoff on 5xx, throttling, resets
    # and timeouts; and the connect and read timeout of each attempt, so a stalled store fails a call in bounded time.
    s3_max_attempts: int = Field(default=5, ge=1)
    s3_timeout_s: float = Field(default=30.0, gt=0)
    # Vertex dataset URIs: gs://BUCKET/... reads s3://MAPPED/... on the S3-compatible store, as JSON
    # {"gcs-bucket": "s3-bucket/optional/prefix"}; a bucket not listed reads the S3 bucket of the same name.
    gcs_bucket_map: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    _parse_json = field_validator("gcs_bucket_map", mode="before")(_json)


class FilesSettings(BaseSettings):
    """Uploads and the datasets in them."""

    model_config = _ENV

    max_file_bytes: int = 512 * 1024 * 1024
    # An imported adapter's archive (POST /v1/models/import), as sent and as unpacked: 413 above it
    max_import_bytes: int = Field(default=2 * 1024 * 1024 * 1024, gt=0)
    max_line_bytes: int = 4 * 1024 * 1024
    min_training_examples: int = MIN_TRAINING_EXAMPLES  # one constant with `hone files validate`
    max_reported_errors: int = 20
    result_files_base64: bool = True  # OpenAI serves result CSVs base64-encoded
    file_expiry_poll_s: float = 60.0


class TrainingSettings(BaseSettings):
    """Base models, the scheduler and the trainers it launches."""

    model_config = _ENV

    # name -> local folder or Hugging Face id, as JSON: {"acme/llama": "/models/llama"}; or name -> {"source": ...,
    # "training": {...}} to give the model its own "auto" defaults (service/base_models.py TrainingDefaults)
    base_models: Annotated[dict[str, str | dict[str, Any]], NoDecode] = Field(default_factory=dict)
    model_cache_dir: Path | None = None  # where built-in base models are built; default: data_dir/models
    executor: str = "local"
    # Local executor slots: one per GPU in CUDA_VISIBLE_DEVICES, else HONE_LOCAL_SLOTS on CPU.
    local_slots: int = 1  # 0: this replica schedules no local training
    cuda_visible_devices: str | None = Field(default=None, validation_alias="CUDA_VISIBLE_DEVICES")
    job_validation_poll_s: float = 2.0
    scheduler_poll_s: float = 1.0
    max_job_attempts: int = 3  # trainer crashes before a job is failed
    # How often a running trainer's log so far is copied to storage, where `GET .../jobs/{id}/logs` (any replica)
    # reads it; the whole log is kept when the attempt ends. 0: only then.
    live_log_interval_s: float = Field(default=5.0, ge=0)
    max_running_jobs_per_project: int = 0  # a project's share of the trainers; 0: no limit
    trainer_python: str | None = None  # interpreter for `python -m trainer`; default: this one
    trainer_threads: int = 0  # CPU threads per local trainer; 0: torch's default (one per core)
    pause_grace_s: float = 60.0  # how long a paused trainer may take to checkpoint before it is killed
    # A running trainer not heard from this long (counted from its launch: model loading included) is killed and
    # the attempt counted as a crash (`trainer_stalled`); trainers heartbeat at a sixth of it. 0: never.
    trainer_stall_timeout_s: float = Field(default=300.0, ge=0)
    # Base learning rates (times learning_rate_multiplier) for every model; unset: each base model's own default
    lora_learning_rate: float | None = Field(default=None, gt=0)
    full_learning_rate: float | None = Field(default=None, gt=0)
    train_max_length: int = 2048  # examples are truncated to this many tokens
    train_packing: bool = True
    train_token_budget: int = 16384
    checkpoint_interval_steps: int = 0  # 0: checkpoint once per epoch
    # A trainer's GPU memory: jobs whose base weights would not fit it in their tuning mode are refused at creation
    # (service/serve_compat.py check_memory_fit). 0: not checked
    trainer_memory_gb: float = Field(default=0.0, ge=0)
    # Training throughput a preflight's time estimate assumes when no job on the base model has reported its own
    # (tokens_per_second in its progress): benchmarks/train_throughput.py measured 1,702 tokens/s for a LoRA on the
    # 2-core CPU VM (README); set your GPUs' figure
    trainer_tokens_per_s: float = Field(default=1700.0, gt=0)

    _parse_json = field_validator("base_models", mode="before")(_json)

    @property
    def gpu_devices(self) -> list[str]:
        return [d.strip() for d in (self.cuda_visible_devices or "").split(",") if d.strip() and d.strip() != "-1"]


class ServingSettings(BaseSettings):
    """Endpoints, their engines, and the gateway in front of them."""

    model_config = _ENV

    inference_engine: str = "auto"
    # where engines run: local processes, kubernetes (a Deployment each), or static (servers someone else runs)
    endpoint_backend: str = "local"
    static_engines: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict
    )  # JSON, base model name -> engine URL (static)
    static_engine_api_key: str | None = None  # the static engines' VLLM_API_KEY
    auto_deploy: bool = True  # deploy an endpoint when a job succeeds (jobs may opt out with auto_deploy=false)
    shared_engines: bool = False  # one engine per base model serving all its adapters (multi-LoRA)
    max_loras: int = 4  # adapters an engine keeps active at once (vLLM --max-loras)
    max_cpu_loras: int = 0  # adapters kept in memory, LRU (vLLM --max-cpu-loras); 0: max_loras
    max_lora_rank: int = 64  # the fleet's largest servable rank: jobs above it are refused (vLLM --max-lora-rank)
    # Start an engine for the base model of each running job that will deploy, so a finished job serves in
    # seconds. Default: on for the built-in (CPU) engine; off for vLLM, whose memory the trainer would lose.
    prewarm_engines: bool | None = None
    engine_threads: int = 1  # CPU threads per built-in engine; 0: torch's default
    engine_start_timeout_s: float = 180.0
    engine_python: str | None = None  # interpreter for the built-in engine; default: this one
    # GPUs the local backend hands to vLLM engines, comma-separated (each replica takes tensor_parallel_size x
    # pipeline_parallel_size of its own); default: CUDA_VISIBLE_DEVICES; none named: engines see every GPU
    engine_devices: str | None = None
    endpoint_poll_s: float = 1.0  # how often endpoints are reconciled and engines health-checked
    max_deploy_attempts: int = 5  # deploy attempts failing in a row before an endpoint is marked failed
    # Images one request may hold, for a vision model's engines (vLLM's --limit-mm-per-prompt): OpenAI's per example
    max_images_per_request: int = Field(default=10, ge=1, le=100)
    parity_samples: int = 4  # training rows checked through the serving path before an endpoint is ready
    adapter_cache_dir: Path | None = None  # local copies of served weights; default: data_dir/adapters
    gateway_timeout_s: float = 600.0
    # Scale-to-zero: an endpoint with no requests this long goes `idle` and its engine stops (Kubernetes: scales
    # to zero replicas); 0: never. Endpoints may set their own (idle_timeout_s). A request for an idle model
    # wakes it and waits up to endpoint_wake_wait_s for it to be ready, then answers 503 with Retry-After.
    endpoint_idle_timeout_s: int = 0
    endpoint_wake_wait_s: float = 60.0
    usage_flush_s: float = 5.0

    _parse_json = field_validator("static_engines", mode="before")(_json)

    @property
    def resolved_max_cpu_loras(self) -> int:
        return max(self.max_loras, self.max_cpu_loras)


class KubernetesSettings(BaseSettings):
    """HONE_EXECUTOR=kubernetes, HONE_ENDPOINT_BACKEND=kubernetes."""

    model_config = _ENV

    k8s_namespace: str = "hone"
    k8s_kubeconfig: Path | None = None  # default: in-cluster service account, else the client's own lookup
    # The Job / Deployment / Service skeletons the backends fill in: the same files the kustomize base ships
    # (mounted from a ConfigMap in the cluster). Default: deploy/kubernetes/base/templates in this checkout.
    k8s_templates_dir: Path | None = None
    k8s_trainer_image: str = "ghcr.io/hone-dev/hone-trainer:0.1.0"
    k8s_inference_image: str = "ghcr.io/hone-dev/hone-inference:0.1.0"  # vLLM with Hone's entrypoint
    k8s_gpus_per_job: int = 1  # nvidia.com/gpu requested by each trainer pod (0: CPU)
    k8s_gpus_per_engine: int = 1
    k8s_node_selector: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict
    )  # JSON, for trainer and engine pods
    k8s_tolerations: Annotated[list[dict], NoDecode] = Field(
        default_factory=list
    )  # JSON, Kubernetes toleration objects
    k8s_secret_name: str = "hone-secrets"  # env for trainers and engines by reference (storage credentials)
    k8s_job_deadline_s: int = 7 * 24 * 3600  # activeDeadlineSeconds of a trainer Job
    k8s_job_ttl_s: int = 3600  # ttlSecondsAfterFinished: how long a finished Job (and its logs) is kept
    k8s_max_parallel_jobs: int = 8  # trainer Jobs at once (the cluster's GPUs queue the rest as Pending)
    # A job on several nodes (resources.nodes > 1) runs as one JobSet (kubernetes-sigs/jobset) or one Kubeflow
    # Trainer TrainJob, whichever the cluster has installed (deploy/kubernetes/README.md); "none" refuses such jobs
    # at creation (service/executors/k8s_multinode.py).
    k8s_multinode: Literal["none", "jobset", "kubeflow"] = "none"
    # A trainer pod stuck this long fails its job (0: wait until the Job's deadline): an image that cannot be
    # pulled, or no node with the GPUs it asks for (a cluster autoscaler usually adds one within minutes).
    k8s_image_pull_timeout_s: float = 600
    k8s_unschedulable_timeout_s: float = 3600

    _parse_json = field_validator("k8s_node_selector", "k8s_tolerations", mode="before")(_json)

    @cached_property
    def resolved_templates_dir(self) -> Path:
        return (
            self.k8s_templates_dir
            or Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "base" / "templates"
        ).resolve()


class GradersSettings(BaseSettings):
    """Graders (hone_kernel/graders): graders/run, evals. A python grader runs in a sandbox process with these
    limits, each grade in a process of its own."""

    model_config = _ENV

    grader_timeout_s: float = Field(default=10.0, gt=0)  # wall clock per python grade
    grader_cpu_s: int = Field(default=5, ge=1)
    grader_memory_mb: int = Field(default=1024, ge=64)  # address space: numpy imports in 1 GiB
    grader_file_mb: int = Field(default=16, ge=1)  # largest file it may write in its scratch folder
    grader_processes: int = Field(default=4, ge=1)  # python grades at once per server process; the rest wait
    grader_model_retries: int = Field(default=2, ge=0)  # a model grader's call retried on 502/503 and timeouts
    # A model grader's (or a distillation teacher's) call from a training run, its retries included.
    grader_model_timeout_s: float = Field(default=60.0, gt=0)
    # Eval runs (service/eval_runner.py): rows sampled and graded at once per project, across its runs; the most
    # rows a run may have; how often the runner looks for runs nobody woke it for (a restart's leftovers).
    eval_concurrency: int = Field(default=8, ge=1)
    eval_max_rows: int = Field(default=10000, ge=1)
    eval_poll_s: float = Field(default=5.0, gt=0)
    # OpenAI-compatible endpoints outside Hone that projects may register (service/external_models.py): URL
    # prefixes, e.g. ["https://api.openai.com/v1"]. Empty: none may be registered.
    external_model_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)

    _parse_json = field_validator("external_model_urls", mode="before")(_json)

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(
            timeout_s=self.grader_timeout_s,
            cpu_s=self.grader_cpu_s,
            memory_bytes=self.grader_memory_mb << 20,
            file_bytes=self.grader_file_mb << 20,
        )


class WebhookSettings(BaseSettings):
    """Webhooks (service/webhooks.py): how events are delivered to the endpoints projects register."""

    model_config = _ENV

    webhook_poll_s: float = Field(default=1.0, gt=0)  # how often the delivery loop looks for due deliveries
    webhook_timeout_s: float = Field(default=10.0, gt=0)  # one attempt's whole request
    webhook_max_attempts: int = Field(default=6, ge=1)  # then the delivery is `failed`
    # The wait before attempt n+1 is webhook_backoff_s * 2**(n-1), at most webhook_backoff_max_s (default: 30 s,
    # 1, 2, 4 and 8 min: six attempts over about 16 minutes)
    webhook_backoff_s: float = Field(default=30.0, ge=0)
    webhook_backoff_max_s: float = Field(default=3600.0, ge=0)
    # Endpoints on loopback, private, link-local or otherwise reserved addresses (checked when registered and at
    # each attempt, after name resolution). Off: a project's webhook cannot reach the cluster's own services.
    webhook_allow_private: bool = False


GROUPS: dict[str, type[BaseSettings]] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "storage": StorageSettings,
    "files": FilesSettings,
    "training": TrainingSettings,
    "serving": ServingSettings,
    "kubernetes": KubernetesSettings,
    "graders": GradersSettings,
    "webhooks": WebhookSettings,
}
_GROUP_OF = {name: group for group, model in GROUPS.items() for name in model.model_fields}
# Every setting by its flat name (the variable's, less HONE_), whatever its group.
FIELDS = {name: field for model in GROUPS.values() for name, field in model.model_fields.items()}


class Settings(BaseModel):
    model_config = {"extra": "forbid", "arbitrary_types_allowed": True}

    server: ServerSettings
    database: DatabaseSettings
    storage: StorageSettings
    files: FilesSettings
    training: TrainingSettings
    serving: ServingSettings
    kubernetes: KubernetesSettings
    graders: GradersSettings
    webhooks: WebhookSettings

    def __init__(self, **values: Any) -> None:
        # Flat names or groups, both routed by _groups below (a signature of the groups alone would refuse flat ones)
        super().__init__(**values)

    @model_validator(mode="before")
    @classmethod
    def _groups(cls, values: Any) -> Any:
        """Flat names (`Settings(data_dir=...)`, as the variables are named) go to their group; each group is
        then built from the environment with them as overrides."""
        if not isinstance(values, dict):
            return values
        flat: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        built: dict[str, Any] = {}
        for key, value in values.items():
            if key in GROUPS:
                built[key] = value
            elif key in _GROUP_OF:
                flat[_GROUP_OF[key]][key] = value
            else:
                raise ValueError(f"unknown setting {key!r}")
        for group, model in GROUPS.items():
            if group not in built:
                built[group] = model(**flat[group])
        return built

    # --- what derives from several groups ---

    @cached_property
    def resolved_model_cache_dir(self) -> Path:
        return (self.training.model_cache_dir or self.server.data_dir / "models").resolve()

    @cached_property
    def resolved_adapter_cache_dir(self) -> Path:
        return (self.serving.adapter_cache_dir or self.server.data_dir / "adapters").resolve()

    @property
    def metrics_multiprocess_dir(self) -> Path | None:
        """Where worker processes share their metrics (prometheus-client's multiprocess mode)."""
        return (self.server.data_dir / "metrics").resolve() if self.server.workers > 1 else None

    @cached_property
    def resolved_internal_url(self) -> str:
        if self.server.internal_url:
            return self.server.internal_url.rstrip("/")
        host = "127.0.0.1" if self.server.host in ("0.0.0.0", "::", "") else self.server.host
        return f"http://{host}:{self.server.port}"

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database.database_url:
            return self.database.database_url
        return f"sqlite:///{(self.server.data_dir / 'hone.db').resolve()}"

    @property
    def resolved_database_threads(self) -> int:
        if self.server.database_threads is not None:
            return self.server.database_threads
        url = make_url(self.resolved_database_url)
        local = url.get_backend_name() == "sqlite" or url.host in (None, "", "localhost", "127.0.0.1", "::1")
        return 0 if local else 2

    @cached_property
    def resolved_storage_url(self) -> str:
        if self.storage.storage_url:
            return self.storage.storage_url
        return (self.server.data_dir / "blobs").resolve().as_uri()
