"""The Kubernetes executor (HONE_EXECUTOR=kubernetes): one batch/v1 Job per attempt of a tuning job.

This module is the watcher: it creates and deletes Jobs and pods (the manifest comes from k8s_trainer_job.py),
polls the namespace's trainer Jobs and pods (two LIST calls per scheduler tick), and hands each run's objects to
the pure classifier in k8s_observation.py, which says what they mean (an Observation, the exit code, the events
to tell the user). Here the verdict is acted on: the pod's log is read on exit and handed back as
TrainerExit.log, the events go out once per run, ended pods are released from this executor's finalizer, and a
run stuck Pending past its timeout has its Job deleted.

stop(kill=False) deletes the pod with the pause grace period (the kubelet sends SIGTERM; the trainer
checkpoints and exits 75); stop(kill=True) deletes the Job with propagationPolicy=Foreground and its pods at
once. After a control-plane restart, adopt() finds a run's Job by its labels.

ref: `k8s:{namespace}/{job name}:{attempt}`."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.executors import TrainerExit
from service.executors.k8s_observation import (
    CONTAINER,
    EXIT_DEADLINE,
    EXIT_OOM,
    EXIT_STOPPED,
    Seen,
    Verdict,
    classify,
    never_ran,
)
from service.executors.k8s_trainer_job import (
    APP,
    APP_LABEL,
    ATTEMPT_LABEL,
    FINALIZER,
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
    seen: Seen = field(default_factory=Seen)  # what the classifier remembers between looks
    # Set by stop() (any thread); copied into `seen` at each look, so a look never undoes a stop.
    stop: str | None = None  # "pause" or "kill" once asked
    kill_sent: bool = False
    pause_sent: bool = False
    gave_up: dict | None = None  # the error a stuck pod ended the run with


def _owner(pod: dict) -> str | None:
    return next(
        (
            r.get("name")
            for r in pod["metadata"].get("ownerReferences") or []
            if r.get("kind") == "Job" and r.get("controller")
        ),
        None,
    )


class KubernetesExecutor:
    def __init__(self, settings: Settings, api=None):
        from kubernetes import client

        self._settings = settings
        self._ns = settings.kubernetes.k8s_namespace
        self._api = api or api_client(settings)
        self._batch, self._core = client.BatchV1Api(self._api), client.CoreV1Api(self._api)
        self._runs: dict[str, _Run] = {}
        self._events: list[tuple[str, str, str]] = []  # (job id, level, message) not yet handed out
        self._lock = threading.Lock()
        self._project_of: Callable[[str], str | None] | None = None  # job id -> project id, given by bind()
        self._last_sweep = 0.0
        self._finalizer = True  # off once the API says this control plane may not patch pods (its Role)

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

    def running(self) -> dict[str, str]:
        with self._lock:
            return {job_id: run.ref for job_id, run in self._runs.items()}

    def owns(self, ref: str) -> bool:
        return ref.startswith(f"k8s:{self._ns}/")

    def launch(self, job_id: str, attempt: int, spec_url: str) -> str:
        from kubernetes.client.rest import ApiException

        project_id = None
        if self._project_of is not None:
            try:
                project_id = self._project_of(job_id)
            except Exception:  # a label is not worth a failed launch
                log.warning("could not look up the job's project", exc_info=True, extra={"job_id": job_id})
        try:
            body = build_job(self._settings, job_id, attempt, spec_url, project_id, finalizer=self._finalizer)
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot build the trainer Job from {TEMPLATE}: {exc}") from exc
        name = body["metadata"]["name"]
        try:
            # a dict body: the client's validate_call makes the model its annotation asks for
            self._batch.create_namespaced_job(self._ns, body)  # type: ignore[arg-type]
        except ApiException as exc:
            raise OSError(
                f"Kubernetes refused the trainer Job {self._ns}/{name}: {exc.status} {exc.reason}: {_api_message(exc)}"
            ) from exc
        except Exception as exc:  # connection errors (urllib3) and the like
            raise OSError(f"cannot reach the Kubernetes API to create {self._ns}/{name}: {exc}") from exc
        ref = f"k8s:{self._ns}/{name}:{attempt}"
        with self._lock:
            self._runs[job_id] = _Run(job_id, attempt, name, ref)
        log.info("created trainer Job", extra={"job_id": job_id, "ref": ref})
        return ref

    def stop(self, job_id: str, *, kill: bool) -> None:

        with self._lock:
            run = self._runs.get(job_id)
            if run is None:
                return
            run.stop = "kill" if kill or run.stop == "kill" else "pause"
        try:
            if kill and not run.kill_sent:
                self._delete_job(run.name)
                run.kill_sent = True
            elif not kill and not run.pause_sent:
                for pod in self._pods_of(run.name):
                    self._delete_pod(pod, grace=max(1, int(self._settings.training.pause_grace_s)))
                run.pause_sent = True
        except Exception:  # the scheduler calls stop() again on a later tick
            log.warning("could not stop the trainer Job", exc_info=True, extra={"job_id": job_id, "ref": run.ref})

    def _delete_job(self, name: str) -> None:
        from kubernetes.client.rest import ApiException

        try:  # Foreground: the Job goes once its pods are gone
            self._batch.delete_namespaced_job(name, self._ns, propagation_policy="Foreground")
        except ApiException as exc:
            if exc.status != 404:
                raise
        for pod in self._pods_of(name):  # and the pods now, not after their grace period
            self._delete_pod(pod, grace=0)

    def reap(self) -> list[TrainerExit]:
        with self._lock:
            runs = list(self._runs.values())
        if not runs and time.monotonic() - self._last_sweep < 60:
            return []  # idle: only look for leftover pods now and then
        self._last_sweep = time.monotonic()
        try:
            jobs = {j["metadata"]["name"]: j for j in self._list("jobs")}
            pods: dict[str, list[dict]] = {}
            for pod in self._list("pods"):
                pods.setdefault(_owner(pod) or "", []).append(pod)
        except Exception:
            log.warning("could not list trainer Jobs and pods; trying again next tick", exc_info=True)
            return []
        exits = []
        for run in runs:
            verdict = self._look(run, jobs.get(run.name), pods.get(run.name, []))
            if not verdict.ended:
                continue
            log_bytes = self._pod_log(verdict.pod) if verdict.pod else b""
            if verdict.note:
                log_bytes = (log_bytes or b"") + f"[hone kubernetes executor] {verdict.note}\n".encode()
            for pod in pods.get(run.name, []):
                self._release(pod)
            with self._lock:
                if self._runs.get(run.job_id) is run:
                    del self._runs[run.job_id]
            if run.gave_up is not None:  # its pod was released above, so the Job goes with it at once
                try:
                    self._delete_job(run.name)
                except Exception:  # the Job's deadline and TTL still end it
                    log.warning("could not delete a stuck trainer Job", exc_info=True, extra={"job_id": run.job_id})
            exits.append(TrainerExit(run.job_id, run.ref, verdict.exit_code, log_bytes or None, run.gave_up))
        tracked = {run.name for run in runs}
        # Ended pods of runs nobody tracks (e.g. cancelled while the control plane was down, then deleted by the
        # Job's TTL): let them go.
        for owner, owned in pods.items():
            for pod in owned:
                phase = (pod.get("status") or {}).get("phase")
                if owner not in tracked and (phase in ("Succeeded", "Failed") or never_ran(pod)):
                    self._release(pod)
        return exits

    def _release(self, pod: dict) -> None:
        """Removes this executor's finalizer from a pod whose end has been read."""
        from kubernetes.client.rest import ApiException

        meta = pod["metadata"]
        for _ in range(3):
            finalizers = meta.get("finalizers") or []
            if FINALIZER not in finalizers:
                return
            rest = [f for f in finalizers if f != FINALIZER]
            try:
                self._core.patch_namespaced_pod(
                    meta["name"],
                    self._ns,
                    {"metadata": {"finalizers": rest or None, "resourceVersion": meta["resourceVersion"]}},
                )
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status == 403:
                    if self._finalizer:
                        log.error(
                            "the control plane may not patch pods (its Role needs the `patch` verb on pods): new "
                            "trainer pods go without the hone.dev/trainer-exit finalizer, and this one keeps it "
                            "until removed by hand",
                            extra={"pod": meta["name"], "error": _api_message(exc)},
                        )
                    self._finalizer = False
                    return
                if exc.status != 409:
                    log.warning("could not release a trainer pod", extra={"pod": meta["name"], "error": str(exc)})
                    return
            except Exception as exc:
                log.warning("could not release a trainer pod", extra={"pod": meta["name"], "error": str(exc)})
                return
            try:  # changed meanwhile (e.g. the Job controller's own finalizer went): read it again
                response = self._core.read_namespaced_pod(meta["name"], self._ns, _preload_content=False)
                # _preload_content=False answers the raw urllib3 response, not the annotated model
                meta = json.loads(response.data)["metadata"]  # type: ignore[attr-defined]
            except Exception:
                return

    def adopt(self, job_id: str, ref: str) -> bool:
        if not self.owns(ref):
            return False
        try:
            location, attempt = ref[len("k8s:") :].rsplit(":", 1)
            name = location.split("/", 1)[1]
            selector = f"{APP_LABEL}={APP},{JOB_ID_LABEL}={label_value(job_id)},{ATTEMPT_LABEL}={int(attempt)}"
            found = [
                j
                for j in self._list("jobs", selector)
                if j["metadata"]["name"] == name
                and (j["metadata"].get("annotations") or {}).get(JOB_ID_ANNOTATION, job_id) == job_id
            ]
        except Exception:
            log.warning("could not look for a trainer Job to adopt", exc_info=True, extra={"job_id": job_id})
            return False
        if not found or found[0]["metadata"].get("deletionTimestamp"):
            return False
        with self._lock:
            self._runs[job_id] = _Run(job_id, int(attempt), name, ref)
        return True  # a Job that ended while nobody watched is reaped, with its exit code, on the next tick

    # --- internals ---

    def _list(self, kind: str, selector: str | None = None) -> list[dict]:
        selector = selector or f"{APP_LABEL}={APP}"
        call = self._batch.list_namespaced_job if kind == "jobs" else self._core.list_namespaced_pod
        response = call(self._ns, label_selector=selector, _preload_content=False, _request_timeout=30)
        # _preload_content=False answers the raw urllib3 response, not the annotated model
        return json.loads(response.data).get("items") or []  # type: ignore[union-attr]

    def _pods_of(self, name: str) -> list[str]:
        return [p["metadata"]["name"] for p in self._list("pods") if _owner(p) == name]

    def _delete_pod(self, pod: str, *, grace: int) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self._core.delete_namespaced_pod(pod, self._ns, grace_period_seconds=grace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _pod_log(self, pod: str) -> bytes | None:
        try:  # raw bytes: the client would otherwise try to parse a JSON log line as a JSON document
            response = self._core.read_namespaced_pod_log(
                pod, self._ns, container=CONTAINER, _preload_content=False, _request_timeout=30
            )
            # _preload_content=False answers the raw urllib3 response, not the annotated str
            return response.data  # type: ignore[attr-defined]
        except Exception as exc:
            return f"[hone kubernetes executor] the pod's log could not be read: {exc}\n".encode()

    def _look(self, run: _Run, job: dict | None, pods: list[dict]) -> Verdict:
        """Classifies the run's objects, remembers what the classifier saw, and says each new kind of event once."""
        seen = dataclasses.replace(run.seen, stop=run.stop, kill_sent=run.kill_sent)
        verdict = classify(job, pods, seen, self._settings, time.monotonic())
        fresh = [e for e in verdict.events if e.kind not in verdict.seen.said]
        run.seen = dataclasses.replace(verdict.seen, said=verdict.seen.said | {e.kind for e in fresh})
        if verdict.error is not None:
            run.gave_up = verdict.error
        with self._lock:
            self._events.extend((run.job_id, e.level, e.message) for e in fresh)
        return verdict


def _api_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message") or ""
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")[:300]
