"""Preflight (Hone extension, `POST /v1/fine_tuning/jobs/preflight`): what a fine-tuning job would be, answered
without creating it. The body is job creation's, checked by job creation's own checks (service/job_creation.py:
`check_request`, `check_in_project`, the evaluation's plan), so a request a create would refuse gets the same 400.
Nothing is written: no job, no event, no idempotency key.

The answer:
- the hyperparameters resolved as the scheduler resolves the job's "auto" when it claims it
  (training_plan.resolve_hyperparameters, on the training file's shape and the base model's defaults);
- tokens, estimated as "auto" estimates them (the control plane has no tokenizer): each training line's bytes over
  the base model's `bytes_per_token`, an image as its `image_tokens`; the examples over `max_length` (which the
  trainer truncates) counted;
- memory: whether the base weights fit a trainer's GPU in the job's tuning mode (serve_compat's check_memory_fit,
  HONE_TRAINER_MEMORY_GB), when both are known here;
- time: tokens over a throughput, the median of what the latest jobs on the same base model reported
  (`tokens_per_second`), else HONE_TRAINER_TOKENS_PER_S; the basis is named in the answer;
- the queue: the jobs the scheduler would claim before it (queue_position)."""

from __future__ import annotations

import itertools
import math
import re
import statistics
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased

from service import job_creation, job_evaluation, training_plan
from service.auth import ProjectPrincipal
from service.base_models import TrainingDefaults
from service.context import AppContext
from service.db.tables import File, Job
from service.job_states import JobStatus
from service.jobs import IN_LINE
from service.schemas import CreateFineTuningJob
from service.serve_compat import HEADROOM, local_parameter_count, weight_memory_bytes

_DATA_URL = re.compile(rb"data:image/[^\"\\]*")
THROUGHPUT_SAMPLES = 5  # the latest jobs on a base model whose reported throughput the estimate takes the median of


def _queue(session: Session, priority: int) -> dict[str, Any]:
    """Where a job created now would stand: behind every job in line at its priority or above."""
    other = aliased(Job)
    ahead_stmt: Select = (
        select(func.count()).select_from(other).where(other.status.in_(IN_LINE), other.priority >= priority)
    )
    ahead = session.execute(ahead_stmt).scalar_one()
    running = session.execute(select(func.count()).where(Job.status == JobStatus.RUNNING.value)).scalar_one()
    return {"jobs_ahead": ahead, "position": ahead + 1, "running": running}


def _line_tokens(line: bytes, d: TrainingDefaults) -> float:
    """A line's tokens as "auto" estimates a file's: its bytes over bytes_per_token, an image (a data URL) counted as
    image_tokens instead of its bytes."""
    images = _DATA_URL.findall(line)
    text = len(line) - sum(len(i) for i in images)
    return text / d.bytes_per_token + len(images) * d.image_tokens


def _file_tokens(ctx: AppContext, file: File, d: TrainingDefaults, max_length: int, held_out: set[int]) -> dict:
    """Per example (a held-out one left out), its estimated tokens: their sum once each is cut to max_length, and
    how many are cut."""
    total = longest = 0.0
    examples = truncated = number = 0
    pending = b""
    for chunk in itertools.chain(ctx.storage.iter_chunks(file.storage_key), [b"\n"]):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            number += 1
            if number - 1 in held_out:
                continue
            tokens = _line_tokens(line.strip(), d)
            total += min(tokens, max_length)
            truncated += tokens > max_length
            examples += 1
            longest = max(longest, tokens)
    return {
        "examples": examples,
        "tokens": math.ceil(total),
        "examples_truncated": truncated,
        "longest_example_tokens": math.ceil(longest),
    }


def _memory(ctx: AppContext, base_source: str | None, hp: dict) -> dict[str, Any]:
    memory_gb = ctx.settings.training.trainer_memory_gb
    parameters = local_parameter_count(base_source) if base_source else None
    need = weight_memory_bytes(parameters, hp) if parameters else None
    answer: dict[str, Any] = {
        "fits": None,
        "tuning_mode": hp.get("tuning_mode"),
        "parameters": parameters,
        "weights_gb": round(need / 1e9, 3) if need is not None else None,
        "trainer_memory_gb": memory_gb or None,
        "usable_gb": round(HEADROOM * memory_gb, 3) if memory_gb else None,
    }
    if not memory_gb:
        answer["basis"] = "not checked: HONE_TRAINER_MEMORY_GB is not set"
    elif need is None:
        answer["basis"] = "not checked: the base model's size is read from a local folder's safetensors only"
    else:
        answer["fits"] = need <= HEADROOM * memory_gb * 1e9  # a create refuses one that does not (check_memory_fit)
        answer["basis"] = (
            f"the base weights as {hp.get('tuning_mode')} holds them, against {HEADROOM:.0%} of a trainer's "
            "HONE_TRAINER_MEMORY_GB (the rest left to activations)"
        )
    return answer


def _throughput(ctx: AppContext, session: Session, base_model: str) -> tuple[float, str]:
    """(tokens/s, basis): the median of the latest jobs' reported throughput on this base model, else the setting."""
    reported = session.execute(
        select(Job.live_metrics)
        .where(Job.base_model == base_model, Job.live_metrics.is_not(None))
        .order_by(Job.seq.desc())
        .limit(4 * THROUGHPUT_SAMPLES)
    ).scalars()
    figures = []
    for live in reported:
        value = live.get("tokens_per_second") if isinstance(live, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            figures.append(float(value))
        if len(figures) == THROUGHPUT_SAMPLES:
            break
    if figures:
        return statistics.median(figures), f"the median tokens/s of the latest {len(figures)} job(s) on {base_model}"
    return (
        ctx.settings.training.trainer_tokens_per_s,
        "HONE_TRAINER_TOKENS_PER_S (no job on this base model reported one)",
    )


def preflight(ctx: AppContext, principal: ProjectPrincipal, body: CreateFineTuningJob) -> dict[str, Any]:
    method = job_creation.check_request(ctx, principal, body)
    with ctx.db.read() as session:
        base_model, parent, method = job_creation.check_in_project(ctx, session, principal, body, method)
        evaluation = job_evaluation.plan(ctx, session, principal, body, method, base_model, body.seed or 0)
        held_out = set((evaluation or {}).get("holdout") or [])
        file = session.execute(select(File).where(File.id == body.training_file)).scalar_one()
        base = ctx.base_models.get(base_model)
        defaults = base.training if base else TrainingDefaults()
        resolved = training_plan.resolve_hyperparameters(
            method,
            training_plan.DatasetShape.of(file, defaults, len(held_out)),
            defaults,
            ctx.settings.training.train_max_length,
            on_gpu=training_plan.trainer_on_gpu(ctx.settings),
        )
        tokens_per_s, time_basis = _throughput(ctx, session, base_model)
        queue = _queue(session, body.priority)
        session.expunge(file)
    hp = resolved[resolved["type"]]["hyperparameters"]
    counted = _file_tokens(ctx, file, defaults, hp["max_length"], held_out)
    epochs = hp.get("n_epochs") or 1
    total = counted["tokens"] * epochs
    return {
        "object": "fine_tuning.job.preflight",
        "model": body.model,
        "base_model": base_model,
        "parent_model": parent.name if parent else None,
        "hyperparameters": {k: hp.get(k) for k in ("batch_size", "learning_rate_multiplier", "n_epochs")},
        "method": resolved,
        "training_examples": counted["examples"],
        "tokens": {
            "per_epoch": counted["tokens"],
            "total": total,
            "max_length": hp["max_length"],
            "examples_truncated": counted["examples_truncated"],
            "longest_example": counted["longest_example_tokens"],
            "basis": f"each line's bytes / {defaults.bytes_per_token:g} bytes per token (an image: "
            f"{defaults.image_tokens} tokens), each cut to max_length; total = per_epoch x n_epochs",
        },
        "memory": _memory(ctx, base.source if base and parent is None else None, hp),
        "time": {
            "estimated_seconds": math.ceil(total / tokens_per_s),
            "tokens_per_second": round(tokens_per_s, 3),
            "basis": time_basis + "; training only, without queueing, model loading and sampling",
        },
        "queue": queue,
    }
