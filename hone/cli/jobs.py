"""`hone jobs`: create fine-tuning jobs, follow them live, plot their loss, fetch their results."""

from __future__ import annotations

import csv
import datetime
import io
import json
import time
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, cast, get_args

import typer
from rich.progress import BarColumn, Progress, TextColumn

from hone.cli.common import (
    EXIT_ENDED_BADLY,
    EXIT_OK,
    Session,
    api_command,
    err,
    fail,
    out,
    print_json,
    table,
    when,
)
from hone.cli.files import describe, upload
from hone.cli.plot import PlotUnavailable, plot_losses
from hone.errors import APIStatusError, HoneError

if TYPE_CHECKING:
    from hone.types import FineTuningJob, JobEvent, JobProgress, JobStatus, JobUpdate, Preflight

jobs_app = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs (project key).")


def _statuses(values: list[str]) -> list[JobStatus]:
    """--status values, each one of a job's statuses (a usage error names the wrong one)."""
    from hone.types import JobStatus  # hone.types (and openai) load only for commands that call the API

    known = get_args(JobStatus)
    for value in values:
        if value not in known:
            raise typer.BadParameter(f"{value!r} is not a job status ({', '.join(known)})", param_hint="--status")
    return cast("list[JobStatus]", values)


def _pairs(values: list[str], option: str) -> dict:
    """KEY=VALUE options; values are read as JSON where they parse (numbers, lists), else kept as text."""
    pairs = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            pairs[key] = json.loads(raw)
        except ValueError:
            pairs[key] = raw
    return pairs


def _file_id(session: Session, value: str, validate: bool, uploaded: list[str]) -> str:
    """A file id as is; a local path is validated and uploaded first (its new id added to `uploaded`)."""
    path = Path(value)
    if not path.is_file():
        return value
    file = upload(session, path, validate=validate)
    uploaded.append(file.id)
    if not session.as_json:
        err.print(f"uploaded {describe(file)}", markup=False)
    return file.id


def _discard_uploads(session: Session, uploaded: list[str]) -> None:
    """Deletes the files uploaded for a job that was not created, so a refused create leaves nothing behind."""
    for file_id in uploaded:
        try:
            session.client.files.delete(file_id)
            err.print(f"deleted uploaded file {file_id}: the job was not created", markup=False)
        except HoneError as exc:
            err.print(f"could not delete uploaded file {file_id}: {exc}", markup=False)


def _summary(job: FineTuningJob) -> str:
    line = f"{job.id}  {job.status}  {job.model}"
    if job.fine_tuned_model:
        line += f" -> {job.fine_tuned_model}"
    if job.error:
        line += f"\n  error ({job.error.code}): {job.error.message}"
    return line


def _evaluation_lines(job: FineTuningJob) -> list[str]:
    """The job's evaluation against its base: where it stands, then the two models side by side."""
    from hone.types import EvaluationSide

    ev = job.evaluation
    if not ev:
        return []
    lines = [f"evaluation: {ev.status} ({ev.source}, against {ev.compare_to})"]
    if ev.results:
        reward = ev.metric == "mean_reward"  # a reinforcement job graded by its own grader
        rows: list[tuple[str, EvaluationSide]] = [
            ("tuned", ev.results.tuned or EvaluationSide()),
            ("compared", ev.results.compare or EvaluationSide()),
        ]
        width = max(len(r.model or "") for _, r in rows)
        head = "reward" if reward else "score"
        lines.append(f"  {'':<9}{'model':<{width}}  {head:>7}  {'passed':>6}  {'failed':>6}  {'errored':>7}")
        for role, r in rows:
            score = f"{r.score or 0:>7.3f}" if reward else f"{r.score or 0:>7.1%}"
            lines.append(f"  {role:<9}{r.model or '':<{width}}  {score}  {r.passed:>6}  {r.failed:>6}  {r.errored:>7}")
        gain = ev.improvement or 0
        lines.append(
            f"  improvement {f'{gain:+.3f} mean reward' if reward else f'{gain * 100:+.1f} points'} "
            f"over {ev.compare_to}"
        )
    if ev.deployed is not None:
        lines.append(f"  deployed: {'yes' if ev.deployed else 'no'}" + (f" ({ev.reason})" if ev.reason else ""))
    elif ev.reason:
        lines.append(f"  {ev.reason}")
    return lines


def _details(job: FineTuningJob) -> str:
    hp = job.hyperparameters
    return "\n".join(
        [
            _summary(job),
            f"training file {job.training_file}"
            + (f", validation file {job.validation_file}" if job.validation_file else ""),
            f"method {job.method.type if job.method else 'supervised'}: {hp.n_epochs} epoch(s), batch size {hp.batch_size}, "
            f"learning rate multiplier {hp.learning_rate_multiplier}",
            f"created {when(job.created_at)}" + (f", finished {when(job.finished_at)}" if job.finished_at else ""),
            f"trained tokens {job.trained_tokens if job.trained_tokens is not None else '-'}"
            + (f", result files {', '.join(job.result_files)}" if job.result_files else ""),
            *_evaluation_lines(job),
        ]
    )


def _method(kind: str, hyperparameters: dict, grader: str | None, teacher: str | None) -> dict:
    """The job's method object: `--grader` belongs to reinforcement, `--teacher` to distillation, and each of them
    needs its own (a usage error, exit 2, before anything is uploaded)."""
    section: dict = {"hyperparameters": hyperparameters} if hyperparameters else {}
    for option, value, needs in (("--grader", grader, "reinforcement"), ("--teacher", teacher, "distillation")):
        if (value is not None) != (kind == needs):
            raise typer.BadParameter(
                f"{option} is required with --method {needs}" if value is None else f"{option} is for --method {needs}",
                param_hint=option,
            )
    if grader is not None:
        text = Path(grader[1:]).read_text() if grader.startswith("@") else grader
        try:
            section["grader"] = json.loads(text)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--grader") from None
    if teacher is not None:
        section["teacher"] = teacher
    return {"type": kind, kind: section}


def _preflight_text(p: Preflight) -> str:
    hp, tokens, memory, queue = p.hyperparameters, p.tokens, p.memory, p.queue
    fits = "unknown" if memory.fits is None else ("yes" if memory.fits else "NO")
    return "\n".join(
        [
            f"{p.model} ({p.base_model}): {p.training_examples} examples, {hp.n_epochs} epoch(s), "
            f"batch size {hp.batch_size}, learning rate multiplier {hp.learning_rate_multiplier}",
            f"tokens {tokens.total} ({tokens.per_epoch} an epoch), {tokens.examples_truncated} example(s) over "
            f"max_length {tokens.max_length}",
            f"memory fits: {fits} ({memory.basis})",
            f"time: about {datetime.timedelta(seconds=p.time.estimated_seconds)} ({p.time.basis})",
            f"queue: {queue.jobs_ahead} job(s) ahead, {queue.running} running",
        ]
    )


@api_command(jobs_app, "create")
def jobs_create(
    session: Session,
    training_file: str = typer.Option(..., "--training-file", "-t", help="A file id, or a local file to upload."),
    model: str = typer.Option("hone-tiny", "--model"),
    validation_file: str | None = typer.Option(
        None, "--validation-file", "-v", help="A file id, or a local file to upload."
    ),
    method: str = typer.Option("supervised", "--method", help="supervised, dpo, reinforcement or distillation"),
    grader: str | None = typer.Option(
        None, "--grader", help="reinforcement: the grader, as JSON or @FILE holding it (OpenAI's grader object)."
    ),
    teacher: str | None = typer.Option(
        None, "--teacher", help="distillation: the model that answers the prompts (any model the project can call)."
    ),
    n_epochs: int | None = typer.Option(None, "--n-epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    learning_rate_multiplier: float | None = typer.Option(None, "--learning-rate-multiplier"),
    hyperparameter: list[str] = typer.Option(
        [], "--hyperparameter", "-H", help="Any other hyperparameter, KEY=VALUE (lora_rank=8, ...)."
    ),
    suffix: str | None = typer.Option(None, "--suffix", help="Goes into the tuned model's name."),
    seed: int | None = typer.Option(None, "--seed"),
    metadata: list[str] = typer.Option([], "--metadata", "-m", help="KEY=VALUE, repeatable."),
    priority: int | None = typer.Option(None, "--priority", help="-100..100; higher leaves the queue first."),
    auto_deploy: bool = typer.Option(
        True, "--auto-deploy/--no-auto-deploy", help="Deploy an endpoint when the job succeeds."
    ),
    evaluate: bool = typer.Option(
        False, "--evaluate", help="After training, measure the tuned model against its base (Hone's evaluation)."
    ),
    evaluation: list[str] = typer.Option(
        [],
        "--evaluation",
        "-E",
        help="An evaluation setting, KEY=VALUE (compare_to=MODEL, max_rows=100, deploy_if_better=true, ...); implies --evaluate.",
    ),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check local files before uploading."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Then follow the job until it ends."),
    poll_interval: float = typer.Option(1.0, "--poll-interval", help="With --follow: seconds between looks."),
    preflight: bool = typer.Option(
        False,
        "--preflight",
        help="Create nothing: show what the job would be (auto resolved, tokens, memory, time, queue). "
        "Local files are uploaded.",
    ),
):
    """Create a fine-tuning job and print its id."""
    hyperparameters = _pairs(hyperparameter, "--hyperparameter")
    hyperparameters |= {
        k: v
        for k, v in (
            ("n_epochs", n_epochs),
            ("batch_size", batch_size),
            ("learning_rate_multiplier", learning_rate_multiplier),
        )
        if v is not None
    }
    method_body = _method(method, hyperparameters, grader, teacher)
    metadata_pairs = {k: str(v) for k, v in _pairs(metadata, "--metadata").items()} or None  # before any upload
    evaluation_settings = _pairs(evaluation, "--evaluation") if (evaluate or evaluation) else None
    uploaded: list[str] = []
    try:
        training_id = _file_id(session, training_file, validate, uploaded)
        validation_id = _file_id(session, validation_file, validate, uploaded) if validation_file else None
    except (HoneError, typer.Exit):  # the second upload failed: the first is of no use alone
        _discard_uploads(session, uploaded)
        raise
    if preflight:
        answer = session.client.jobs.preflight(
            model,
            training_id,
            validation_file=validation_id,
            method=method_body,
            suffix=suffix,
            seed=seed,
            metadata=metadata_pairs,
            priority=priority,
            auto_deploy=auto_deploy,
            evaluation=evaluation_settings,
        )
        session.show(answer, _preflight_text(answer))
        return
    try:
        job = session.client.jobs.create(
            model,
            training_id,
            validation_file=validation_id,
            method=method_body,
            hyperparameters=None,
            suffix=suffix,
            seed=seed,
            metadata=metadata_pairs,
            priority=priority,
            auto_deploy=auto_deploy,
            evaluation=evaluation_settings,
        )
    except APIStatusError as exc:
        # Refused (4xx): no job uses the files. After a 5xx or a lost connection the job may exist, so they stay.
        if exc.status_code < 500:
            _discard_uploads(session, uploaded)
        raise
    if follow:
        _follow(session, job.id, poll_interval=poll_interval, timeout=None)
    else:
        session.show(job, job.id)


@api_command(jobs_app, "list")
def jobs_list(
    session: Session,
    limit: int = typer.Option(20, "--limit", min=1, help="How many, newest first."),
    status: list[str] = typer.Option(
        [], "--status", help="Only jobs with this status (repeatable): validating_files, queued, running, paused, ..."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Only jobs of this model (base or tuned model it continues)."
    ),
):
    """List jobs, newest first."""
    jobs = list(islice(session.client.jobs.list(limit=min(limit, 100), status=_statuses(status), model=model), limit))
    session.show(
        jobs,
        lambda: table(
            ["id", "status", "model", "tuned model", "created"],
            [(j.id, j.status, j.model, j.fine_tuned_model, when(j.created_at)) for j in jobs],
        ),
    )


@api_command(jobs_app, "get")
def jobs_get(session: Session, job_id: str):
    """Show a job."""
    job = session.client.jobs.retrieve(job_id)
    session.show(job, lambda: _details(job))


@api_command(jobs_app, "events")
def jobs_events(
    session: Session,
    job_id: str,
    limit: int = typer.Option(100, "--limit", min=1, help="How many, newest first."),
    metrics: bool = typer.Option(False, "--metrics/--no-metrics", help="Include each step's metrics events."),
):
    """The job's events, oldest first (the newest LIMIT of them); per-step metrics only with --metrics."""
    newest = islice(session.client.jobs.events(job_id, limit=min(limit, 1000)), limit)
    events = [e for e in newest if metrics or e.type != "metrics"][::-1]
    session.show(events, lambda: "\n".join(_event_line(e, full=True) for e in events))


@api_command(jobs_app, "checkpoints")
def jobs_checkpoints(session: Session, job_id: str):
    """The job's checkpoints, newest first: each one's name (to serve or continue) and its metrics."""
    checkpoints = list(session.client.jobs.checkpoints(job_id))
    session.show(
        checkpoints,
        lambda: table(
            ["step", "checkpoint", "train loss", "valid loss", "created"],
            [
                (
                    c.step_number,
                    c.fine_tuned_model_checkpoint,
                    _loss(c.metrics.train_loss),
                    _loss(c.metrics.full_valid_loss if c.metrics.full_valid_loss is not None else c.metrics.valid_loss),
                    when(c.created_at),
                )
                for c in checkpoints
            ],
        ),
    )


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


@api_command(jobs_app, "logs")
def jobs_logs(
    session: Session,
    job_id: str,
    attempt: int | None = typer.Option(None, "--attempt", min=1, help="Which attempt (default: the latest)."),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing the latest attempt's log as it grows, until the job stops."
    ),
    poll_interval: float = typer.Option(2.0, "--poll-interval", min=0.1, help="With --follow: seconds between looks."),
):
    """What the trainer printed, for one attempt of the job (while it runs, its log so far)."""
    if follow:
        if attempt is not None or session.as_json:
            raise typer.BadParameter("--follow prints the latest attempt as text: not with --attempt or --json")
        _follow_log(session, job_id, poll_interval)
        return
    text = session.client.jobs.logs(job_id, attempt=attempt)
    if session.as_json:
        print_json({"job_id": job_id, "attempt": attempt, "log": text})
    else:
        out.file.write(text)
        out.file.flush()


_LOG_GRACE_S = 15.0  # after the job stopped, how long --follow waits for its attempt's whole log


def _follow_log(session: Session, job_id: str, poll_interval: float) -> None:
    """Prints what the trainer adds to its log, look after look, until the job is paused or has ended and its
    attempt's whole log is printed (a job can say `succeeded` before its trainer has exited). A retry's attempt
    starts its own log, printed from its start."""
    from hone.errors import NotFoundError
    from hone.types import TERMINAL_STATUSES

    printed, attempt, stopped_at = "", None, None
    while True:
        job = session.client.jobs.retrieve(job_id)
        try:
            log = session.client.jobs.log(job_id)
        except NotFoundError:  # not started, or not copied yet
            log = None
        if log is not None:
            if attempt is not None and log.attempt != attempt:
                out.file.write(f"--- attempt {log.attempt} ---\n")
                printed = ""
            attempt = log.attempt
            out.file.write(log.text[len(printed) :])
            out.file.flush()
            printed = log.text
        if job.status in TERMINAL_STATUSES or job.status == "paused":
            stopped_at = stopped_at or time.monotonic()
            if (log is not None and log.complete) or time.monotonic() - stopped_at > _LOG_GRACE_S:
                return
        time.sleep(poll_interval)


def _act(session: Session, job: FineTuningJob) -> None:
    session.show(job, lambda: f"{job.id}  {job.status}")


@api_command(jobs_app, "cancel")
def jobs_cancel(session: Session, job_id: str):
    """Cancel a job."""
    _act(session, session.client.jobs.cancel(job_id))


@api_command(jobs_app, "pause")
def jobs_pause(session: Session, job_id: str):
    """Pause: a running job stops at a checkpoint; a queued one is held out of the queue."""
    _act(session, session.client.jobs.pause(job_id))


@api_command(jobs_app, "resume")
def jobs_resume(session: Session, job_id: str):
    """Resume a paused job (it queues again and continues from its checkpoint)."""
    _act(session, session.client.jobs.resume(job_id))


# --- follow -------------------------------------------------------------------------------------------------


def _phase(update: JobUpdate) -> str:
    """Where the job is, in words, from its first look on: what it waits for before the first step."""
    job, p = update.job, update.progress
    if job.status == "queued":
        return "queued" + (f", position {job.queue_position}" if job.queue_position is not None else "")
    if job.status == "validating_files":
        return "validating files"
    if job.status == "running" and p.step is None:
        return "running: starting trainer..."
    return job.status


def _figures(p: JobProgress, phase: str) -> str:
    parts = [phase]
    if p.epoch and p.n_epochs:
        parts.append(f"epoch {p.epoch}/{p.n_epochs}")
    if p.train_loss is not None:
        parts.append(f"loss {p.train_loss:.4f}" + (f" (val {p.valid_loss:.4f})" if p.valid_loss is not None else ""))
    if p.tokens_per_second is not None:
        parts.append(f"{p.tokens_per_second:,.0f} tok/s")
    if p.eta_seconds is not None and p.status == "running":
        parts.append(f"ETA {datetime.timedelta(seconds=round(p.eta_seconds))}")
    return "  ".join(parts)


def _event_line(event: JobEvent, full: bool = False) -> str:
    stamp = datetime.datetime.fromtimestamp(event.created_at).strftime("%Y-%m-%d %H:%M:%S" if full else "%H:%M:%S")
    level = f"{event.level}  " if full and event.level != "info" else ""
    return f"{stamp}  {level}{event.message}"


def _now() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")


def _follow(session: Session, job_id: str, poll_interval: float, timeout: float | None) -> None:
    watching = session.client.jobs.watch(job_id, poll_interval=poll_interval, timeout=timeout)
    update: JobUpdate | None = None
    if session.as_json:  # JSON Lines: each event as it arrives, then the job as it ended
        for update in watching:
            for event in update.events:
                print(json.dumps(event.model_dump(mode="json", exclude_unset=True)), flush=True)
        assert update is not None
        print(json.dumps(update.job.model_dump(mode="json", exclude_unset=True)), flush=True)
    else:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[steps]}"),  # step/total once the trainer reports them; nothing before
            TextColumn("{task.fields[figures]}"),
        )
        with Progress(*columns, console=out, auto_refresh=False) as progress:
            bar = progress.add_task(job_id, total=None, steps="", figures="")
            shown_phase = None
            for update in watching:
                for event in update.events:
                    # On a terminal the bar shows each step; elsewhere (a log) each step is a line.
                    if event.type != "metrics" or not out.is_terminal:
                        progress.console.print(_event_line(event), markup=False, highlight=False)
                phase = _phase(update)
                if phase != shown_phase:  # at the first look, and at each change: never silent while it waits
                    progress.console.print(f"{_now()}  {phase}", markup=False, highlight=False)
                    shown_phase = phase
                p = update.progress
                steps = f"{p.step or 0}/{p.total_steps}" if p.total_steps else ""
                progress.update(
                    bar, total=p.total_steps, completed=p.step or 0, steps=steps, figures=_figures(p, phase)
                )
                progress.refresh()
        assert update is not None
        out.print(_summary(update.job), markup=False)
    if update.job.status != "succeeded":
        raise typer.Exit(EXIT_ENDED_BADLY)
    raise typer.Exit(EXIT_OK)


@api_command(jobs_app, "evaluation")
def jobs_evaluation(
    session: Session,
    job_id: str,
    wait: bool = typer.Option(False, "--wait", help="Wait until the evaluation has finished."),
    timeout: float = typer.Option(900, "--timeout", help="With --wait: give up after this many seconds."),
):
    """The job's evaluation against its base, side by side (exits 1 if it has none, 5 if it failed or was skipped)."""
    job = session.client.jobs.retrieve(job_id)
    deadline = time.monotonic() + timeout
    while wait and _evaluation_open(job) and time.monotonic() < deadline:
        time.sleep(1.0)
        job = session.client.jobs.retrieve(job_id)
    if not job.evaluation:
        fail(f"job {job_id} asked for no evaluation")
    session.show(job.evaluation, lambda: "\n".join(_evaluation_lines(job)))
    if job.evaluation.status in ("failed", "skipped"):
        raise typer.Exit(EXIT_ENDED_BADLY)


def _evaluation_open(job: FineTuningJob) -> bool:
    return not job.done or (job.evaluation is not None and job.evaluation.status in ("pending", "deploying", "running"))


@api_command(jobs_app, "follow")
def jobs_follow(
    session: Session,
    job_id: str,
    poll_interval: float = typer.Option(1.0, "--poll-interval", help="Seconds between looks."),
    timeout: float | None = typer.Option(None, "--timeout", help="Give up after this many seconds."),
):
    """Follow a job live (its phase at once, then step, epoch, losses, tokens/s, ETA) until it ends; exits 5 unless
    it succeeded."""
    _follow(session, job_id, poll_interval, timeout)


# --- results --------------------------------------------------------------------------------------------------


@api_command(jobs_app, "plot")
def jobs_plot(
    session: Session,
    job_id: str,
    output: Path | None = typer.Option(None, "--output", "-o", help="PNG path (default JOB_ID.png)."),
):
    """Plot the job's training and validation loss per step to a PNG."""
    metrics = session.client.jobs.metrics(job_id)
    if not metrics:
        fail(f"job {job_id} has no metrics yet")
    path = output or Path(f"{job_id}.png")
    try:
        plot_losses(metrics, path, title=f"{job_id} ({len(metrics)} steps)")
    except PlotUnavailable as exc:
        fail(str(exc))
    session.show({"path": str(path), "steps": len(metrics)}, str(path))


@api_command(jobs_app, "results")
def jobs_results(
    session: Session,
    job_id: str,
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the CSV here."),
):
    """The finished job's per-step metrics, as CSV (OpenAI's result file, decoded)."""
    try:
        text = session.client.jobs.results(job_id)
    except ValueError as exc:  # no result file (yet)
        fail(str(exc))
    if output is not None:
        output.write_text(text)
    if session.as_json:
        print_json(list(csv.DictReader(io.StringIO(text))))
    elif output is None:
        out.file.write(text)
    else:
        out.print(str(output), markup=False)
