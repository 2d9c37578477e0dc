"""The control plane's Prometheus instruments (`hone_*`), updated where things happen.

Series that describe state (jobs by status, running jobs' training figures, endpoints) are not kept here:
`service/metrics_export.py` reads them from the database at scrape time, so every replica and worker
reports the same truth and per-job series vanish when the job stops running.

With several server workers, prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
`service.server` before the workers start) sums these instruments across processes."""

from __future__ import annotations

import threading

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service import __version__
from service.errors import ErrorCode
from service.job_states import ALLOWED, JobStatus

# Label values standing in for names Hone will not give a series of their own.
UNKNOWN = "_unknown"  # a model name the caller sent that is not one of its project's models
OVERFLOW = "_other"  # past the per-label cap
ALL_MODELS = "_all"  # every model, with HONE_METRICS_MODEL_LABELS=false: /metrics names none

prometheus_client.disable_created_metrics()  # _created series would double the counters for no use
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LONG = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
_STORAGE = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "hone_http_requests",
    "HTTP requests served, by route template, method and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "hone_http_request_duration_seconds",
    "Time to serve an HTTP request (to the last byte of the response).",
    ["method", "route"],
    buckets=_LATENCY,
    registry=REGISTRY,
)

JOB_TRANSITIONS = Counter("hone_job_transitions", "Job status transitions.", ["from", "to"], registry=REGISTRY)
JOB_FAILURES = Counter(
    "hone_job_failures",
    "Jobs that failed, by the error code they failed with (reason) and their project.",
    ["reason", "project_id"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "hone_queue_wait_seconds",
    "Time a job waited in the queue before a trainer started.",
    buckets=_LONG,
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "hone_job_duration_seconds",
    "Time from a job's start (or creation, if it never started) to its end, by final status.",
    ["status"],
    buckets=_LONG,
    registry=REGISTRY,
)
TRAINED_TOKENS = Counter(
    "hone_trained_tokens", "Tokens trained on, counted as trainers report them.", ["base_model"], registry=REGISTRY
)
TRAINER_RETRIES = Counter(
    "hone_trainer_retries", "Trainer crashes retried from the last checkpoint.", registry=REGISTRY
)

ADAPTER_LOAD = Histogram(
    "hone_adapter_load_seconds",
    "Time to hot-load an adapter into an engine.",
    ["base_model"],
    buckets=_LATENCY,
    registry=REGISTRY,
)

GATEWAY_REQUESTS = Counter(
    "hone_gateway_requests",
    "Inference requests through the gateway, by model and status.",
    ["model", "status"],
    registry=REGISTRY,
)
EVAL_OUTPUT_ITEMS = Counter(
    "hone_eval_output_items",
    "Rows of eval runs sampled and graded, by outcome (pass, fail, error).",
    ["status"],
    registry=REGISTRY,
)
GATEWAY_TOKENS = Counter(
    "hone_gateway_tokens",
    "Tokens through the gateway, by model and type (prompt|completion).",
    ["model", "type"],
    registry=REGISTRY,
)
GATEWAY_DURATION = Histogram(
    "hone_gateway_request_duration_seconds",
    "Gateway request latency, to the last byte.",
    ["model"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
GATEWAY_TTFT = Histogram(
    "hone_gateway_time_to_first_token_seconds",
    "Time to the first streamed token through the gateway.",
    ["model"],
    buckets=_LATENCY,
    registry=REGISTRY,
)

STORAGE_DURATION = Histogram(
    "hone_storage_operation_seconds",
    "Blob storage operation latency.",
    ["backend", "operation"],
    buckets=_STORAGE,
    registry=REGISTRY,
)
STORAGE_ERRORS = Counter(
    "hone_storage_errors",
    "Blob storage operations that failed (a missing key is not an error).",
    ["backend", "operation"],
    registry=REGISTRY,
)

LOOP_LAG = Gauge(
    "hone_loop_lag_seconds",
    "How late the last step of a background loop started, past its due time.",
    ["loop"],
    multiprocess_mode="max",
    registry=REGISTRY,
)
LOOP_DURATION = Histogram(
    "hone_loop_duration_seconds",
    "Time one step of a background loop took.",
    ["loop"],
    buckets=_STORAGE,
    registry=REGISTRY,
)
LOOP_LAST_SUCCESS = Gauge(
    "hone_loop_last_success_timestamp_seconds",
    "When a background loop last finished a step without error.",
    ["loop"],
    multiprocess_mode="max",
    registry=REGISTRY,
)
LOOP_ERRORS = Counter("hone_loop_errors", "Background loop steps that raised.", ["loop"], registry=REGISTRY)

LABEL_OVERFLOW = Counter(
    "hone_metrics_label_overflow",
    "Label values folded into '_other' because a metric reached its cap on distinct values.",
    ["metric"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "hone_build_info", "Always 1; the version of Hone running.", ["version"], multiprocess_mode="max", registry=REGISTRY
)
BUILD_INFO.labels(version=__version__).set(1)
# Every allowed job transition exists from the start at 0, so the first failure shows in increase() and rate().
for _current, _targets in ALLOWED.items():
    for _target in _targets:
        JOB_TRANSITIONS.labels(_current.value, _target.value)

# Metrics labelled by model: the exporter drops series of models that no longer have an endpoint.
MODEL_LABELLED = (
    "hone_gateway_requests",
    "hone_gateway_tokens",
    "hone_gateway_request_duration_seconds",
    "hone_gateway_time_to_first_token_seconds",
)
BASE_MODEL_LABELLED = ("hone_trained_tokens", "hone_adapter_load_seconds")


def transitioned(
    current,
    target,
    *,
    waited: float | None,
    lasted: float | None,
    reason: str | None = None,
    project_id: str | None = None,
) -> None:
    """A job moved from `current` to `target` (JobStatus values); `waited`: its time in the queue when it
    starts running; `lasted`: its run time when it ends; `reason`, `project_id`: for a failure, its error's code
    and the job's project."""
    JOB_TRANSITIONS.labels(current.value, target.value).inc()
    if target is JobStatus.FAILED:
        JOB_FAILURES.labels(failure_reason_label(reason), project_label(project_id or UNKNOWN)).inc()
    if waited is not None:
        QUEUE_WAIT.observe(max(0.0, waited))
    if lasted is not None:
        JOB_DURATION.labels(target.value).observe(max(0.0, lasted))


class LabelCap:
    """Bounds one label's distinct values in this process: past `limit`, new values become '_other'."""

    def __init__(self, metric: str, limit: int):
        self.metric, self.limit = metric, limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        LABEL_OVERFLOW.labels(metric=self.metric).inc()
        return OVERFLOW


# Set from settings at start-up (`configure`).
_model_cap = LabelCap("model", 500)
_project_cap = LabelCap("project_id", 500)
_name_models = True

# The codes Hone itself fails jobs with are ErrorCode's; a trainer reports codes of its own (FAIL, e.g.
# `training_diverged`), each at most MAX_FAILURE_CODE_CHARS long: up to this many of those get a series.
_KNOWN_REASONS = frozenset(ErrorCode)
_reason_cap = LabelCap("reason", 50)


def failure_reason_label(code: str | None) -> str:
    """The `reason` label of hone_job_failures_total: an ErrorCode value as is, another code (a trainer's) up to
    a cap of distinct ones, then '_other'; UNKNOWN for a failure without a code."""
    if not code:
        return UNKNOWN
    code = str(code)
    return code if code in _KNOWN_REASONS else _reason_cap(code)


def project_label(project_id: str) -> str:
    """The `project_id` label of a counter kept in memory: the project's id, up to the cap, then '_other'.
    (Series read from the database at scrape time are bounded by the rows that exist, and name it uncapped.)"""
    return _project_cap(project_id)


def model_label(name: str) -> str:
    """The `model` label of a gateway metric: the model's name (up to the cap), or ALL_MODELS."""
    return _model_cap(name) if _name_models else ALL_MODELS


def model_name_label(name: str) -> str:
    """Any other label naming a model (`base_model`, an endpoint's `model`): uncapped, as these are bounded by the
    base models and endpoints that exist, or ALL_MODELS."""
    return name if _name_models else ALL_MODELS


def names_models() -> bool:
    return _name_models


def configure(max_label_values: int, name_models: bool = True) -> None:
    global _name_models
    _model_cap.limit = max_label_values
    _project_cap.limit = max_label_values
    _name_models = name_models
