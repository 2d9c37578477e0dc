"""Every job measured against its base (Hone's `evaluation` on job creation).

At creation, `plan` checks the request and fixes the rows: the validation file, a file given, or a held-out slice
of the training file (examples the trainer then skips: `FileRef.exclude_examples`). After the job succeeds,
`advance` (a step of the `evals` loop) moves its evaluation through

    pending -> deploying (endpoints of the tuned model and of the model it is compared to)
            -> running (an eval with two runs, the same rows and criteria, one per model)
            -> completed (the side-by-side summary on the job, in its events and in a result file)

or `failed` (with a reason) / `skipped` (the job did not succeed). With `deploy_if_better`, a tuned model that does
not beat the other by `min_improvement` has its endpoint retired, and the job says why."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hone_kernel.graders.spec import models_of
from service import endpoints, external_models, job_evaluation_output, job_evaluation_rows, jobs, reinforcement
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import Endpoint, Eval, EvalOutputItem, EvalRun, File, Job
from service.endpoint_states import EndpointState
from service.errors import ErrorCode, InvalidRequest, excerpt
from service.eval_states import RunStatus
from service.evals import empty_counts
from service.hints import Loop
from service.ids import new_id
from service.job_states import JobStatus
from service.jobs import add_event
from service.schemas import CreateFineTuningJob

log = logging.getLogger("hone.evals")
PARAM = "evaluation"
DEFAULT_MAX_COMPLETION_TOKENS = 256
MEAN_REWARD = "mean_reward"  # the metric of a reinforcement job graded by its own grader; else "pass_rate"


def _refuse(message: str, field: str | None = None, code: ErrorCode = ErrorCode.INVALID_VALUE) -> InvalidRequest:
    return InvalidRequest(message, param=f"{PARAM}.{field}" if field else PARAM, code=code)


# --- at creation ------------------------------------------------------------------------------------------------


def plan(
    ctx: AppContext,
    session: Session,
    principal: ProjectPrincipal,
    body: CreateFineTuningJob,
    method: dict,
    base_model: str,
    seed: int,
) -> dict[str, Any] | None:
    """The evaluation the job keeps (None: none asked), or InvalidRequest naming what cannot be done. A
    reinforcement job is evaluated on its prompts, graded by default by its own grader (job_evaluation_rows); the
    item fields explicit criteria read were checked before (job_evaluation_rows.check_item_fields)."""
    asked = body.evaluation
    if asked is None:
        return None
    if asked.deploy_if_better and not body.auto_deploy:
        raise _refuse(
            "deploy_if_better decides whether auto_deploy keeps the endpoint: set auto_deploy too.", "deploy_if_better"
        )
    training = _file(session, principal, body.training_file)
    holdout: list[int] | None = None
    source, file_id = job_evaluation_rows.rows_file(body)
    if source == "holdout":
        file = training
        count = training.example_count or 0
        held = min(asked.max_rows, max(1, round(count * asked.holdout_fraction)))
        if count - held < ctx.settings.files.min_training_examples:
            raise _refuse(
                f"Holding out {held} of the training file's {count} examples would leave fewer than "
                f"{ctx.settings.files.min_training_examples} to train on; give a validation file or an evaluation file.",
                "holdout_fraction",
            )
        holdout = sorted(random.Random(seed).sample(range(count), held))
    else:
        file = _file(session, principal, file_id, "file" if source == "file" else None)
    reinforcement = method["type"] == "reinforcement"
    why = job_evaluation_rows.refusal(file.dataset_format, method["type"])
    if why is not None:
        raise _refuse(f"The evaluation rows come from {file.id}, {why}.", "file")
    compare = base_model if asked.compare_to == "base" else asked.compare_to
    models = {compare} | {m for c in asked.testing_criteria or [] for m in models_of(c)}
    for model in sorted(models):  # an external one too: the model the team runs today, outside Hone
        field = "compare_to" if model == compare else "testing_criteria"
        external_models.require_callable(ctx, session, principal.project_id, model, param=f"{PARAM}.{field}")
    criteria = [c.model_dump(exclude_none=True) for c in asked.testing_criteria or []]
    # A reinforcement job's own grader scores by default (its models were checked with the job's method), and the
    # summary compares its mean reward; other criteria compare pass rates.
    graded_by_job = reinforcement and not criteria
    if graded_by_job:
        criteria = [method["reinforcement"]["grader"]]
    max_tokens = asked.max_completion_tokens
    if max_tokens is None and not reinforcement:
        max_tokens = DEFAULT_MAX_COMPLETION_TOKENS
    return {
        "status": "pending",
        "source": source,
        "file": file.id,
        "holdout": holdout,
        "max_rows": asked.max_rows,
        # None: a reinforcement job's own max_completion_tokens, once scheduling resolved it (_deploying)
        "max_completion_tokens": max_tokens,
        "testing_criteria": criteria or [job_evaluation_rows.EXACT_MATCH],
        "metric": MEAN_REWARD if graded_by_job else "pass_rate",
        "compare_to": compare,
        "deploy_if_better": asked.deploy_if_better,
        "min_improvement": asked.min_improvement,
    }


def _file(session: Session, principal: ProjectPrincipal, file_id: str, field: str | None = None) -> File:
    row = session.execute(select(File).where(File.id == file_id, File.project_id == principal.project_id)).scalar()
    if row is None or row.status != "processed" or row.purpose != "fine-tune":
        raise _refuse(
            f"No processed fine-tune file {excerpt(file_id)} in this project.", field or "file", ErrorCode.INVALID_VALUE
        )
    return row


# --- after training (a step of the evals loop) ------------------------------------------------------------------


def advance(ctx: AppContext) -> bool:
    """Moves every job evaluation one stage on; True when it queued eval runs (for the runner to start)."""
    with ctx.db.read() as session:
        ids = list(session.execute(select(Job.id).where(Job.evaluation_open.is_(True))).scalars())
    started = False
    for job_id in ids:
        # The rows of an evaluation about to run are read from storage first, outside the write transaction (which
        # on SQLite holds the database's one write lock).
        with ctx.db.read() as session:
            ev = session.execute(select(Job.evaluation).where(Job.id == job_id)).scalar_one() or {}
            ready = ev.get("status") == "deploying" and all(
                row is not None and row.state == EndpointState.READY.value
                for row in _endpoint_states(session, ev).values()
            )
        rows = job_evaluation_rows.read_rows(ctx, ev) if ready else None
        with ctx.db.write() as session:
            job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
            stage = (job.evaluation or {}).get("status")
            if stage == "pending":
                _pending(ctx, session, job)
            elif stage == "deploying":
                started |= _deploying(ctx, session, job, rows)
            elif stage == "running":
                _running(ctx, session, job)
    return started


def _endpoint_states(session: Session, ev: dict[str, Any]) -> dict[str, Any]:
    """(state, error) of each endpoint the evaluation deployed, by role; None for one that is gone."""
    return {
        role: session.execute(select(Endpoint.state, Endpoint.error).where(Endpoint.id == ep_id)).first()
        for role, ep_id in (ev.get("endpoints") or {}).items()
    }


def _update(job: Job, **changes: Any) -> dict[str, Any]:
    job.evaluation = {**(job.evaluation or {}), **changes}  # a new dict: the JSON column sees the change
    job.evaluation_open = job.evaluation["status"] in OPEN_STAGES
    return job.evaluation


def _pending(ctx: AppContext, session: Session, job: Job) -> None:
    if job.status != JobStatus.SUCCEEDED.value:
        if JobStatus(job.status).terminal:
            _update(job, status="skipped", reason=f"the job {job.status}")
        return
    ev = job.evaluation or {}
    eps, made = {}, []
    assert job.fine_tuned_model is not None  # a succeeded job has its model
    for role, model in (("tuned", job.fine_tuned_model), ("compare", ev["compare_to"])):
        if model.startswith(external_models.PREFIX):
            continue  # served elsewhere: nothing to deploy
        served = endpoints.resolve_model(ctx, session, job.project_id, model)
        if not endpoints.open_endpoints(session, job.project_id, served.name):
            made.append(role)  # deployed for the evaluation only: retired after it (_retire)
        eps[role] = endpoints.deploy(session, job.project_id, served).id
    _update(job, status="deploying", endpoints=eps, deployed_for_evaluation=made)
    add_event(session, job.id, f"Evaluating {job.fine_tuned_model} against {ev['compare_to']}: deploying both")
    ctx.hinter.wake(Loop.ENDPOINTS)


def _deploying(ctx: AppContext, session: Session, job: Job, rows: list[dict[str, Any]] | None) -> bool:
    """`rows`: read by `advance` when both endpoints were ready; None when they were not then."""
    ev = job.evaluation or {}
    states = _endpoint_states(session, ev)
    failed = [
        role
        for role, row in states.items()
        if row is None or row.state in (EndpointState.FAILED.value, EndpointState.STOPPED.value)
    ]
    if failed:
        reason = f"the {'tuned model' if failed[0] == 'tuned' else ev['compare_to']} could not be served"
        _update(job, status="failed", reason=reason)
        add_event(session, job.id, f"Evaluation failed: {reason}", level="error")
        return False
    if rows is None or any(row.state != EndpointState.READY.value for row in states.values() if row is not None):
        return False  # not ready (or ready only since advance looked: the next step reads the rows)
    criteria = ev["testing_criteria"]
    prompts = (job.method or {}).get("type") == "reinforcement"
    max_tokens = ev.get("max_completion_tokens") or _job_max_completion_tokens(job)
    now = int(time.time())
    eval_row = Eval(
        id=new_id("eval_"),
        project_id=job.project_id,
        name=f"{job.id}: {job.fine_tuned_model} vs {ev['compare_to']}",
        meta={"fine_tuning_job_id": job.id},
        data_source_config={
            "type": "custom",
            "item_schema": job_evaluation_rows.item_schema(prompts, criteria),
            "include_sample_schema": True,
        },
        testing_criteria=criteria,
        created_at=now,
        updated_at=now,
    )
    session.add(eval_row)
    session.flush()
    sampling = {"temperature": 0.0, "seed": job.seed, "max_completion_tokens": max_tokens}
    if prompts and (fmt := reinforcement.response_format(job.method or {})) is not None:
        sampling["response_format"] = fmt  # both models answer in the format the job trained for
    runs = {}
    for role, model in (("tuned", job.fine_tuned_model), ("compare", ev["compare_to"])):
        counts, per_criteria = empty_counts(criteria)
        source = {
            "type": "completions",
            "model": model,
            "source": {"type": "file_content", "content": [{"item": r} for r in rows]},
            "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            "sampling_params": sampling,
        }
        run = EvalRun(
            id=new_id("evalrun_"),
            eval_id=eval_row.id,
            project_id=job.project_id,
            name=role,
            meta={"fine_tuning_job_id": job.id},
            data_source=source,
            model=model,
            status=RunStatus.QUEUED.value,
            result_counts={**counts, "total": len(rows)},
            per_testing_criteria_results=per_criteria,
            per_model_usage=[],
            created_at=now,
            updated_at=now,
        )
        session.add(run)
        runs[role] = run.id
    _update(job, status="running", eval_id=eval_row.id, runs=runs, rows=len(rows), max_completion_tokens=max_tokens)
    add_event(
        session, job.id, f"Evaluation running on {len(rows)} rows: eval {eval_row.id}", data={"eval_id": eval_row.id}
    )
    return True


def _job_max_completion_tokens(job: Job) -> int:
    """A reinforcement job's answers' length in training (resolved when it was scheduled); else the default."""
    method = job.method or {}
    hp = (method.get(str(method.get("type"))) or {}).get("hyperparameters") or {}
    value = hp.get("max_completion_tokens")
    return value if isinstance(value, int) else DEFAULT_MAX_COMPLETION_TOKENS


def _running(ctx: AppContext, session: Session, job: Job) -> None:
    ev = job.evaluation or {}
    runs = {
        role: session.execute(select(EvalRun).where(EvalRun.id == run_id)).scalar()
        for role, run_id in ev["runs"].items()
    }
    if any(run is None for run in runs.values()):
        _update(job, status="failed", reason="its eval runs were deleted")
        return
    if not all(RunStatus(run.status).terminal for run in runs.values() if run is not None):
        return
    # The mean reward of a reinforcement job's own grader (its one criterion), or the rows' pass rate.
    rewarded = ev["testing_criteria"][0]["name"] if ev.get("metric") == MEAN_REWARD else None
    summary = {role: _score(session, run, rewarded) for role, run in runs.items() if run is not None}
    tuned, other = summary["tuned"], summary["compare"]
    improvement = round(tuned["score"] - other["score"], 4)
    shown = "{:.3f}" if rewarded else "{:.1%}"
    message = (
        f"Evaluation: {job.fine_tuned_model} {'mean reward ' if rewarded else ''}{shown.format(tuned['score'])} vs "
        f"{ev['compare_to']} {shown.format(other['score'])} on {tuned['total']} rows ({_margin(improvement, rewarded)})"
    )
    changes: dict[str, Any] = {"status": "completed", "results": summary, "improvement": improvement}
    if ev.get("deploy_if_better"):
        wins = (
            tuned["status"] == other["status"] == "completed"
            and improvement > 0
            and improvement >= ev["min_improvement"]
        )
        changes["deployed"] = wins
        if not wins:
            needed = f"{ev['min_improvement']:.3f}" if rewarded else f"{ev['min_improvement'] * 100:.1f}"
            changes["reason"] = (
                f"not deployed: {_margin(improvement, rewarded)} over {ev['compare_to']}, {needed} needed"
            )
            endpoints.stop_model_endpoints(
                session, job.project_id, job.fine_tuned_model or "", "The evaluation did not deploy it."
            )
            message += f"; {changes['reason']}"
    _retire(ctx, session, job, ev)
    ctx.hinter.routes_changed(job.project_id)
    ctx.hinter.wake(Loop.ENDPOINTS)
    if ev.get("vertex"):  # an evaluationConfig: its results also go under its outputUriPrefix
        changes["vertex"] = job_evaluation_output.vertex_output(ctx, session, job, ev, summary)
    job.result_files = [
        *(job.result_files or []),
        job_evaluation_output.result_file(ctx, session, job, {**ev, **changes}),
    ]
    _update(job, **changes)
    add_event(session, job.id, message, data={"evaluation": jobs.evaluation_api(job.evaluation)})


def _margin(value: float, rewarded: str | None) -> str:
    return f"{value:+.3f} mean reward" if rewarded else f"{value * 100:+.1f} points"


def _retire(ctx: AppContext, session: Session, job: Job, ev: dict[str, Any]) -> None:
    """Stops the endpoints the evaluation deployed only for itself: the model compared to, and the tuned model
    of a job that did not ask to be deployed (auto_deploy false)."""
    for role in ev.get("deployed_for_evaluation") or []:
        if role == "tuned" and job.auto_deploy and ctx.settings.serving.auto_deploy:
            continue  # it asked to be deployed: deploy_if_better alone decides
        ep = session.execute(select(Endpoint).where(Endpoint.id == ev["endpoints"][role])).scalar()
        if ep is not None:
            endpoints.transition(
                session,
                ep,
                EndpointState.STOPPED,
                error={"code": ErrorCode.MODEL_NOT_DEPLOYED, "message": "Deployed for the job's evaluation only."},
            )


def _score(session: Session, run: EvalRun, rewarded: str | None = None) -> dict[str, Any]:
    """A run's side of the summary. `score`: the pass rate, or with `rewarded` (a criterion's name) its mean reward
    over all rows, a row that could not be sampled or graded counting 0 (as a failed grade does in training)."""
    counts = run.result_counts
    total = max(1, counts.get("total") or 0)
    scores: dict[str, list[float]] = {}
    reward = 0.0
    for results in session.execute(select(EvalOutputItem.results).where(EvalOutputItem.run_id == run.id)).scalars():
        for result in results or []:
            if result.get("error") is None:
                scores.setdefault(result["name"], []).append(float(result["score"]))
                reward += float(result["score"]) if result["name"] == rewarded else 0.0
    extra = {"reward_mean": round(reward / total, 4)} if rewarded else {}
    return {
        "aggregates": {name: job_evaluation_output.aggregate(values) for name, values in scores.items()},
        "model": run.model,
        "run_id": run.id,
        "status": run.status,
        "passed": counts.get("passed", 0),
        "failed": counts.get("failed", 0),
        "errored": counts.get("errored", 0),
        "total": counts.get("total", 0),
        "score": extra.get("reward_mean", round(counts.get("passed", 0) / total, 4)),
        **extra,
        "per_testing_criteria_results": run.per_testing_criteria_results,
    }


OPEN_STAGES = ("pending", "deploying", "running")  # an evaluation still under way; then completed, failed or skipped
