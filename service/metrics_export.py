"""What GET /metrics returns: the instruments of `service.metrics` (this process's, or every worker's in
multiprocess mode) plus state read from the database at scrape time.

State series come from the database rather than from counters kept in memory, so each replica and worker
reports the same figures, a restart loses nothing, and per-job and per-endpoint series exist exactly while
the job runs or the endpoint lives. Model-labelled gateway series are filtered the same way."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from service import metrics
from service.context import AppContext
from service.db.tables import Endpoint, EvalRun, Job
from service.endpoint_states import LIVE, EndpointState
from service.eval_states import RunStatus
from service.job_states import JobStatus

log = logging.getLogger("hone.metrics")

# Running jobs' trainer figures: (metric name, live_metrics key, help).
_JOB_FIGURES = (
    ("hone_job_step", "step", "Training steps done by a running job."),
    ("hone_job_total_steps", "total_steps", "Training steps a running job will take in all."),
    ("hone_job_train_loss", "train_loss", "Training loss at a running job's latest step."),
    ("hone_job_valid_loss", "valid_loss", "Validation loss at a running job's latest evaluation."),
    ("hone_job_tokens_per_second", "tokens_per_second", "Training throughput of a running job's latest step."),
    ("hone_job_step_seconds", "step_seconds", "Duration of a running job's latest training step."),
    ("hone_job_mfu", "mfu", "Model FLOPs utilisation of a running job's latest step (GPU trainers only)."),
    ("hone_job_last_step_timestamp_seconds", "step_at", "When a running job's trainer last reported a step."),
)
_JOB_LABELS = ["job_id", "project_id", "base_model"]


class _Families:
    """The registry shape generate_latest() takes, over a list of families already collected."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self):
        return iter(self._families)


class MetricsExporter:
    def __init__(self, ctx: AppContext, multiprocess_dir: Path | None = None):
        self.ctx = ctx
        if multiprocess_dir is not None:
            self._instruments = CollectorRegistry()
            MultiProcessCollector(self._instruments, path=str(multiprocess_dir))
            self._process = None  # per-process figures of N workers would not add up to anything
        else:
            self._instruments = metrics.REGISTRY
            self._process = ProcessCollector(registry=None)

    def render(self) -> bytes:
        """Blocking (database reads): call from a worker thread."""
        try:
            state, live_models = self._state()
            database_up = 1
        except Exception:  # the scrape still answers; the database gauge says what is wrong
            log.warning("metrics: could not read state from the database", exc_info=True)
            state, live_models, database_up = [], None, 0
        up = GaugeMetricFamily("hone_database_up", "Whether the last scrape could read the database.")
        up.add_metric([], database_up)
        families = [*self._instrument_families(live_models), *state, up]
        if self._process is not None:
            families.extend(self._process.collect())
        return generate_latest(_Families(families))

    def _instrument_families(self, live_models: set[str] | None):
        keep = None if live_models is None else live_models | {metrics.UNKNOWN, metrics.OVERFLOW}
        anonymous = not metrics.names_models()
        if anonymous:  # and should anything have been counted under a name (say, before a change of setting)
            keep = {metrics.UNKNOWN, metrics.ALL_MODELS}
        for family in self._instruments.collect():
            if keep is not None and family.name in metrics.MODEL_LABELLED:
                family.samples = [s for s in family.samples if s.labels.get("model") in keep]
            elif anonymous and family.name in metrics.BASE_MODEL_LABELLED:
                family.samples = [s for s in family.samples if s.labels.get("base_model") == metrics.ALL_MODELS]
            yield family

    def _state(self) -> tuple[list[Metric], set[str]]:
        """State families, and the model names that have an endpoint (base models included)."""
        now = time.time()
        with self.ctx.db.read() as session:
            job_counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            oldest_queued = session.execute(
                select(func.min(func.coalesce(Job.queued_at, Job.created_at))).where(
                    Job.status == JobStatus.QUEUED.value
                )
            ).scalar()
            running = session.execute(
                select(
                    Job.id, Job.project_id, Job.base_model, Job.trained_tokens, Job.estimated_finish, Job.live_metrics
                ).where(Job.status == JobStatus.RUNNING.value)
            ).all()
            endpoint_counts = dict(session.execute(select(Endpoint.state, func.count()).group_by(Endpoint.state)).all())
            run_counts = dict(session.execute(select(EvalRun.status, func.count()).group_by(EvalRun.status)).all())
            live = session.execute(
                select(Endpoint.id, Endpoint.project_id, Endpoint.model, Endpoint.base_model, Endpoint.state).where(
                    Endpoint.state != EndpointState.STOPPED.value
                )
            ).all()

        jobs = GaugeMetricFamily("hone_jobs", "Fine-tuning jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], job_counts.get(status.value, 0))
        runs = GaugeMetricFamily("hone_eval_runs", "Eval runs by status.", labels=["status"])
        for run_status in RunStatus:
            runs.add_metric([run_status.value], run_counts.get(run_status.value, 0))
        depth = GaugeMetricFamily("hone_queue_depth", "Jobs waiting in the queue.")
        depth.add_metric([], job_counts.get(JobStatus.QUEUED.value, 0))
        oldest = GaugeMetricFamily(
            "hone_queue_oldest_wait_seconds", "How long the oldest queued job has waited (0 when the queue is empty)."
        )
        oldest.add_metric([], max(0.0, now - oldest_queued) if oldest_queued else 0.0)

        per_job = {name: GaugeMetricFamily(name, text, labels=_JOB_LABELS) for name, _, text in _JOB_FIGURES}
        tokens = GaugeMetricFamily(
            "hone_job_trained_tokens", "Tokens a running job has trained on so far.", labels=_JOB_LABELS
        )
        finish = GaugeMetricFamily(
            "hone_job_estimated_finish_timestamp_seconds",
            "When a running job is expected to finish.",
            labels=_JOB_LABELS,
        )
        for job_id, project_id, base_model, trained, estimated_finish, figures in running:
            labels = [job_id, project_id, metrics.model_name_label(base_model)]
            tokens.add_metric(labels, trained or 0)
            if estimated_finish:
                finish.add_metric(labels, estimated_finish)
            for name, key, _ in _JOB_FIGURES:
                value = (figures or {}).get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    per_job[name].add_metric(labels, value)

        endpoints = GaugeMetricFamily("hone_endpoints", "Endpoints by state.", labels=["state"])
        for known in EndpointState:
            endpoints.add_metric([known.value], endpoint_counts.get(known.value, 0))
        up = GaugeMetricFamily(
            "hone_endpoint_up",
            "1 while an endpoint is ready to serve, 0 while it is "
            "deploying or failed (idle endpoints, scaled to zero on purpose, have none).",
            labels=["endpoint_id", "project_id", "model", "base_model"],
        )
        for endpoint_id, project_id, model, base_model, state in live:
            if state != EndpointState.IDLE.value:
                up.add_metric(
                    [endpoint_id, project_id, metrics.model_name_label(model), metrics.model_name_label(base_model)],
                    1 if state == EndpointState.READY.value else 0,
                )
        live_models = {name for _, _, model, base_model, _ in live for name in (model, base_model)}
        return [jobs, depth, oldest, tokens, finish, *per_job.values(), endpoints, up, runs], live_models


def scrape_targets(ctx: AppContext) -> list[dict]:
    """Every engine that serves a live endpoint, as Prometheus HTTP service-discovery target groups. An
    engine dedicated to one endpoint is labelled with it; a shared engine with its base model only."""
    with ctx.db.read() as session:
        rows = session.execute(
            select(
                Endpoint.id, Endpoint.project_id, Endpoint.model, Endpoint.base_model, Endpoint.engine_key, Endpoint.url
            )
            .where(Endpoint.state.in_([s.value for s in LIVE]), Endpoint.url.is_not(None))
            .order_by(Endpoint.seq)
        ).all()
    by_url: dict[str, list] = {}
    for row in rows:
        by_url.setdefault(row.url, []).append(row)
    groups = []
    for url, served in by_url.items():
        first = served[0]
        labels = {"engine": first.engine_key or "", "base_model": first.base_model}
        if len(served) == 1:
            labels.update(endpoint_id=first.id, model=first.model, project_id=first.project_id)
        groups.append({"targets": [urlparse(url).netloc], "labels": labels})
    return groups
