"""The Kubernetes executor's classifier over recorded objects: a trainer Job and its pods, shaped as the API
server returns them (status, conditions, containerStatuses as kubelets and controllers write them), in, an
Observation with its exit code and events out. No API server, fake or real, is involved: the classifier is pure.
(tests/test_kubernetes_executor.py drives the watcher around it against the fake API server.)"""

from __future__ import annotations

import dataclasses

import pytest

from service.executors.k8s_observation import EXIT_DEADLINE, EXIT_OOM, EXIT_STOPPED, Observation, Seen, classify
from service.settings import Settings

SETTINGS = Settings(
    k8s_gpus_per_job=1,
    k8s_unschedulable_timeout_s=600,
    k8s_image_pull_timeout_s=300,
    k8s_trainer_image="registry.example/hone-trainer:1",
)
JOB_NAME = "hone-train-ftjob-abc-1a2b3c-1"


def job(*conditions: dict, deleting: bool = False) -> dict:
    meta = {
        "name": JOB_NAME,
        "namespace": "hone",
        "labels": {"app.kubernetes.io/name": "hone-trainer"},
        "creationTimestamp": "2026-12-04T08:00:00Z",
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T08:05:00Z"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {"activeDeadlineSeconds": 86400},
        "status": {"conditions": list(conditions)},
    }


def pod(
    phase: str,
    *,
    state: dict | None = None,
    conditions: list | None = None,
    node: str | None = "gpu-node-1",
    reason: str | None = None,
    message: str | None = None,
    deleting: bool = False,
    created: str = "08:00:01",
    memory: str | None = "16Gi",
    gpus: int = 1,
) -> dict:
    container: dict = {"name": "trainer", "image": "registry.example/hone-trainer:1"}
    limits = {"memory": memory} if memory else {}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    if limits:
        container["resources"] = {"limits": limits}
    meta = {
        "name": f"{JOB_NAME}-x{created[-2:]}",
        "namespace": "hone",
        "creationTimestamp": f"2026-12-04T{created}Z",
        "ownerReferences": [{"kind": "Job", "name": JOB_NAME, "controller": True}],
        "finalizers": ["hone.dev/trainer-exit"],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T08:05:00Z"
    status: dict = {"phase": phase, "conditions": conditions or []}
    if state is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": state, "ready": "running" in state}]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    spec: dict = {"containers": [container], "restartPolicy": "Never"}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def terminated(code: int, reason: str = "Error", message: str | None = None) -> dict:
    body = {
        "exitCode": code,
        "reason": reason,
        "startedAt": "2026-12-04T08:00:05Z",
        "finishedAt": "2026-12-04T08:04:00Z",
    }
    if message:
        body["message"] = message
    return {"terminated": body}


RUNNING = {"running": {"startedAt": "2026-12-04T08:00:05Z"}}
UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
}
PULL_BACKOFF = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
PREEMPTED = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "PreemptionByScheduler",
    "message": "Preempted in order to admit critical pod",
}
COMPLETE = {"type": "Complete", "status": "True"}
DEADLINE = {
    "type": "Failed",
    "status": "True",
    "reason": "DeadlineExceeded",
    "message": "Job was active longer than specified deadline",
}

CASES = [
    # (what happened, Job, pods, what the watcher remembered, observation, exit code, event kinds)
    ("training", job(), [pod("Running", state=RUNNING)], Seen(), Observation.RUNNING, None, []),
    ("created, no pod yet", job(), [], Seen(), Observation.RUNNING, None, []),
    (
        "finished",
        job(COMPLETE),
        [pod("Succeeded", state=terminated(0, "Completed"))],
        Seen(),
        Observation.SUCCEEDED,
        0,
        [],
    ),
    ("finished and the pod already gone", job(COMPLETE), [], Seen(pod_ran=True), Observation.SUCCEEDED, 0, []),
    ("crashed", job(), [pod("Failed", state=terminated(1))], Seen(), Observation.FAILED, 1, []),
    (
        "out of memory",
        job(),
        [pod("Failed", state=terminated(137, "OOMKilled"))],
        Seen(),
        Observation.OOM_KILLED,
        EXIT_OOM,
        ["oom"],
    ),
    (
        "past the deadline, though it checkpointed",
        job(DEADLINE),
        [pod("Failed", state=terminated(75))],
        Seen(),
        Observation.DEADLINE_EXCEEDED,
        EXIT_DEADLINE,
        ["deadline"],
    ),
    (
        "paused: exits 75 after its checkpoint",
        job(),
        [pod("Failed", state=terminated(75), deleting=True)],
        Seen(stop="pause"),
        Observation.PAUSED,
        75,
        [],
    ),
    (
        "preempted",
        job(),
        [pod("Failed", state=terminated(143), conditions=[PREEMPTED], deleting=True)],
        Seen(),
        Observation.DISRUPTED,
        EXIT_STOPPED,
        ["disrupted"],
    ),
    (
        "evicted",
        job(),
        [pod("Failed", state=terminated(137), reason="Evicted", message="The node was low on resource: memory.")],
        Seen(),
        Observation.DISRUPTED,
        EXIT_STOPPED,
        ["disrupted"],
    ),
    ("drained: the pod vanished after it ran", job(), [], Seen(pod_ran=True), Observation.RUNNING, None, []),
    (
        "the Job deleted under a running trainer",
        None,
        [],
        Seen(pod_ran=True),
        Observation.DISRUPTED,
        EXIT_STOPPED,
        ["disrupted"],
    ),
    (
        "cancelled",
        job(deleting=True),
        [pod("Running", state=RUNNING, deleting=True)],
        Seen(stop="kill", kill_sent=True),
        Observation.CANCELLED,
        None,
        [],
    ),
    (
        "paused before any node took it",
        job(),
        [pod("Pending", node=None, deleting=True)],
        Seen(stop="pause"),
        Observation.PAUSED,
        EXIT_STOPPED,
        [],
    ),
    (
        "no GPU free",
        job(),
        [pod("Pending", node=None, conditions=[UNSCHEDULABLE])],
        Seen(),
        Observation.RUNNING,
        None,
        ["unschedulable"],
    ),
    (
        "image cannot be pulled",
        job(),
        [pod("Pending", state=PULL_BACKOFF)],
        Seen(),
        Observation.RUNNING,
        None,
        ["image"],
    ),
    (
        "no GPU free for longer than the timeout",
        job(),
        [pod("Pending", node=None, conditions=[UNSCHEDULABLE])],
        Seen(stuck_since=(("unschedulable", 0.0),)),
        Observation.STUCK,
        None,
        ["unschedulable", "gave-up"],
    ),
    (
        "running once a GPU freed up",
        job(),
        [pod("Running", state=RUNNING)],
        Seen(said=frozenset({"unschedulable"})),
        Observation.RUNNING,
        None,
        ["running"],
    ),
    ("failed with no exit status", job(), [pod("Failed", state={})], Seen(), Observation.LOST, None, []),
    ("the Job deleted before it ran", None, [], Seen(), Observation.LOST, None, []),
]


@pytest.mark.parametrize("what, job_obj, pods, seen, observation, code, kinds", CASES, ids=[c[0] for c in CASES])
def test_recorded_objects_classify(what, job_obj, pods, seen, observation, code, kinds):
    verdict = classify(job_obj, pods, seen, SETTINGS, now=1000.0)
    assert verdict.observation is observation, (what, verdict)
    assert verdict.exit_code == code
    assert [e.kind for e in verdict.events] == kinds
    assert verdict.ended == (observation is not Observation.RUNNING)


def test_messages_say_what_to_change():
    oom = classify(job(), [pod("Failed", state=terminated(137, "OOMKilled"))], Seen(), SETTINGS, 0.0)
    assert "smaller batch_size" in oom.note and "memory limit 16Gi" in oom.note
    stuck = classify(
        job(),
        [pod("Pending", node=None, conditions=[UNSCHEDULABLE])],
        Seen(stuck_since=(("unschedulable", 0.0),)),
        SETTINGS,
        1000.0,
    )
    assert stuck.error["code"] == "no_gpu_capacity" and "HONE_K8S_UNSCHEDULABLE_TIMEOUT_S" in stuck.error["message"]
    assert "1 nvidia.com/gpu" in stuck.events[0].message
    # The GPUs the pod asks for, not the setting's default: a job of four devices waits for a node with four free
    four = classify(job(), [pod("Pending", node=None, conditions=[UNSCHEDULABLE], gpus=4)], Seen(), SETTINGS, 0.0)
    assert "No node has 4 nvidia.com/gpu free" in four.events[0].message
    pull = classify(job(), [pod("Pending", state=PULL_BACKOFF)], Seen(stuck_since=(("image", 0.0),)), SETTINGS, 301.0)
    assert pull.observation is Observation.STUCK and pull.error["code"] == "image_pull_failed"
    assert "registry.example/hone-trainer:1" in pull.error["message"]
    crash = classify(job(), [pod("Failed", state=terminated(2, "Error", "Traceback ..."))], Seen(), SETTINGS, 0.0)
    assert crash.note == "trainer container exited with code 2 (Error: Traceback ...)"


def test_what_the_classifier_remembers_carries_to_the_next_look():
    preempting = pod("Running", state=RUNNING, conditions=[PREEMPTED])
    first = classify(job(), [preempting], Seen(), SETTINGS, 0.0)
    assert first.observation is Observation.RUNNING and first.seen.pod_ran
    assert first.seen.disrupted.startswith("PreemptionByScheduler")
    gone = classify(job(), [], first.seen, SETTINGS, 1.0)  # the pod vanished: the Job still stands
    assert gone.observation is Observation.RUNNING
    deleted = classify(None, [], first.seen, SETTINGS, 2.0)
    assert deleted.observation is Observation.DISRUPTED and "PreemptionByScheduler" in deleted.note
    # A pending trouble that mends resets its clock.
    waiting = classify(job(), [pod("Pending", node=None, conditions=[UNSCHEDULABLE])], Seen(), SETTINGS, 5.0)
    assert dict(waiting.seen.stuck_since) == {"unschedulable": 5.0}
    mended = classify(job(), [pod("Pending", node="gpu-node-2")], waiting.seen, SETTINGS, 6.0)
    assert mended.seen.stuck_since == ()
    assert dataclasses.replace(mended.seen, stuck_since=()) == mended.seen


def test_the_newest_pod_decides():
    old = pod("Failed", state=terminated(1), created="08:00:01")
    new = pod("Running", state=RUNNING, created="08:03:00")
    assert classify(job(), [new, old], Seen(), SETTINGS, 0.0).observation is Observation.RUNNING
