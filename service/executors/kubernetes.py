"""The Kubernetes executor (HONE_EXECUTOR=kubernetes): one batch/v1 Job per attempt of a tuning job.

Each Job is built from deploy/kubernetes/base/templates/trainer-job.yaml (the file the kustomize base ships
in the hone-templates ConfigMap) and runs `python -m trainer --spec URL` with the trainer image, the storage
Secret by reference, nvidia.com/gpu, the node selector and tolerations from settings, activeDeadlineSeconds,
ttlSecondsAfterFinished and backoffLimit 0: Hone retries a crashed trainer itself, from its last checkpoint,
as a new Job. Labels tie each Job and its pod to the tuning job, its project and the attempt.

reap() polls the namespace's trainer Jobs and pods (two LIST calls per scheduler tick) and maps what it sees
to the scheduler's contract:
- pod Succeeded -> exit 0; Failed -> the trainer container's exit code (75: stopped after a checkpoint);
- OOMKilled -> 137 with a message that says what to change;
- evicted or preempted (status.reason Evicted, a DisruptionTarget condition, or the pod deleted under a
  running trainer) -> 75 (EXIT_STOPPED): the job is requeued and resumes from its checkpoint without
  counting as a crash;
- the Job past activeDeadlineSeconds -> a failure (124), whatever the pod's exit code;
- still Pending because nothing can schedule it (Unschedulable, e.g. Insufficient nvidia.com/gpu) or the
  image cannot be pulled (ErrImagePull, ImagePullBackOff) -> a job event (events()) at once; if it lasts
  HONE_K8S_UNSCHEDULABLE_TIMEOUT_S / HONE_K8S_IMAGE_PULL_TIMEOUT_S, the Job is deleted and the exit carries
  an error (no_gpu_capacity / image_pull_failed) that fails the job without retries.
The pod's log is read on exit and handed back as TrainerExit.log. stop(kill=False) deletes the pod with the
pause grace period (the kubelet sends SIGTERM; the trainer checkpoints and exits 75); stop(kill=True) deletes
the Job with propagationPolicy=Foreground and its pods at once. After a control-plane restart, adopt() finds
a run's Job by its labels.

ref: `k8s:{namespace}/{job name}:{attempt}`."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from service.executors import TrainerExit
from service.k8s import api_client, dns_label, label_value, load_template
from service.settings import Settings

log = logging.getLogger("hone.executor.kubernetes")

TEMPLATE = "trainer-job.yaml"
CONTAINER = "trainer"
APP_LABEL = "app.kubernetes.io/name"
APP = "hone-trainer"
JOB_ID_LABEL, PROJECT_LABEL, ATTEMPT_LABEL = "hone.dev/job-id", "hone.dev/project-id", "hone.dev/attempt"
JOB_ID_ANNOTATION = "hone.dev/job-id"
# On every trainer pod: the pod object (its exit status and its log) stays until reap() has read them, even when
# it is deleted (pause, preemption, eviction, drain) and would otherwise be gone before the next poll.
FINALIZER = "hone.dev/trainer-exit"

# The trainer's exit codes (trainer/loop.py) and the ones this executor reports for what the cluster did.
EXIT_STOPPED = 75
EXIT_OOM = 137
EXIT_DEADLINE = 124

OOM_MESSAGE = ("OOMKilled: the trainer ran out of memory; use a smaller batch_size (or shorter examples), or give "
               "the trainer pod more memory in the trainer-job.yaml template")


def job_name(job_id: str, attempt: int) -> str:
    """`hone-train-{job id}-{hash}-{attempt}`: a DNS-1123 label (<= 63). Job ids are case-sensitive and names
    are not, so a short hash of the exact id keeps two ids that differ only in case apart."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:6]
    room = 63 - len("hone-train-") - len(digest) - len(str(attempt)) - 2
    return f"hone-train-{dns_label(job_id, room)}-{digest}-{attempt}"


# What the control plane's Role must allow in its namespace for this executor (deploy/kubernetes/base/rbac.yaml).
REQUIRED_RBAC = {("batch", "jobs"): {"create", "get", "list", "delete"}, ("", "pods"): {"get", "list", "delete", "patch"},
                 ("", "pods/log"): {"get"}}


def build_job(settings: Settings, job_id: str, attempt: int, spec_url: str, project_id: str | None = None, *,
              finalizer: bool = True) -> dict:
    """The batch/v1 Job of one attempt: the template with this run's fields filled in."""
    job = load_template(settings, TEMPLATE)
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        raise ValueError(f"{TEMPLATE} must be a batch/v1 Job")
    labels = {APP_LABEL: APP, JOB_ID_LABEL: label_value(job_id), ATTEMPT_LABEL: str(attempt)}
    if project_id:
        labels[PROJECT_LABEL] = label_value(project_id)
    meta = job.setdefault("metadata", {})
    meta.pop("generateName", None)
    meta.update(name=job_name(job_id, attempt), namespace=settings.k8s_namespace)
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), JOB_ID_ANNOTATION: job_id}
    spec = job.setdefault("spec", {})
    spec.update(backoffLimit=0, activeDeadlineSeconds=settings.k8s_job_deadline_s,
                ttlSecondsAfterFinished=settings.k8s_job_ttl_s)
    template = spec.setdefault("template", {})
    template_meta = template.setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    template_meta["annotations"] = {**(template_meta.get("annotations") or {}), JOB_ID_ANNOTATION: job_id}
    template_meta["finalizers"] = [f for f in template_meta.get("finalizers") or [] if f != FINALIZER] + \
        ([FINALIZER] if finalizer else [])
    if not template_meta["finalizers"]:
        del template_meta["finalizers"]
    pod = template.setdefault("spec", {})
    pod["restartPolicy"] = "Never"
    if settings.k8s_node_selector:
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **settings.k8s_node_selector}
    if settings.k8s_tolerations:
        pod["tolerations"] = list(pod.get("tolerations") or []) + list(settings.k8s_tolerations)
    containers = pod.setdefault("containers", [])
    container = next((c for c in containers if c.get("name") == CONTAINER), None)
    if container is None:
        raise ValueError(f"{TEMPLATE} has no container named {CONTAINER!r}")
    container["image"] = settings.k8s_trainer_image
    container["args"] = ["--spec", spec_url]
    ours = {"HONE_JOB_ID": job_id, "HONE_JOB_ATTEMPT": str(attempt)}
    if settings.trainer_threads > 0:
        ours["OMP_NUM_THREADS"] = str(settings.trainer_threads)
    container["env"] = [e for e in container.get("env") or [] if e.get("name") not in ours] + \
        [{"name": k, "value": v} for k, v in ours.items()]
    env_from = [e for e in container.get("envFrom") or [] if "secretRef" not in e]
    if settings.k8s_secret_name:
        env_from.append({"secretRef": {"name": settings.k8s_secret_name}})
    container["envFrom"] = env_from
    resources = container.setdefault("resources", {})
    for part in ("requests", "limits"):
        values = dict(resources.get(part) or {})
        values.pop("nvidia.com/gpu", None)
        if settings.k8s_gpus_per_job > 0:
            values["nvidia.com/gpu"] = str(settings.k8s_gpus_per_job)
        if values:
            resources[part] = values
        else:
            resources.pop(part, None)
    if not resources:
        container.pop("resources")
    return job


@dataclass
class _Run:
    job_id: str
    attempt: int
    name: str
    ref: str
    stop: str | None = None  # "pause" or "kill" once asked
    pause_sent: bool = False
    kill_sent: bool = False
    disrupted: str | None = None  # what a DisruptionTarget condition or a deletion said, last seen
    pod_ran: bool = False
    said: set[str] = field(default_factory=set)  # event kinds already reported for this run
    stuck_since: dict[str, float] = field(default_factory=dict)  # "unschedulable" | "image" -> first seen
    gave_up: dict | None = None  # the error a stuck pod ended the run with


def _conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def _container_status(pod: dict) -> dict | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER), statuses[0] if statuses else None)


def _owner(pod: dict) -> str | None:
    return next((r.get("name") for r in pod["metadata"].get("ownerReferences") or []
                 if r.get("kind") == "Job" and r.get("controller")), None)


class KubernetesExecutor:
    def __init__(self, settings: Settings, api=None):
        from kubernetes import client

        self._settings = settings
        self._ns = settings.k8s_namespace
        self._api = api or api_client(settings)
        self._batch, self._core = client.BatchV1Api(self._api), client.CoreV1Api(self._api)
        self._runs: dict[str, _Run] = {}
        self._events: list[tuple[str, str, str]] = []  # (job id, level, message) not yet handed out
        self._lock = threading.Lock()
        self._project_of = None  # job id -> project id, given by bind()
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
        return max(0, self._settings.k8s_max_parallel_jobs)

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
            self._batch.create_namespaced_job(self._ns, body)
        except ApiException as exc:
            raise OSError(f"Kubernetes refused the trainer Job {self._ns}/{name}: {exc.status} {exc.reason}: "
                          f"{_api_message(exc)}") from exc
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
                    self._delete_pod(pod, grace=max(1, int(self._settings.pause_grace_s)))
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
            ended = self._check(run, jobs.get(run.name), pods.get(run.name, []))
            if ended is None:
                continue
            code, note, pod_name = ended
            log_bytes = self._pod_log(pod_name) if pod_name else b""
            if note:
                log_bytes = (log_bytes or b"") + f"[hone kubernetes executor] {note}\n".encode()
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
            exits.append(TrainerExit(run.job_id, run.ref, code, log_bytes or None, run.gave_up))
        tracked = {run.name for run in runs}
        # Ended pods of runs nobody tracks (e.g. cancelled while the control plane was down, then deleted by the
        # Job's TTL): let them go.
        for owner, owned in pods.items():
            for pod in owned:
                phase = (pod.get("status") or {}).get("phase")
                if owner not in tracked and (phase in ("Succeeded", "Failed") or (
                        pod["metadata"].get("deletionTimestamp") and not (pod.get("spec") or {}).get("nodeName"))):
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
                self._core.patch_namespaced_pod(meta["name"], self._ns, {"metadata": {
                    "finalizers": rest or None, "resourceVersion": meta["resourceVersion"]}})
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status == 403:
                    if self._finalizer:
                        log.error("the control plane may not patch pods (its Role needs the `patch` verb on pods): new "
                                  "trainer pods go without the hone.dev/trainer-exit finalizer, and this one keeps it "
                                  "until removed by hand", extra={"pod": meta["name"], "error": _api_message(exc)})
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
                meta = json.loads(response.data)["metadata"]
            except Exception:
                return

    def adopt(self, job_id: str, ref: str) -> bool:
        if not self.owns(ref):
            return False
        try:
            location, attempt = ref[len("k8s:"):].rsplit(":", 1)
            name = location.split("/", 1)[1]
            selector = f"{APP_LABEL}={APP},{JOB_ID_LABEL}={label_value(job_id)},{ATTEMPT_LABEL}={int(attempt)}"
            found = [j for j in self._list("jobs", selector)
                     if j["metadata"]["name"] == name
                     and (j["metadata"].get("annotations") or {}).get(JOB_ID_ANNOTATION, job_id) == job_id]
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
        return json.loads(response.data).get("items") or []

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
            response = self._core.read_namespaced_pod_log(pod, self._ns, container=CONTAINER,
                                                          _preload_content=False, _request_timeout=30)
            return response.data
        except Exception as exc:
            return f"[hone kubernetes executor] the pod's log could not be read: {exc}\n".encode()

    def _say(self, run: _Run, kind: str, level: str, message: str) -> None:
        if kind in run.said:
            return
        run.said.add(kind)
        with self._lock:
            self._events.append((run.job_id, level, message))

    def _check(self, run: _Run, job: dict | None, pods: list[dict]) -> tuple[int | None, str, str | None] | None:
        """None while the run goes on; else (exit code, note for the log, pod whose log to read)."""
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        pod = pods[-1] if pods else None
        job_conditions = _conditions(job) if job else {}
        failed = job_conditions.get("Failed", {})
        if failed.get("status") == "True" and failed.get("reason") == "DeadlineExceeded":
            note = (f"The trainer Job ran longer than activeDeadlineSeconds "
                    f"({(job.get('spec') or {}).get('activeDeadlineSeconds')} s, HONE_K8S_JOB_DEADLINE_S) and was "
                    "stopped")
            self._say(run, "deadline", "error", note + ".")
            return EXIT_DEADLINE, note, pod["metadata"]["name"] if pod else None
        if run.stop == "kill" and run.kill_sent:
            # Cancelled: the Job is being deleted (Foreground) with its pods; reap() lets the pods go.
            return None, "the trainer Job was deleted (cancelled)", pod["metadata"]["name"] if pod else None
        never_ran = False
        if pod is not None:
            ended = self._check_pod(run, pod)
            if ended is not None:
                return ended
            never_ran = bool(pod["metadata"].get("deletionTimestamp") and not (pod.get("spec") or {}).get("nodeName"))
            if job is not None and not job["metadata"].get("deletionTimestamp") and not never_ran:
                return None  # a pod deleted before any node took it has nothing left to stop
        # No pod, or one being deleted by a Job that is itself going away.
        if job is not None and job_conditions.get("Complete", {}).get("status") == "True":
            return 0, "", None
        if job is not None and failed.get("status") != "True" and not job["metadata"].get("deletionTimestamp") \
                and not never_ran:
            return None  # the Job controller has not made the pod yet
        # The pod is gone without an exit status we saw: it was deleted (drained, preempted, evicted, pause), so
        # the kubelet sent SIGTERM and the trainer checkpointed; resume from there.
        how = run.disrupted or ("the pod was deleted" if job is not None else "the trainer Job was deleted")
        if run.stop == "pause":
            return EXIT_STOPPED, "stopped for a pause", None
        if run.pod_ran or run.disrupted:
            message = f"The trainer pod went away ({how}); the job resumes from its last checkpoint."
            self._say(run, "disrupted", "warn", message)
            return EXIT_STOPPED, message, None
        return None, f"the trainer vanished ({how})", None

    def _check_pod(self, run: _Run, pod: dict) -> tuple[int | None, str, str | None] | None:
        status = pod.get("status") or {}
        phase, name = status.get("phase"), pod["metadata"]["name"]
        conditions = _conditions(pod)
        container = _container_status(pod) or {}
        state = container.get("state") or {}
        disruption = conditions.get("DisruptionTarget", {})
        if disruption.get("status") == "True":
            run.disrupted = f"{disruption.get('reason') or 'disrupted'}: {disruption.get('message') or ''}".strip(": ")
        if status.get("reason") == "Evicted":
            run.disrupted = f"Evicted: {status.get('message') or ''}".strip(": ")
        if phase == "Running" or "running" in state:
            run.pod_ran = True
            if run.said & {"unschedulable", "image"} and "running" not in run.said:
                self._say(run, "running", "info", f"Trainer pod {name} is running on node "
                          f"{(pod.get('spec') or {}).get('nodeName') or '?'}.")
        if phase in ("Succeeded", "Failed"):
            terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            reason = terminated.get("reason") or ""
            if phase == "Succeeded" or code == 0:
                return 0, "", name
            if reason == "OOMKilled":
                message = f"{OOM_MESSAGE} (pod {name}{_memory_limit(pod)})."
                self._say(run, "oom", "error", message)
                return EXIT_OOM, message, name
            if run.stop == "pause":
                return (code if code is not None else EXIT_STOPPED), "stopped for a pause", name
            if run.disrupted or (pod["metadata"].get("deletionTimestamp") and run.stop is None):
                how = run.disrupted or "the pod was deleted"
                verb = "evicted" if status.get("reason") == "Evicted" or "Evict" in how else \
                    "preempted" if "Preempt" in how else "stopped by the cluster"
                message = (f"The trainer pod {name} was {verb} ({how}); the job resumes from its last checkpoint "
                           "without counting as a crash.")
                self._say(run, "disrupted", "warn", message)
                return EXIT_STOPPED, message, name
            if code is None:
                return None, f"pod {name} failed without an exit code ({status.get('reason') or ''} " \
                             f"{status.get('message') or ''})".strip(), name
            detail = f" ({reason}: {terminated.get('message')})" if terminated.get("message") else \
                (f" ({reason})" if reason and reason != "Error" else "")
            return code, f"trainer container exited with code {code}{detail}", name
        if phase == "Pending":
            troubles = self._pending_troubles(pod, conditions.get("PodScheduled", {}), state.get("waiting") or {})
            for kind, level, code, message, meanwhile in troubles:
                self._say(run, kind, level, f"{message} {meanwhile}")
                ended = self._give_up_if_stuck(run, kind, code, message, name)
                if ended is not None:
                    return ended
            for kind in set(run.stuck_since) - {t[0] for t in troubles}:  # mended: its clock starts again
                run.stuck_since.pop(kind)
        return None

    def _pending_troubles(self, pod: dict, scheduled: dict, waiting: dict) -> list[tuple[str, str, str, str, str]]:
        """(kind, event level, error code, message, what happens meanwhile) for each reason a pod stays Pending."""
        troubles = []
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            gpus = self._settings.k8s_gpus_per_job
            wants = f"{gpus} nvidia.com/gpu" if gpus else "its resources"
            where = f" on nodes matching {self._settings.k8s_node_selector}" if self._settings.k8s_node_selector else ""
            troubles.append(("unschedulable", "warn", "no_gpu_capacity",
                             f"The trainer pod cannot be scheduled: {scheduled.get('message') or 'Unschedulable'} "
                             f"No node{where} has {wants} free; free a GPU, add nodes, or change "
                             "HONE_K8S_GPUS_PER_JOB / HONE_K8S_NODE_SELECTOR / HONE_K8S_TOLERATIONS.",
                             "The job waits."))
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            image = next((c.get("image") for c in (pod.get("spec") or {}).get("containers") or []
                          if c.get("name") == CONTAINER), self._settings.k8s_trainer_image)
            troubles.append(("image", "error", "image_pull_failed",
                             f"The trainer image {image} cannot be pulled ({waiting['reason']}: "
                             f"{waiting.get('message') or ''}). Check HONE_K8S_TRAINER_IMAGE and the cluster's "
                             "access to the registry (imagePullSecrets).",
                             "The job waits until the image can be pulled."))
        return troubles

    def _give_up_if_stuck(self, run: _Run, kind: str, code: str, message: str, pod: str):
        limit = self._settings.k8s_unschedulable_timeout_s if kind == "unschedulable" \
            else self._settings.k8s_image_pull_timeout_s
        since = run.stuck_since.setdefault(kind, time.monotonic())
        if limit <= 0 or time.monotonic() - since < limit:
            return None
        setting = "HONE_K8S_UNSCHEDULABLE_TIMEOUT_S" if kind == "unschedulable" else "HONE_K8S_IMAGE_PULL_TIMEOUT_S"
        run.gave_up = {"code": code, "message": f"{message} Gave up after {limit:g} s ({setting})."}
        self._say(run, "gave-up", "error", run.gave_up["message"])
        return None, run.gave_up["message"], pod


def _memory_limit(pod: dict) -> str:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            return f", memory limit {limit}" if limit else ""
    return ""


def _api_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message") or ""
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")[:300]
