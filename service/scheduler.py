"""The scheduler: claims queued jobs for executor slots, carries out pause and cancel, and retries crashed runs.

One `tick` reaps ended runs, stops runs whose job was paused or cancelled, kills runs that stopped reporting
(`trainer_stalled`: counted as a crash, like an exit), claims queued jobs (highest priority first, FIFO within a
priority, passing over projects at their running-job quota, with `FOR UPDATE SKIP LOCKED` so replicas on PostgreSQL
never claim the same job), and last (so that nothing it meets holds up a claim) copies running trainers' logs so
far to storage, every HONE_LIVE_LOG_INTERVAL_S."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hone_kernel.trainer_contract import ExitCode, Resources
from service import job_resources, metrics, training_plan
from service.auth import hash_key
from service.context import AppContext
from service.db.database import after_commit
from service.db.tables import Checkpoint, File, Job
from service.errors import ErrorCode, outage_code
from service.executors import Executor, TrainerExit
from service.job_logs import log_key, running_log_key
from service.job_states import JobStatus
from service.jobs import add_event, transition, tuned_model_name
from service.storage import StorageUnavailable

log = logging.getLogger("hone.scheduler")


def _last_checkpoint_step(session: Session, job_id: str) -> int | None:
    return session.execute(
        select(Checkpoint.step_number)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step_number.desc())
        .limit(1)
    ).scalar()


class Scheduler:
    def __init__(self, ctx: AppContext, executor: Executor):
        self.ctx, self.executor = ctx, executor
        self._stopping_since: dict[str, float] = {}  # job id -> when we asked a paused run to stop
        # job id -> when its run was launched or adopted: silence counts from then until the first report
        self._launched_at: dict[str, float] = {}
        self._stalled: dict[str, int] = {}  # job id -> seconds silent when its run was killed for it
        # Runs reaped whose exit is not yet recorded: the executor forgets a run once reaped, so an exit that
        # could not be written (the database down) is kept here and written on a later tick.
        self._exits: list[TrainerExit] = []
        self._logs_copied_at = 0.0
        self._log_sizes: dict[tuple[str, int], int] = {}  # (job id, attempt) -> bytes of its log last copied
        executor.bind(ctx)

    def tick(self) -> None:
        self._exits.extend(self.executor.reap())
        self._record_executor_events()
        while self._exits:
            try:
                self._on_exit(self._exits[0])
            except Exception as exc:
                if outage_code(exc) is None:  # not an outage: it would fail alike each tick and hold up the rest
                    self._exits.pop(0)
                raise  # an outage: the exit is kept for the next tick
            self._exits.pop(0)
        self._enforce_user_actions()
        self._kill_stalled()
        self._claim()
        self._copy_live_logs()

    def _record_executor_events(self) -> None:
        """What a user can act on that is not an exit (e.g. no GPU free, an image that cannot be pulled), as
        (job id, level, message); the executor reports each once."""
        items = self.executor.events()
        if not items:
            return
        with self.ctx.db.write() as session:
            known = set(session.execute(select(Job.id).where(Job.id.in_({i[0] for i in items}))).scalars())
            for job_id, level, message in items:
                if job_id in known:
                    add_event(session, job_id, message, level=level)

    def _copy_live_logs(self) -> None:
        """Each running trainer's log so far, beside where its whole log goes when it ends (service/job_logs.py
        reads the whole one first; the runs reaped this tick are gone from `running()`)."""
        interval = self.ctx.settings.training.live_log_interval_s
        if interval <= 0 or time.monotonic() - self._logs_copied_at < interval:
            return
        self._logs_copied_at = time.monotonic()
        running = self.executor.running()
        self._log_sizes = {key: n for key, n in self._log_sizes.items() if key[0] in running}
        if not running:
            return
        with self.ctx.db.read() as session:
            attempts = session.execute(select(Job.id, Job.attempts).where(Job.id.in_(list(running)))).all()
        for job_id, attempt in attempts:
            text = self.executor.log_so_far(job_id)
            if not text or len(text) == self._log_sizes.get((job_id, attempt)):
                continue
            try:
                self.ctx.storage.put_bytes(running_log_key(job_id, attempt), text)
            except StorageUnavailable as exc:  # the next copy, or the end, keeps it
                log.warning("could not copy a trainer's log", extra={"job_id": job_id, "error": str(exc)})
                continue
            self._log_sizes[(job_id, attempt)] = len(text)

    # --- start-up ---------------------------------------------------------------------

    def reconcile(self) -> None:
        """After a restart: adopt runs still alive, and retry running jobs whose trainer is gone."""
        if self.executor.slots() == 0:
            return  # a replica that trains nothing leaves runs to the one that does
        with self.ctx.db.read() as session:
            running = session.execute(
                select(Job.id, Job.executor_ref).where(Job.status == JobStatus.RUNNING.value)
            ).all()
        for job_id, ref in running:
            if ref and not self.executor.owns(ref):
                continue  # another machine's run
            if ref and self.executor.adopt(job_id, ref):
                log.info("adopted a running trainer", extra={"job_id": job_id, "ref": ref})
                self._launched_at[job_id] = time.time()  # its silence while we were down is not held against it
                continue
            self._on_exit(TrainerExit(job_id, ref or "", None, None))

    # --- ended runs ------------------------------------------------------------------------

    def _on_exit(self, ended: TrainerExit) -> None:
        self._stopping_since.pop(ended.job_id, None)
        self._launched_at.pop(ended.job_id, None)
        self._record_exit(ended, self._stalled.get(ended.job_id))
        self._stalled.pop(ended.job_id, None)  # only once recorded: a failed write tries again with it

    def _record_exit(self, ended: TrainerExit, stalled: int | None) -> None:
        with self.ctx.db.write() as session:
            job = session.execute(select(Job).where(Job.id == ended.job_id).with_for_update()).scalar()
            if job is None:
                return
            if ended.log is not None:
                try:
                    self.ctx.storage.put_bytes(log_key(job.id, job.attempts), ended.log)
                    self.ctx.storage.delete(running_log_key(job.id, job.attempts))  # the whole log is read first
                except StorageUnavailable as exc:  # the exit must be recorded all the same, log or not
                    log.warning("could not keep a trainer log in storage", extra={"job_id": job.id, "error": str(exc)})
            if job.status != JobStatus.RUNNING.value or (job.executor_ref or "") != ended.ref:
                return  # finished, paused or cancelled as intended, or already handed to a newer attempt
            job.executor_ref = None
            step = _last_checkpoint_step(session, job.id)
            where = f"checkpoint step {step}" if step else "the start"
            if ended.returncode == ExitCode.STOPPED:
                transition(session, job, JobStatus.QUEUED, f"Trainer was stopped; requeued to resume from {where}")
                return
            if ended.error is not None:
                error = {"code": ended.error["code"], "param": None, "message": ended.error["message"]}
                transition(session, job, JobStatus.FAILED, error["message"], level="error", error=error)
                return
            job.failures += 1
            how = "vanished" if ended.returncode is None else f"exited with code {ended.returncode}"
            if ended.returncode == ExitCode.STORAGE:
                how += " (storage unavailable)"
            if stalled is not None:
                how = f"stalled (no report for {stalled} s) and was killed"
                add_event(
                    session,
                    job.id,
                    f"Trainer stalled: nothing heard from it for {stalled} s (limit "
                    f"{self.ctx.settings.training.trainer_stall_timeout_s:g} s); killed it",
                    level="warn",
                    data={"code": ErrorCode.TRAINER_STALLED, "silent_s": stalled},
                )
            limit = self.ctx.settings.training.max_job_attempts
            if job.failures < limit:
                transition(
                    session,
                    job,
                    JobStatus.QUEUED,
                    f"Trainer {how}; retrying from {where} (attempt {job.attempts + 1} of {limit})",
                    level="warn",
                )
                after_commit(session, metrics.TRAINER_RETRIES.inc)
                return
            error = {
                "code": ErrorCode.TRAINER_STALLED if stalled is not None else "trainer_failed",
                "param": None,
                "message": f"The job failed after {job.failures} trainer crashes (the last {how}). "
                f"The trainer logs are in storage under jobs/{job.id}/logs/.",
            }
            transition(session, job, JobStatus.FAILED, error["message"], level="error", error=error)

    # --- pause and cancel -------------------------------------------------------------------

    def _enforce_user_actions(self) -> None:
        tracked = self.executor.running()
        if not tracked:
            return
        with self.ctx.db.read() as session:
            statuses = dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(tracked))).all())
        now = time.monotonic()
        for job_id in tracked:
            status = statuses.get(job_id)
            if status in (JobStatus.CANCELLED.value, JobStatus.FAILED.value, None):
                self.executor.stop(job_id, kill=True)
            elif status == JobStatus.PAUSED.value:
                asked = self._stopping_since.setdefault(job_id, now)
                if asked == now:
                    self.executor.stop(job_id, kill=False)  # the trainer checkpoints, then exits
                elif now - asked > self.ctx.settings.training.pause_grace_s:
                    self.executor.stop(job_id, kill=True)

    # --- stalled trainers -----------------------------------------------------------------------

    def _kill_stalled(self) -> None:
        """Kills running trainers not heard from for the stall timeout. A trainer reports at least every few
        seconds while its main thread works (trainer/reporting.py), so silence means a hung or frozen process;
        its exit is then counted like a crash in _on_exit. Silence counts from the launch while nothing was
        reported: a trainer that hangs loading its model is caught too."""
        timeout = self.ctx.settings.training.trainer_stall_timeout_s
        tracked = self.executor.running()
        if timeout <= 0 or not tracked:
            return
        now = time.time()
        for job_id in tracked:
            self._launched_at.setdefault(job_id, now)
        with self.ctx.db.read() as session:
            rows = session.execute(select(Job.id, Job.status, Job.last_report_at).where(Job.id.in_(tracked))).all()
        for job_id, status, last_report_at in rows:
            if status != JobStatus.RUNNING.value:
                continue  # pause and cancel have their own clocks (_enforce_user_actions)
            heard = max(last_report_at or 0, self._launched_at[job_id])  # an earlier attempt's report is no news
            silent = now - heard
            if silent > timeout:
                if job_id not in self._stalled:
                    log.warning("trainer stalled; killing it", extra={"job_id": job_id, "silent_s": int(silent)})
                self._stalled[job_id] = self._stalled.get(job_id) or int(silent)
                self.executor.stop(job_id, kill=True)  # again each tick until reaped: cheap, and idempotent

    # --- claiming -----------------------------------------------------------------------------

    def _claim(self) -> None:
        free = self.executor.free_slots()
        if free <= 0:
            return
        with self.ctx.db.read() as session:  # an idle poll must not take SQLite's write lock
            if session.execute(select(Job.id).where(Job.status == JobStatus.QUEUED.value).limit(1)).scalar() is None:
                return
        launches: list[tuple[str, int, str, Resources]] = []
        quota = self.ctx.settings.training.max_running_jobs_per_project
        with self.ctx.db.write() as session:
            # Jobs of projects at their quota are passed over, so look further down the queue than `free`.
            queued = (
                session.execute(
                    select(Job)
                    .where(Job.status == JobStatus.QUEUED.value)
                    .order_by(Job.priority.desc(), Job.seq)
                    .limit(free + 200 if quota else free)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            running = (
                dict(
                    session.execute(
                        select(Job.project_id, func.count())
                        .where(Job.status == JobStatus.RUNNING.value)
                        .group_by(Job.project_id)
                    ).all()
                )
                if quota
                else {}
            )
            for job in queued:
                if free <= 0:
                    break
                if quota and running.get(job.project_id, 0) >= quota:
                    continue
                resources = job_resources.of_job(job.resources)
                cost = self.executor.cost(resources)
                if cost > self.executor.slots():  # never fits: the deployment shrank since it was created
                    self._refuse_size(session, job, cost)
                    continue
                if cost > free:
                    break  # the head of the queue waits for room: jobs behind it must not starve it
                try:
                    launch = self._prepare(session, job)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    self._refuse(session, job, exc)  # a row that makes no spec must not block the queue behind it
                    continue
                free -= cost
                running[job.project_id] = running.get(job.project_id, 0) + 1
                launches.append((*launch, resources))
        for job_id, attempt, spec_url, resources in launches:
            self._launch(job_id, attempt, spec_url, resources)

    def _prepare(self, session: Session, job: Job) -> tuple[str, int, str]:
        ids = [f for f in (job.training_file, job.validation_file) if f]
        files = {f.id: f for f in session.execute(select(File).where(File.id.in_(ids))).scalars()}
        defaults = training_plan.training_defaults(self.ctx, job)
        job.method = training_plan.resolve_hyperparameters(
            job.method,
            training_plan.DatasetShape.of(
                files[job.training_file], defaults, len(training_plan.held_out_examples(job))
            ),
            defaults,
            self.ctx.settings.training.train_max_length,
            on_gpu=training_plan.trainer_on_gpu(self.ctx.settings),
        )
        token = secrets.token_urlsafe(32)
        job.trainer_token_hash = hash_key(token)  # a new token per attempt: an older run can no longer report
        job.attempts += 1
        spec_url = training_plan.write_spec(self.ctx, job, files, token, tuned_model_name(session, job))
        first = job.attempts == 1
        message = "Fine-tuning job started" if first else f"Fine-tuning job resumed (attempt {job.attempts})"
        transition(
            session,
            job,
            JobStatus.RUNNING,
            message,
            executor_ref=None,
            method=job.method,
            attempts=job.attempts,
            trainer_token_hash=job.trainer_token_hash,
        )
        return job.id, job.attempts, spec_url

    def _refuse(self, session: Session, job: Job, exc: Exception) -> None:
        log.exception("a queued job's row makes no training spec; failing it", extra={"job_id": job.id})
        error: dict[str, Any] = {
            "code": ErrorCode.INVALID_JOB,
            "param": None,
            "message": f"The job could not be started: its stored method or files are malformed "
            f"({type(exc).__name__}: {exc}). Create it again.",
        }
        transition(session, job, JobStatus.FAILED, error["message"], level="error", error=error)

    def _refuse_size(self, session: Session, job: Job, cost: int) -> None:
        message = (
            f"The job asks for {cost} devices (resources), and this deployment's executor has "
            f"{self.executor.slots()}: it can never start. Create it again with fewer."
        )
        error: dict[str, Any] = {"code": ErrorCode.INVALID_JOB, "param": "resources", "message": message}
        transition(session, job, JobStatus.FAILED, message, level="error", error=error)

    def _launch(self, job_id: str, attempt: int, spec_url: str, resources: Resources) -> None:
        began = time.monotonic()
        try:
            ref = self.executor.launch(job_id, attempt, spec_url, resources)
        except OSError as exc:
            log.exception("could not start a trainer", extra={"job_id": job_id})
            self._on_exit(TrainerExit(job_id, "", None, f"could not start the trainer: {exc}".encode()))
            return
        self._launched_at[job_id] = time.time()
        # One line per attempt; launch_ms shows a slow start (a warm interpreter still preloading, an API call)
        launch_ms = round((time.monotonic() - began) * 1000)
        log.info("trainer started", extra={"job_id": job_id, "attempt": attempt, "ref": ref, "launch_ms": launch_ms})
        with self.ctx.db.write() as session:
            # declarative __table__ is typed FromClause, which has no update(); Job's is a Table
            update_jobs = Job.__table__.update()  # type: ignore[attr-defined]
            session.execute(update_jobs.where(Job.id == job_id, Job.attempts == attempt).values(executor_ref=ref))
