"""What a trainer Job and its pods mean for the run: a pure classifier, objects in, an Observation out.

No API calls and no clocks of its own: the watcher (service/executors/kubernetes.py) lists the objects, passes
what it remembers of the run (`Seen`) and the time, and acts on the `Verdict`: reads the pod's log, says the
events, releases the pods, ends the run with the exit code. Tested over recorded objects
(tests/test_k8s_observation.py) as well as through the fake API server.

The mapping to the scheduler's contract:
- pod Succeeded -> exit 0; Failed -> the trainer container's exit code (75: stopped after a checkpoint);
- OOMKilled -> 137 with a message that says what to change;
- evicted or preempted (status.reason Evicted, a DisruptionTarget condition, or the pod deleted under a
  running trainer) -> 75: the job is requeued and resumes from its checkpoint without counting as a crash;
- the Job past activeDeadlineSeconds -> a failure (124), whatever the pod's exit code;
- still Pending because nothing can schedule it (Unschedulable) or the image cannot be pulled -> an event at
  once; past its timeout the run ends with an error that fails the job without retries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from hone_kernel.trainer_contract import ExitCode
from service.errors import ErrorCode
from service.settings import Settings

CONTAINER = "trainer"
# The trainer's container in a Kubeflow Trainer TrainJob's pods (the name its torch runtime requires)
TRAINER_CONTAINERS = (CONTAINER, "node")

# The trainer contract's exit codes: the trainer's own, and those the executor reports for what the cluster did.
EXIT_STOPPED = ExitCode.STOPPED
EXIT_OOM = ExitCode.KILLED
EXIT_DEADLINE = ExitCode.DEADLINE

OOM_MESSAGE = (
    "OOMKilled: the trainer ran out of memory; use a smaller batch_size (or shorter examples), or give "
    "the trainer pod more memory in the trainer-job.yaml template"
)


class Observation(str, Enum):
    RUNNING = "running"  # goes on: pending, starting, training, or the Job not yet showing its pod
    SUCCEEDED = "succeeded"  # exit 0
    FAILED = "failed"  # the trainer exited non-zero by itself
    OOM_KILLED = "oom_killed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    PAUSED = "paused"  # stopped for a pause, after its checkpoint
    DISRUPTED = "disrupted"  # evicted, preempted, drained or deleted: resumes from its checkpoint, no crash counted
    CANCELLED = "cancelled"  # the Job deleted for a cancel: nothing to report
    STUCK = "stuck"  # Pending past its timeout (no capacity, image cannot be pulled): fails without retries
    LOST = "lost"  # gone, or failed, without an exit status to report


@dataclass(frozen=True)
class Seen:
    """What the watcher remembers of a run between looks, and what it has asked of it."""

    stop: str | None = None  # "pause" or "kill" once asked
    kill_sent: bool = False  # the Job's deletion was sent
    pod_ran: bool = False
    disrupted: str | None = None  # what a DisruptionTarget condition or an eviction said, last seen
    stuck_since: tuple[tuple[str, float], ...] = ()  # ("unschedulable" | "image", first seen)
    said: frozenset[str] = frozenset()  # event kinds already reported for this run


@dataclass(frozen=True)
class Event:
    kind: str  # said once per run
    level: str
    message: str


@dataclass(frozen=True)
class Verdict:
    observation: Observation
    seen: Seen  # to remember for the next look
    exit_code: int | None = None
    note: str = ""  # appended to the trainer's log
    pod: str | None = None  # whose log to read
    events: tuple[Event, ...] = ()
    error: dict | None = None  # STUCK: the error the job fails with

    @property
    def ended(self) -> bool:
        return self.observation is not Observation.RUNNING


def conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def _container_status(pod: dict) -> dict | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") in TRAINER_CONTAINERS), statuses[0] if statuses else None)


def never_ran(pod: dict) -> bool:
    """Deleted before any node took it."""
    return bool(pod["metadata"].get("deletionTimestamp") and not (pod.get("spec") or {}).get("nodeName"))


def classify(job: dict | None, pods: list[dict], seen: Seen, settings: Settings, now: float) -> Verdict:
    """The run's state from its Job (None once deleted) and the Job's pods (any order)."""
    pods = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    pod = pods[-1] if pods else None
    pod_name = pod["metadata"]["name"] if pod else None
    job_conditions = conditions(job) if job else {}
    failed = job_conditions.get("Failed", {})
    if failed.get("status") == "True" and failed.get("reason") == "DeadlineExceeded":
        assert job is not None  # the conditions are the Job's
        note = (
            f"The trainer Job ran longer than activeDeadlineSeconds "
            f"({(job.get('spec') or {}).get('activeDeadlineSeconds')} s, HONE_K8S_JOB_DEADLINE_S) and was "
            "stopped"
        )
        return Verdict(
            Observation.DEADLINE_EXCEEDED,
            seen,
            EXIT_DEADLINE,
            note,
            pod_name,
            (Event("deadline", "error", note + "."),),
        )
    if seen.stop == "kill" and seen.kill_sent:
        # Cancelled: the Job is being deleted (Foreground) with its pods; the watcher lets the pods go.
        return Verdict(Observation.CANCELLED, seen, None, "the trainer Job was deleted (cancelled)", pod_name)
    events: tuple[Event, ...] = ()
    gone_unscheduled = False
    if pod is not None:
        verdict = classify_pod(pod, seen, settings, now)
        if verdict.ended:
            return verdict
        seen, events = verdict.seen, verdict.events
        gone_unscheduled = never_ran(pod)
        if job is not None and not job["metadata"].get("deletionTimestamp") and not gone_unscheduled:
            return verdict
    # No pod, or one being deleted by a Job that is itself going away.
    if job is not None and job_conditions.get("Complete", {}).get("status") == "True":
        return Verdict(Observation.SUCCEEDED, seen, 0, "", None, events)
    if (
        job is not None
        and failed.get("status") != "True"
        and not job["metadata"].get("deletionTimestamp")
        and not gone_unscheduled
    ):
        return Verdict(Observation.RUNNING, seen, events=events)  # the Job controller has not made the pod yet
    # The pod is gone without an exit status we saw: it was deleted (drained, preempted, evicted, pause), so the
    # kubelet sent SIGTERM and the trainer checkpointed; resume from there.
    how = seen.disrupted or ("the pod was deleted" if job is not None else "the trainer Job was deleted")
    if seen.stop == "pause":
        return Verdict(Observation.PAUSED, seen, EXIT_STOPPED, "stopped for a pause", None, events)
    if seen.pod_ran or seen.disrupted:
        message = f"The trainer pod went away ({how}); the job resumes from its last checkpoint."
        return Verdict(
            Observation.DISRUPTED, seen, EXIT_STOPPED, message, None, events + (Event("disrupted", "warn", message),)
        )
    return Verdict(Observation.LOST, seen, None, f"the trainer vanished ({how})", None, events)


def classify_pod(pod: dict, seen: Seen, settings: Settings, now: float) -> Verdict:
    status = pod.get("status") or {}
    phase, name = status.get("phase"), pod["metadata"]["name"]
    pod_conditions = conditions(pod)
    container = _container_status(pod) or {}
    state = container.get("state") or {}
    disruption = pod_conditions.get("DisruptionTarget", {})
    if disruption.get("status") == "True":
        reason = f"{disruption.get('reason') or 'disrupted'}: {disruption.get('message') or ''}".strip(": ")
        seen = dataclasses.replace(seen, disrupted=reason)
    if status.get("reason") == "Evicted":
        seen = dataclasses.replace(seen, disrupted=f"Evicted: {status.get('message') or ''}".strip(": "))
    events: list[Event] = []
    if phase == "Running" or "running" in state:
        seen = dataclasses.replace(seen, pod_ran=True)
        if seen.said & {"unschedulable", "image"}:
            events.append(
                Event(
                    "running",
                    "info",
                    f"Trainer pod {name} is running on node {(pod.get('spec') or {}).get('nodeName') or '?'}.",
                )
            )
    if phase in ("Succeeded", "Failed"):
        return _classify_exit(pod, status, state, container, seen, tuple(events))
    if phase == "Pending":
        troubles = pending_troubles(pod, pod_conditions.get("PodScheduled", {}), state.get("waiting") or {}, settings)
        stuck = dict(seen.stuck_since)
        for kind in set(stuck) - {t[0] for t in troubles}:  # mended: its clock starts again
            stuck.pop(kind)
        for kind, level, code, message, meanwhile in troubles:
            events.append(Event(kind, level, f"{message} {meanwhile}"))
            since = stuck.setdefault(kind, now)
            limit = (
                settings.kubernetes.k8s_unschedulable_timeout_s
                if kind == "unschedulable"
                else settings.kubernetes.k8s_image_pull_timeout_s
            )
            if limit > 0 and now - since >= limit:
                setting = (
                    "HONE_K8S_UNSCHEDULABLE_TIMEOUT_S" if kind == "unschedulable" else "HONE_K8S_IMAGE_PULL_TIMEOUT_S"
                )
                error = {"code": code, "message": f"{message} Gave up after {limit:g} s ({setting})."}
                events.append(Event("gave-up", "error", error["message"]))
                seen = dataclasses.replace(seen, stuck_since=tuple(stuck.items()))
                return Verdict(Observation.STUCK, seen, None, error["message"], name, tuple(events), error)
        seen = dataclasses.replace(seen, stuck_since=tuple(stuck.items()))
    return Verdict(Observation.RUNNING, seen, events=tuple(events))


def _classify_exit(
    pod: dict, status: dict, state: dict, container: dict, seen: Seen, events: tuple[Event, ...]
) -> Verdict:
    name = pod["metadata"]["name"]
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
    code, reason = terminated.get("exitCode"), terminated.get("reason") or ""
    if status.get("phase") == "Succeeded" or code == 0:
        return Verdict(Observation.SUCCEEDED, seen, 0, "", name, events)
    if reason == "OOMKilled":
        message = f"{OOM_MESSAGE} (pod {name}{_memory_limit(pod)})."
        return Verdict(
            Observation.OOM_KILLED, seen, EXIT_OOM, message, name, events + (Event("oom", "error", message),)
        )
    if seen.stop == "pause":
        return Verdict(
            Observation.PAUSED, seen, code if code is not None else EXIT_STOPPED, "stopped for a pause", name, events
        )
    if seen.disrupted or (pod["metadata"].get("deletionTimestamp") and seen.stop is None):
        how = seen.disrupted or "the pod was deleted"
        verb = (
            "evicted"
            if status.get("reason") == "Evicted" or "Evict" in how
            else "preempted"
            if "Preempt" in how
            else "stopped by the cluster"
        )
        message = (
            f"The trainer pod {name} was {verb} ({how}); the job resumes from its last checkpoint "
            "without counting as a crash."
        )
        return Verdict(
            Observation.DISRUPTED, seen, EXIT_STOPPED, message, name, events + (Event("disrupted", "warn", message),)
        )
    if code is None:
        note = (
            f"pod {name} failed without an exit code ({status.get('reason') or ''} "
            f"{status.get('message') or ''})".strip()
        )
        return Verdict(Observation.LOST, seen, None, note, name, events)
    detail = (
        f" ({reason}: {terminated.get('message')})"
        if terminated.get("message")
        else (f" ({reason})" if reason and reason != "Error" else "")
    )
    return Verdict(Observation.FAILED, seen, code, f"trainer container exited with code {code}{detail}", name, events)


def pending_troubles(
    pod: dict, scheduled: dict, waiting: dict, settings: Settings
) -> list[tuple[str, str, ErrorCode, str, str]]:
    """(kind, event level, error code, message, what happens meanwhile) for each reason a pod stays Pending."""
    troubles: list[tuple[str, str, ErrorCode, str, str]] = []
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        gpus = _gpus_asked(pod)
        wants = f"{gpus} nvidia.com/gpu" if gpus else "its resources"
        where = (
            f" on nodes matching {settings.kubernetes.k8s_node_selector}"
            if settings.kubernetes.k8s_node_selector
            else ""
        )
        troubles.append(
            (
                "unschedulable",
                "warn",
                ErrorCode.NO_GPU_CAPACITY,
                f"The trainer pod cannot be scheduled: {scheduled.get('message') or 'Unschedulable'} "
                f"No node{where} has {wants} free; free a GPU, add nodes, or change "
                "HONE_K8S_GPUS_PER_JOB / HONE_K8S_NODE_SELECTOR / HONE_K8S_TOLERATIONS.",
                "The job waits.",
            )
        )
    if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        image = next(
            (
                c.get("image")
                for c in (pod.get("spec") or {}).get("containers") or []
                if c.get("name") in TRAINER_CONTAINERS
            ),
            settings.kubernetes.k8s_trainer_image,
        )
        troubles.append(
            (
                "image",
                "error",
                ErrorCode.IMAGE_PULL_FAILED,
                f"The trainer image {image} cannot be pulled ({waiting['reason']}: "
                f"{waiting.get('message') or ''}). Check HONE_K8S_TRAINER_IMAGE and the cluster's "
                "access to the registry (imagePullSecrets).",
                "The job waits until the image can be pulled.",
            )
        )
    return troubles


def _gpus_asked(pod: dict) -> int:
    """nvidia.com/gpu the pod's containers ask for (a job of several devices asks for more than the setting)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        try:
            total += int(((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu") or 0)
        except ValueError:
            pass
    return total


def _memory_limit(pod: dict) -> str:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") in TRAINER_CONTAINERS:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            return f", memory limit {limit}" if limit else ""
    return ""
