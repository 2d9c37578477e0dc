"""The Kubernetes executor (HONE_EXECUTOR=kubernetes): one batch/v1 Job per attempt of a tuning job on one node, or
one JobSet / Kubeflow TrainJob per attempt on several (HONE_K8S_MULTINODE; k8s_multinode.py builds those).

This module is the watcher: it creates and deletes the run objects and pods (the manifests come from
k8s_trainer_job.py and k8s_multinode.py, the API calls from k8s_calls.py), polls the namespace's trainer Jobs and
pods (two LIST calls per scheduler tick, and one per multi-node kind in use), and hands each run's objects to the
pure classifiers, k8s_observation.py for one pod and k8s_rank_observation.py for a multi-node run's ranks, which say
what they mean (an Observation, the exit code, the events to tell the user). Here the verdict is acted on: the
log is read on exit (a multi-node run's: rank 0's, then the failing rank's) and handed back as TrainerExit.log, the
events go out once per run, ended pods are released from this executor's finalizer, a run stuck Pending past its
timeout has its Job deleted, and an ended multi-node run is deleted, so that no surviving rank waits on the others.

stop(kill=False) deletes the pods with the pause grace period (the kubelet sends SIGTERM; every rank checkpoints and
exits 75); stop(kill=True) deletes the Job (or JobSet, TrainJob) with propagationPolicy=Foreground and its pods at
once. After a control-plane restart, adopt() finds a run's object by its labels.

ref: `k8s:{namespace}/{job name}:{attempt}` for one node, `k8s:{namespace}/{jobsets|trainjobs}/{name}:{attempt}`
for several."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hone_kernel.trainer_contract import Resources
from service.executors import TrainerExit
from service.executors.k8s_calls import TrainerCalls, api_message, run_key, trainer_container
from service.executors.k8s_multinode import BY_PLURAL, Engine, build_run, engine_for, rank_of
from service.executors.k8s_observation import (
    EXIT_DEADLINE,
    EXIT_OOM,
    EXIT_STOPPED,
    Seen,
    Verdict,
    classify,
    never_ran,
)
from service.executors.k8s_rank_observation import classify_ranks
from service.executors.k8s_trainer_job import (
    APP,
    APP_LABEL,
    ATTEMPT_LABEL,
    JOB_ID_ANNOTATION,
    JOB_ID_LABEL,
    REQUIRED_RBAC,
    TEMPLATE,
    build_job,
    job_name,
)
from service.k8s import api_client, label_value
from service.settings import Settings

__all__ = ["EXIT_DEADLINE", "EXIT_OOM", "EXIT_STOPPED", "REQUIRED_RBAC", "KubernetesExecutor", "build_job", "job_name"]

log = logging.getLogger("hone.executor.kubernetes")


@dataclass
class _Run:
    job_id: str
    attempt: int
    name: str
    ref: str
    engine: Engine | None = None  # None: one node, a batch/v1 Job
    seen: Seen = field(default_factory=Seen)  # what the classifier remembers between looks
    # Set by stop() (any thread); copied into `seen` at each look, so a look never undoes a stop.
    stop: str | None = None  # "pause" or "kill" once asked
    kill_sent: bool = False
    pause_sent: bool = False
    gave_up: dict | None = None  # the error a stuck pod ended the run with
    log_pod: tuple[str, str] | None = None  # (pod, container) whose log is the run's while it runs: rank 0's


class KubernetesExecutor:
    def __init__(self, settings: Settings, api=None):
        self._settings = settings
        self._ns = settings.kubernetes.k8s_namespace
        self._api = api or api_client(settings)
        self._calls = TrainerCalls(self._api, self._ns)
        self._runs: dict[str, _Run] = {}
        self._events: list[tuple[str, str, str]] = []  # (job id, level, message) not yet handed out
        self._lock = threading.Lock()
        self._project_of: Callable[[str], str | None] | None = None  # job id -> project id, given by bind()
        self._last_sweep = 0.0

    # --- the Protocol ---

    def bind(self, ctx) -> None:
        """Lets launch() label a Job with its project (the Protocol's launch() does not carry it)."""
        from sqlalchemy import select

        from service.db.tables import Job

        def project_of(job_id: str) -> str | None:
            with ctx.db.read() as session:
                return session.execute(select(Job.project_id).where(Job.id == job_id)).scalar()

        self._project_of = project_of

    def events(self) -> list[tuple[str, str, str]]:
        """(job id, level, message) for what a user can act on, each once per run: a pod that cannot be
        scheduled or whose image cannot be pulled, OOMKilled, eviction and preemption, the deadline."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def slots(self) -> int:
        return max(0, self._settings.kubernetes.k8s_max_parallel_jobs)

    def cost(self, resources: Resources) -> int:  # the cluster queues pods it has no GPUs for: a run is one Job
        return 1

    def free_slots(self) -> int:
        return self.slots() - len(self.running())

    def running(self) -> dict[str, str]:
        with self._lock:
            return {job_id: run.ref for job_id, run in self._runs.items()}

    def owns(self, ref: str) -> bool:
        return ref.startswith(f"k8s:{self._ns}/")

    def launch(self, job_id: str, attempt: int, spec_url: str, resources: Resources | None = None) -> str:
        from kubernetes.client.rest import ApiException

        resources = resources or Resources()
        project_id = None
        if self._project_of is not None:
            try:
                project_id = self._project_of(job_id)
            except Exception:  # a label is not worth a failed launch
                log.warning("could not look up the job's project", exc_info=True, extra={"job_id": job_id})
        finalizer = self._calls.finalizer
        try:
            engine = engine_for(self._settings, resources)
            if engine is None:
                body = build_job(
                    self._settings, job_id, attempt, spec_url, project_id, finalizer=finalizer, resources=resources
                )
            else:
                body = build_run(
                    self._settings, engine, job_id, attempt, spec_url, resources, project_id, finalizer=finalizer
                )
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot build the trainer run from {TEMPLATE}: {exc}") from exc
        name, what = body["metadata"]["name"], body["kind"]
        try:
            self._calls.create(engine, body)
        except ApiException as exc:
            raise OSError(
                f"Kubernetes refused the trainer {what} {self._ns}/{name}: {exc.status} {exc.reason}: "
                f"{api_message(exc)}"
            ) from exc
        except Exception as exc:  # connection errors (urllib3) and the like
            raise OSError(f"cannot reach the Kubernetes API to create {self._ns}/{name}: {exc}") from exc
        location = f"{self._ns}/{engine.plural}/{name}" if engine else f"{self._ns}/{name}"
        ref = f"k8s:{location}:{attempt}"
        with self._lock:
            self._runs[job_id] = _Run(job_id, attempt, name, ref, engine)
        log.info(f"created trainer {what}", extra={"job_id": job_id, "ref": ref})
        return ref

    def stop(self, job_id: str, *, kill: bool) -> None:
        with self._lock:
            run = self._runs.get(job_id)
            if run is None:
                return
            run.stop = "kill" if kill or run.stop == "kill" else "pause"
        try:
            if kill and not run.kill_sent:
                self._calls.delete_run(run.engine, run.name)
                run.kill_sent = True
            elif not kill and not run.pause_sent:
                for pod in self._calls.pods_of(run.name):  # every rank: each checkpoints and exits 75
                    self._calls.delete_pod(pod, grace=max(1, int(self._settings.training.pause_grace_s)))
                run.pause_sent = True
        except Exception:  # the scheduler calls stop() again on a later tick
            log.warning("could not stop the trainer run", exc_info=True, extra={"job_id": job_id, "ref": run.ref})

    def reap(self) -> list[TrainerExit]:
        with self._lock:
            runs = list(self._runs.values())
        if not runs and time.monotonic() - self._last_sweep < 60:
            return []  # idle: only look for leftover pods now and then
        self._last_sweep = time.monotonic()
        try:
            jobs: dict[str, list[dict]] = {}
            for job in self._calls.list_of("jobs"):  # one node's Job by its name, multi-node child Jobs by their run
                jobs.setdefault(run_key(job) or job["metadata"]["name"], []).append(job)
            pods: dict[str, list[dict]] = {}
            for pod in self._calls.list_of("pods"):
                pods.setdefault(run_key(pod), []).append(pod)
        except Exception:
            log.warning("could not list trainer Jobs and pods; trying again next tick", exc_info=True)
            return []
        owners: dict[str, dict[str, dict]] = {}  # engine plural -> name -> object, for the kinds in use
        for engine in {run.engine for run in runs if run.engine is not None}:
            try:
                owners[engine.plural] = {o["metadata"]["name"]: o for o in self._calls.list_of(engine)}
            except Exception:  # its runs wait for the next tick; the others go on
                log.warning(f"could not list trainer {engine.kind}s; trying again next tick", exc_info=True)
        exits = []
        for run in runs:
            if run.engine is not None and run.engine.plural not in owners:
                continue
            own = pods.get(run.name, [])
            if run.engine is None:  # one node: its Job, found by name
                obj = next((j for j in jobs.get(run.name, []) if j["metadata"]["name"] == run.name), None)
            else:  # several: the JobSet or TrainJob, its child Jobs, its rank pods
                obj = owners[run.engine.plural].get(run.name)
            verdict = self._look(run, obj, jobs.get(run.name, []), own)
            if not verdict.ended:
                if own:
                    rank0 = min(own, key=rank_of)
                    run.log_pod = (rank0["metadata"]["name"], trainer_container(rank0))
                continue
            log_bytes = self._log_of(run, verdict, own)
            if verdict.note:
                log_bytes += f"[hone kubernetes executor] {verdict.note}\n".encode()
            for pod in own:
                self._calls.release(pod)
            with self._lock:
                if self._runs.get(run.job_id) is run:
                    del self._runs[run.job_id]
            # A stuck pod's Job goes at once (its pod was released above); an ended multi-node run too, so that no
            # rank is left waiting on the others (the engine would otherwise keep them until the deadline).
            if run.gave_up is not None or (run.engine is not None and not run.kill_sent):
                try:
                    self._calls.delete_run(run.engine, run.name, pods_now=run.gave_up is not None)
                except Exception:  # the deadline and TTL still end it
                    log.warning("could not delete an ended trainer run", exc_info=True, extra={"job_id": run.job_id})
            exits.append(TrainerExit(run.job_id, run.ref, verdict.exit_code, log_bytes or None, run.gave_up))
        tracked = {run.name for run in runs}
        # Ended pods of runs nobody tracks (e.g. cancelled while the control plane was down, then deleted by the
        # Job's TTL): let them go.
        for owner_name, owned in pods.items():
            for pod in owned:
                phase = (pod.get("status") or {}).get("phase")
                if owner_name not in tracked and (phase in ("Succeeded", "Failed") or never_ran(pod)):
                    self._calls.release(pod)
        return exits

    def log_so_far(self, job_id: str) -> bytes | None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is None or run.log_pod is None:
            return None
        try:
            return self._calls.pod_log_or_raise(*run.log_pod)
        except Exception:  # not there yet, or the API is busy: the next copy, or the end, has it
            return None

    def _log_of(self, run: _Run, verdict: Verdict, pods: list[dict]) -> bytes:
        """One pod's log; a multi-node run's rank 0 log, then the failing rank's when another rank failed."""
        by_name = {p["metadata"]["name"]: p for p in pods}
        names = [verdict.pod] if verdict.pod else []
        if run.engine is not None and pods:
            rank0 = min(pods, key=rank_of)["metadata"]["name"]
            names = [rank0] + [n for n in names if n != rank0]
        parts = []
        for name in names:
            pod = by_name.get(name)
            text = self._calls.pod_log(name, trainer_container(pod) if pod else "trainer")
            if run.engine is not None:
                rank = rank_of(pod) if pod else "?"
                text = f"[hone kubernetes executor] rank {rank}, pod {name}:\n".encode() + (text or b"")
            parts.append(text or b"")
        return b"".join(parts)

    def adopt(self, job_id: str, ref: str) -> bool:
        if not self.owns(ref):
            return False
        try:
            location, attempt = ref[len("k8s:") :].rsplit(":", 1)
            parts = location.split("/")
            name, engine = parts[-1], (BY_PLURAL[parts[1]] if len(parts) == 3 else None)
            selector = f"{APP_LABEL}={APP},{JOB_ID_LABEL}={label_value(job_id)},{ATTEMPT_LABEL}={int(attempt)}"
            found = [
                j
                for j in self._calls.list_of(engine or "jobs", selector)
                if j["metadata"]["name"] == name
                and (j["metadata"].get("annotations") or {}).get(JOB_ID_ANNOTATION, job_id) == job_id
            ]
        except Exception:
            log.warning("could not look for a trainer run to adopt", exc_info=True, extra={"job_id": job_id})
            return False
        if not found or found[0]["metadata"].get("deletionTimestamp"):
            return False
        with self._lock:
            self._runs[job_id] = _Run(job_id, int(attempt), name, ref, engine)
        return True  # a run that ended while nobody watched is reaped, with its exit code, on the next tick

    # --- internals ---

    def _look(self, run: _Run, obj: dict | None, children: list[dict], pods: list[dict]) -> Verdict:
        """Classifies the run's objects, remembers what the classifier saw, and says each new kind of event once."""
        seen = dataclasses.replace(run.seen, stop=run.stop, kill_sent=run.kill_sent)
        if run.engine is None:
            verdict = classify(obj, pods, seen, self._settings, time.monotonic())
        else:
            verdict = classify_ranks(obj, children, pods, seen, self._settings, time.monotonic())
        fresh = [e for e in verdict.events if e.kind not in verdict.seen.said]
        run.seen = dataclasses.replace(verdict.seen, said=verdict.seen.said | {e.kind for e in fresh})
        if verdict.error is not None:
            run.gave_up = verdict.error
        with self._lock:
            self._events.extend((run.job_id, e.level, e.message) for e in fresh)
        return verdict
