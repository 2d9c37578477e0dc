"""The Kubernetes executor (HONE_EXECUTOR=kubernetes) and the fake API server it is tested against.

The API server here is a FAKE (tests/fake_kube.py): no real Kubernetes API server (kind, k3s, envtest) can
run in this environment. The fake speaks the Kubernetes REST API over loopback HTTP, so the real `kubernetes`
client library (the one the executor uses in production) does the requests, (de)serialisation and error
handling; the first tests below check the fake follows the API's semantics for the objects Hone uses.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from service.executors import open_executor
from service.executors.kubernetes import EXIT_DEADLINE, EXIT_OOM, EXIT_STOPPED, KubernetesExecutor, build_job, job_name
from service.settings import Settings
from tests.fake_kube import FakeKube
from tests.support import HoneServer, all_events, chat_dataset, chat_line, jsonl, start_python, wait_job

NS = "hone"


@pytest.fixture
def kube():
    with FakeKube() as fake:
        yield fake


def _job(name: str, labels: dict | None = None) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {"app": "t"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "t"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    }


# --- the fake API server's semantics, through the real client ------------------------------------------


def test_fake_api_create_get_list_conflict_and_not_found(kube, tmp_path):
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    created = batch.create_namespaced_job(NS, _job("a", {"app": "t", "tier": "x"}))
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    batch.create_namespaced_job(NS, _job("b", {"app": "t", "tier": "y"}))
    batch.create_namespaced_job("other", _job("c", {"app": "t", "tier": "x"}))
    with pytest.raises(ApiException) as conflict:
        batch.create_namespaced_job(NS, _job("a"))
    assert conflict.value.status == 409 and '"reason": "AlreadyExists"' in conflict.value.body.replace(
        '"reason":"', '"reason": "'
    )
    with pytest.raises(ApiException) as missing:
        batch.read_namespaced_job("nope", NS)
    assert missing.value.status == 404 and "NotFound" in missing.value.body
    with pytest.raises(ApiException) as invalid:
        batch.create_namespaced_job(NS, _job("Not_A_Name"))
    assert invalid.value.status == 422

    def names(items):
        return sorted(i.metadata.name for i in items)

    assert names(batch.list_namespaced_job(NS, label_selector="tier=x").items) == ["a"]
    assert names(batch.list_namespaced_job(NS, label_selector="tier in (x, y)").items) == ["a", "b"]
    assert names(batch.list_namespaced_job(NS, label_selector="app=t,tier!=x").items) == ["b"]
    assert names(batch.list_namespaced_job(NS, label_selector="tier notin (x)").items) == ["b"]
    assert names(batch.list_job_for_all_namespaces(label_selector="tier=x").items) == ["a", "c"]
    assert batch.list_namespaced_job(NS).metadata.resource_version

    # The job controller made one pod per Job, owned by it, labelled as a real API server labels them.
    pods = core.list_namespaced_pod(NS, label_selector="batch.kubernetes.io/job-name=a").items
    assert len(pods) == 1 and pods[0].metadata.owner_references[0].uid == created.metadata.uid
    assert pods[0].status.phase == "Pending"


def test_fake_api_patch_status_log_and_watch(kube):
    api_client = kube.client()
    batch, core, apps = client.BatchV1Api(api_client), client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    batch.create_namespaced_job(NS, _job("a"))
    patched = batch.patch_namespaced_job("a", NS, {"metadata": {"labels": {"extra": "1"}}, "status": {"active": 9}})
    assert patched.metadata.labels["extra"] == "1" and patched.status.active != 9  # status only via /status
    assert batch.patch_namespaced_job_status("a", NS, {"status": {"active": 9}}).status.active == 9

    pod = kube.pods_of_job(NS, "a")[0]["metadata"]["name"]
    kube.run_pod(NS, pod)
    kube.set_pod_log(NS, pod, "line 1\nline 2\n")
    assert core.read_namespaced_pod_log(pod, NS) == "line 1\nline 2\n"
    assert core.read_namespaced_pod_log(pod, NS, tail_lines=1) == "line 2\n"
    kube.succeed_pod(NS, pod)
    job = batch.read_namespaced_job("a", NS)
    assert job.status.succeeded == 1 and {c.type for c in job.status.conditions} >= {"Complete"}

    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "labels": {"x": "1"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"x": "1"}},
            "template": {"metadata": {"labels": {"x": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }
    apps.create_namespaced_deployment(NS, deployment)
    scaled = apps.patch_namespaced_deployment_scale("d", NS, {"spec": {"replicas": 3}})
    assert scaled.spec.replicas == 3
    assert apps.read_namespaced_deployment("d", NS).metadata.generation == 2
    apps.patch_namespaced_deployment_status("d", NS, {"status": {"readyReplicas": 3, "replicas": 3}})
    assert apps.read_namespaced_deployment_status("d", NS).status.ready_replicas == 3

    from kubernetes import watch

    rv = core.list_namespaced_pod(NS).metadata.resource_version
    core.create_namespaced_service(
        NS, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}
    )
    kube.update("pods", NS, pod, lambda p: p["metadata"]["labels"].update(seen="yes"))
    events = [
        (e["type"], e["object"].metadata.labels.get("seen"))
        for e in watch.Watch().stream(core.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=1)
    ]
    assert events == [("MODIFIED", "yes")]


@pytest.mark.parametrize("policy", ["Foreground", "Background", "Orphan", None])
def test_fake_api_delete_propagation(kube, policy):
    api_client = kube.client()
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    batch.create_namespaced_job(NS, _job("a"))
    pod = kube.pods_of_job(NS, "a")[0]["metadata"]["name"]
    kube.run_pod(NS, pod)  # a running pod is deleted gracefully: the kubelet has to stop it first
    batch.delete_namespaced_job("a", NS, propagation_policy=policy)
    if policy in (None, "Orphan"):  # a Job's API default is Orphan
        assert kube.get("jobs", NS, "a") is None
        left = core.read_namespaced_pod(pod, NS)
        assert left.metadata.owner_references is None and left.metadata.deletion_timestamp is None
        return
    left = core.read_namespaced_pod(pod, NS)
    assert left.metadata.deletion_timestamp is not None  # terminating
    if policy == "Foreground":  # the owner waits for its dependents
        job = batch.read_namespaced_job("a", NS)
        assert job.metadata.deletion_timestamp is not None and "foregroundDeletion" in job.metadata.finalizers
    else:
        assert kube.get("jobs", NS, "a") is None
    kube.terminate_pod(NS, pod, 143)  # the kubelet stopped the container
    assert kube.get("pods", NS, pod) is None and kube.get("jobs", NS, "a") is None


def test_fake_api_finalizers_hold_deletion(kube):
    core = client.CoreV1Api(kube.client())
    core.create_namespaced_config_map(
        NS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["example.com/hold"]}}
    )
    core.delete_namespaced_config_map("c", NS)
    assert core.read_namespaced_config_map("c", NS).metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("c", NS, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("c", NS)
    assert gone.value.status == 404


# --- the executor, driven directly ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
JOB_ID = "ftjob-AbCdEfGhIjKlMnOpQrStUvWx"
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _settings(tmp_path: Path, kube: FakeKube | None = None, **extra) -> Settings:
    values = {
        "data_dir": tmp_path,
        "executor": "kubernetes",
        "k8s_namespace": NS,
        "k8s_gpus_per_job": 2,
        "k8s_node_selector": {"hone.dev/gpu": "a100"},
        "k8s_tolerations": [TOLERATION],
        "pause_grace_s": 45,
        "k8s_job_deadline_s": 7200,
        "k8s_job_ttl_s": 600,
        "k8s_secret_name": "hone-secrets",
    }
    if kube is not None:
        values["k8s_kubeconfig"] = kube.write_kubeconfig(tmp_path / "kubeconfig")
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def executor(kube, tmp_path):
    return open_executor(_settings(tmp_path, kube))


def _pod(kube: FakeKube, job: str) -> str:
    return kube.wait_for(lambda: kube.pods_of_job(NS, job))[0]["metadata"]["name"]


def _reap_one(executor, timeout: float = 5):
    exits = FakeKube.wait_for(executor.reap, timeout=timeout)
    assert len(exits) == 1
    return exits[0]


def test_job_object_comes_from_the_shipped_template_and_validates_against_the_openapi_schema(tmp_path):
    settings = _settings(tmp_path)
    assert settings.kubernetes.resolved_templates_dir == REPO / "deploy" / "kubernetes" / "base" / "templates"
    template = yaml.safe_load((settings.kubernetes.resolved_templates_dir / "trainer-job.yaml").read_text())
    kubernetes_validate.validate(template, "1.30", strict=True)
    kustomization = REPO / "deploy" / "kubernetes" / "base" / "kustomization.yaml"
    if kustomization.exists():  # the kustomize base ships this same file to the control plane
        assert "templates/trainer-job.yaml" in kustomization.read_text()

    job = build_job(settings, JOB_ID, 3, "s3://bucket/jobs/x/spec.json", project_id="proj_123")
    kubernetes_validate.validate(job, "1.30", strict=True)
    assert job["metadata"]["name"] == job_name(JOB_ID, 3) and len(job["metadata"]["name"]) <= 63
    assert job["metadata"]["name"].startswith("hone-train-ftjob-abcdefghijklmnopqrstuvwx-")
    assert job_name(JOB_ID, 3) != job_name(JOB_ID.lower(), 3)  # ids differing in case only stay apart
    labels = {
        "app.kubernetes.io/name": "hone-trainer",
        "hone.dev/job-id": JOB_ID,
        "hone.dev/project-id": "proj_123",
        "hone.dev/attempt": "3",
    }
    assert labels.items() <= job["metadata"]["labels"].items()
    assert labels.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (0, 7200, 600)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == {"hone.dev/gpu": "a100"}
    assert pod["tolerations"] == [TOLERATION]
    (container,) = pod["containers"]
    assert container["image"] == settings.kubernetes.k8s_trainer_image
    assert container["command"] == ["python", "-m", "trainer"]
    assert container["args"] == ["--spec", "s3://bucket/jobs/x/spec.json"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HONE_JOB_ID"] == JOB_ID and env["HONE_JOB_ATTEMPT"] == "3"
    assert container["envFrom"] == [{"secretRef": {"name": "hone-secrets"}}]  # by reference, no values
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"

    cpu = build_job(
        _settings(tmp_path, k8s_gpus_per_job=0, k8s_node_selector={}, k8s_tolerations=[]), JOB_ID, 1, "file:///x"
    )
    kubernetes_validate.validate(cpu, "1.30", strict=True)
    assert "nvidia.com/gpu" not in json.dumps(cpu) and "nodeSelector" not in cpu["spec"]["template"]["spec"]

    # An edited template (as a ConfigMap change would make it) is what the next Job is built from.
    custom = tmp_path / "templates"
    custom.mkdir()
    template["spec"]["template"]["spec"]["priorityClassName"] = "training"
    (custom / "trainer-job.yaml").write_text(yaml.safe_dump(template))
    edited = build_job(_settings(tmp_path, k8s_templates_dir=custom), JOB_ID, 1, "file:///x")
    assert edited["spec"]["template"]["spec"]["priorityClassName"] == "training"


def test_success_creates_a_labelled_job_and_reaps_exit_0_with_the_pod_log(kube, executor):
    assert isinstance(executor, KubernetesExecutor) and executor.slots() == 8
    ref = executor.launch(JOB_ID, 1, "file:///spec.json")
    name = job_name(JOB_ID, 1)
    assert ref == f"k8s:{NS}/{name}:1" and executor.owns(ref) and not executor.owns("k8s:other/x:1")
    assert not executor.owns("local:host:1:1") and executor.running() == {JOB_ID: ref}
    job = kube.get("jobs", NS, name)
    assert job["metadata"]["labels"]["hone.dev/job-id"] == JOB_ID
    kubernetes_validate.validate(job, "1.30", strict=False)  # as stored, server-set fields included

    pod = _pod(kube, name)
    assert executor.reap() == []  # Pending: nothing ended
    assert not executor.log_so_far(JOB_ID)  # nothing printed yet
    kube.run_pod(NS, pod)
    assert executor.reap() == []
    kube.set_pod_log(NS, pod, "loading\n")
    assert executor.log_so_far(JOB_ID) == b"loading\n"  # while it runs: the pod's log so far
    kube.append_pod_log(NS, pod, "warming up\n")
    assert executor.log_so_far(JOB_ID) == b"loading\nwarming up\n"
    kube.succeed_pod(NS, pod, log='{"msg": "step 1"}\n')  # one JSON line: must come back verbatim
    ended = _reap_one(executor)
    assert (ended.job_id, ended.ref, ended.returncode) == (JOB_ID, ref, 0)
    assert ended.log == b'{"msg": "step 1"}\n'
    assert kube.get("pods", NS, pod)["metadata"].get("finalizers") is None  # released, kept for kubectl logs
    assert executor.running() == {} and executor.reap() == []
    assert executor.events() == []


def test_failure_reports_the_container_exit_code(kube, executor):
    executor.launch(JOB_ID, 2, "file:///spec.json")
    pod = _pod(kube, job_name(JOB_ID, 2))
    kube.run_pod(NS, pod)
    kube.fail_pod(NS, pod, exit_code=1, log="Traceback: boom\n")
    ended = _reap_one(executor)
    assert ended.returncode == 1 and ended.log.startswith(b"Traceback: boom\n")
    assert b"exited with code 1" in ended.log


def test_oomkilled_is_a_failure_with_a_message_that_says_what_to_change(kube, executor):
    executor.launch(JOB_ID, 1, "file:///spec.json")
    pod = _pod(kube, job_name(JOB_ID, 1))
    kube.run_pod(NS, pod)
    kube.oom_kill_pod(NS, pod, log="loading\n")
    ended = _reap_one(executor)
    assert ended.returncode == EXIT_OOM == 137
    assert b"OOMKilled: the trainer ran out of memory; use a smaller batch_size" in ended.log
    ((job_id, level, message),) = executor.events()
    assert job_id == JOB_ID and level == "error" and message.startswith("OOMKilled: the trainer ran out of memory")


@pytest.mark.parametrize("how", ["preempted", "evicted", "pod deleted", "pod vanished"])
def test_preemption_and_eviction_resume_from_checkpoint_without_counting_a_crash(kube, executor, how):
    executor.launch(JOB_ID, 1, "file:///spec.json")
    pod = _pod(kube, job_name(JOB_ID, 1))
    kube.run_pod(NS, pod)
    assert executor.reap() == []
    if how == "preempted":  # the trainer got SIGTERM, checkpointed and exited 75
        kube.preempt_pod(NS, pod, exit_code=75, log="checkpoint saved\n")
    elif how == "evicted":  # the kubelet killed it (137) under node memory pressure
        kube.evict_pod(NS, pod)
    elif how == "pod deleted":  # kubectl drain / delete pod: graceful deletion, SIGTERM, exit 75
        client.CoreV1Api(kube.client()).delete_namespaced_pod(pod, NS)
        assert kube.get("pods", NS, pod)["metadata"]["deletionTimestamp"]
        assert executor.reap() == []  # still terminating
        kube.terminate_pod(NS, pod, 143)
    else:  # gone before the executor saw how it ended (someone removed its finalizer and force-deleted it)
        kube.update("pods", NS, pod, lambda p: p["metadata"].pop("finalizers"))
        kube.delete("pods", NS, pod, grace=0)
    ended = _reap_one(executor)
    assert ended.returncode == EXIT_STOPPED  # the scheduler requeues to resume, failures unchanged
    ((job_id, level, message),) = executor.events()
    assert job_id == JOB_ID and level == "warn" and "resumes from its last checkpoint" in message
    if how in ("preempted", "evicted"):
        assert how in message


def test_unschedulable_and_image_pull_failures_are_events_not_exits(kube, executor):
    executor.launch(JOB_ID, 1, "file:///spec.json")
    pod = _pod(kube, job_name(JOB_ID, 1))
    kube.unschedulable_pod(NS, pod)
    for _ in range(3):
        assert executor.reap() == []
    ((job_id, level, message),) = executor.events()  # once, however many ticks see it
    assert job_id == JOB_ID and level == "warn"
    assert "cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in message
    assert "2 nvidia.com/gpu" in message and "hone.dev/gpu" in message

    kube.image_pull_backoff(NS, pod, reason="ErrImagePull")
    assert executor.reap() == []
    kube.image_pull_backoff(NS, pod)
    assert executor.reap() == []
    ((_, level, message),) = executor.events()
    assert level == "error" and "ghcr.io/hone-dev/hone-trainer:0.1.0 cannot be pulled (ErrImagePull" in message
    assert "HONE_K8S_TRAINER_IMAGE" in message

    kube.run_pod(NS, pod)
    assert executor.reap() == []
    ((_, level, message),) = executor.events()
    assert level == "info" and "is running on node gpu-node-1" in message
    assert executor.running() == {JOB_ID: f"k8s:{NS}/{job_name(JOB_ID, 1)}:1"}


@pytest.mark.parametrize("trouble", ["unschedulable", "image"])
def test_a_pod_stuck_past_its_timeout_ends_the_run_with_an_error_no_retry_mends(kube, tmp_path, trouble):
    executor = open_executor(_settings(tmp_path, kube, k8s_unschedulable_timeout_s=0.5, k8s_image_pull_timeout_s=0.5))
    executor.launch(JOB_ID, 1, "file:///spec.json")
    pod = _pod(kube, job_name(JOB_ID, 1))
    if trouble == "unschedulable":
        kube.unschedulable_pod(NS, pod)
    else:
        kube.image_pull_backoff(NS, pod)
    assert executor.reap() == []  # still within its time
    ended = _reap_one(executor)
    code, setting = (
        ("no_gpu_capacity", "HONE_K8S_UNSCHEDULABLE_TIMEOUT_S")
        if trouble == "unschedulable"
        else ("image_pull_failed", "HONE_K8S_IMAGE_PULL_TIMEOUT_S")
    )
    assert ended.error["code"] == code and f"Gave up after 0.5 s ({setting})" in ended.error["message"]
    assert ("Insufficient nvidia.com/gpu" if trouble == "unschedulable" else "cannot be pulled") in ended.error[
        "message"
    ]
    assert ended.error["message"] in ended.log.decode()
    # The Job and its pod are deleted (the pod's finalizer released first), and nothing is tracked any more.
    FakeKube.wait_for(lambda: not kube.list("jobs", NS) and not kube.list("pods", NS))
    assert executor.running() == {}
    assert [level for _, level, _ in executor.events()][-1] == "error"


def test_pausing_a_pod_that_no_node_took_ends_the_run_at_once(kube, executor):
    executor.launch(JOB_ID, 1, "file:///spec.json")
    pod = _pod(kube, job_name(JOB_ID, 1))
    kube.unschedulable_pod(NS, pod)
    executor.stop(JOB_ID, kill=False)
    assert _reap_one(executor).returncode == EXIT_STOPPED
    assert kube.get("pods", NS, pod) is None


def test_pause_deletes_the_pod_gracefully_and_the_checkpointed_exit_comes_back(kube, executor):
    executor.launch(JOB_ID, 1, "file:///spec.json")
    name = job_name(JOB_ID, 1)
    pod = _pod(kube, name)
    kube.run_pod(NS, pod)
    executor.stop(JOB_ID, kill=False)
    executor.stop(JOB_ID, kill=False)  # the scheduler may ask again: one deletion
    terminating = kube.get("pods", NS, pod)["metadata"]
    assert terminating["deletionTimestamp"] and terminating["deletionGracePeriodSeconds"] == 45
    assert kube.get("jobs", NS, name) is not None
    assert executor.reap() == []  # the trainer is still writing its checkpoint
    kube.terminate_pod(NS, pod, EXIT_STOPPED, log="paused at step 7\n")
    assert kube.get("pods", NS, pod)["status"]["phase"] == "Failed"  # kept (finalizer) until reaped
    ended = _reap_one(executor)
    assert ended.returncode == EXIT_STOPPED and ended.log.startswith(b"paused at step 7\n")
    assert kube.get("pods", NS, pod) is None  # released: the deletion completes


def test_cancel_deletes_the_job_with_foreground_propagation(kube, executor):
    executor.launch(JOB_ID, 1, "file:///spec.json")
    name = job_name(JOB_ID, 1)
    pod = _pod(kube, name)
    kube.run_pod(NS, pod)
    deletions_before = len(kube.requests)
    seen = []
    kube.add_listener(
        lambda kind, plural, obj: seen.append(
            (kind, plural, obj["metadata"]["name"], obj["metadata"].get("finalizers"))
        )
    )
    executor.stop(JOB_ID, kill=True)
    assert ("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}") in kube.requests[deletions_before:]
    assert ("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod}") in kube.requests[deletions_before:]
    # Foreground: the Job waits for its pod (foregroundDeletion finalizer); the pod waits for the executor to
    # have read its end (the executor's finalizer); then both go.
    assert ("MODIFIED", "jobs", name, ["foregroundDeletion"]) in seen
    assert kube.get("pods", NS, pod)["metadata"]["deletionTimestamp"]
    ended = _reap_one(executor)
    assert ended.returncode is None and executor.running() == {}
    assert [s[:3] for s in seen if s[0] == "DELETED"] == [("DELETED", "pods", pod), ("DELETED", "jobs", name)]
    assert kube.get("jobs", NS, name) is None and kube.pods_of_job(NS, name) == []


def test_deadline_exceeded_is_a_failure_even_though_the_trainer_checkpointed(kube, executor):
    executor.launch(JOB_ID, 1, "file:///spec.json")
    name = job_name(JOB_ID, 1)
    kube.run_pod(NS, _pod(kube, name))
    kube.set_job_failed(NS, name, "DeadlineExceeded")
    ended = _reap_one(executor)
    assert ended.returncode == EXIT_DEADLINE and b"activeDeadlineSeconds (7200 s" in ended.log
    assert [e[1] for e in executor.events()] == ["error"]


def test_control_plane_restart_adopts_runs_by_label(kube, tmp_path):
    settings = _settings(tmp_path, kube)
    before = KubernetesExecutor(settings)
    running_ref = before.launch(JOB_ID, 1, "file:///a.json")
    finished_ref = before.launch("ftjob-second", 4, "file:///b.json")
    running_pod, finished_pod = _pod(kube, job_name(JOB_ID, 1)), _pod(kube, job_name("ftjob-second", 4))
    kube.run_pod(NS, running_pod)
    kube.run_pod(NS, finished_pod)
    del before  # the control plane restarts; the Jobs go on

    kube.succeed_pod(NS, finished_pod, log="done while nobody watched\n")
    after = KubernetesExecutor(settings)
    assert after.adopt(JOB_ID, running_ref) and after.adopt("ftjob-second", finished_ref)
    assert not after.adopt(JOB_ID, f"k8s:{NS}/{job_name(JOB_ID, 7)}:7")  # no such Job
    assert not after.adopt("ftjob-other", running_ref)  # the labels must name the job
    assert not after.adopt(JOB_ID, "local:host:1:1")
    assert after.running() == {JOB_ID: running_ref, "ftjob-second": finished_ref}
    ended = _reap_one(after)
    assert (ended.job_id, ended.returncode, ended.log) == ("ftjob-second", 0, b"done while nobody watched\n")
    kube.fail_pod(NS, running_pod, exit_code=1)
    assert _reap_one(after).returncode == 1


def test_without_patch_on_pods_new_pods_go_without_the_finalizer(kube, executor):
    kube.forbidden.add(("PATCH", "pods"))  # a Role without `patch` on pods
    executor.launch(JOB_ID, 1, "file:///spec.json")
    pod = _pod(kube, job_name(JOB_ID, 1))
    kube.succeed_pod(NS, pod, log="ok\n")
    assert _reap_one(executor).returncode == 0  # the exit still comes back
    executor.launch(JOB_ID, 2, "file:///spec.json")
    assert "finalizers" not in kube.get("jobs", NS, job_name(JOB_ID, 2))["spec"]["template"]["metadata"]
    assert not kube.get("pods", NS, _pod(kube, job_name(JOB_ID, 2)))["metadata"].get("finalizers")


def test_ended_pods_nobody_tracks_are_released_so_their_deletion_completes(kube, tmp_path):
    settings = _settings(tmp_path, kube)
    KubernetesExecutor(settings).launch(JOB_ID, 1, "file:///a.json")  # then the control plane went away
    name = job_name(JOB_ID, 1)
    pod = _pod(kube, name)
    kube.run_pod(NS, pod)
    kube.delete("jobs", NS, name, propagation="Foreground")  # e.g. its TTL ran out, or kubectl delete
    kube.terminate_pod(NS, pod, 143)
    assert kube.get("pods", NS, pod)["metadata"]["finalizers"] == ["hone.dev/trainer-exit"]
    assert KubernetesExecutor(settings).reap() == []  # the job was not adopted: nothing to report, but...
    assert kube.get("pods", NS, pod) is None and kube.get("jobs", NS, name) is None  # ...nothing is stuck


def test_an_unreachable_api_server_is_an_oserror_at_launch_and_nothing_ends(kube, tmp_path):
    executor = KubernetesExecutor(_settings(tmp_path, kube))
    executor.launch(JOB_ID, 1, "file:///spec.json")
    kube.stop()
    assert executor.reap() == []  # a blip in the API is not a vanished trainer
    with pytest.raises(OSError):
        executor.launch("ftjob-x", 1, "file:///spec.json")


# --- through the real control plane: a kubelet thread runs the trainer pods as local processes -------------


class LocalKubelet:
    """Plays the node: runs each new trainer pod's container as `python -m trainer --spec ...` on this machine
    with the pod's env, reports it Running, sends SIGTERM when the pod is deleted (or preempted), and marks the
    pod Succeeded/Failed with the process's real exit code and output as the pod log."""

    def __init__(self, kube: FakeKube, log_dir: Path, hold: set[str] | None = None, bad_image: bool = False):
        self.kube, self.log_dir, self.hold = kube, log_dir, hold if hold is not None else set()
        self.bad_image = bad_image  # every pod's image fails to pull
        self.procs: dict[str, tuple[Any, Path]] = {}  # Popen-like
        self.preempting: set[str] = set()
        self.started: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LocalKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()

    def preempt(self, pod: str) -> None:
        """The scheduler preempts the pod for a higher-priority one: DisruptionTarget, then SIGTERM."""
        self.kube.update(
            "pods",
            NS,
            pod,
            lambda p: self.kube._set_condition(
                p["status"],
                "DisruptionTarget",
                "True",
                "PreemptionByScheduler",
                "default-scheduler: preempting to accommodate a higher priority pod",
            ),
        )
        self.preempting.add(pod)
        self.procs[pod][0].send_signal(signal.SIGTERM)

    def _start(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        (container,) = pod["spec"]["containers"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HONE_")}
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        out = self.log_dir / f"{name}.log"
        out.unlink(missing_ok=True)
        # Warm, as a local trainer starts: a pod's container is a fresh process either way.
        proc = start_python([sys.executable, *container["command"][1:], *container["args"]], env, out)
        self.procs[name] = (proc, out)
        self.started.append(name)
        self.kube.run_pod(NS, name)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            for pod in self.kube.list("pods", NS):
                name, meta = pod["metadata"]["name"], pod["metadata"]
                if name not in self.procs:
                    if meta.get("deletionTimestamp") or pod["status"].get("phase") != "Pending":
                        continue
                    if self.bad_image:
                        if not pod["status"].get("containerStatuses"):
                            self.kube.image_pull_backoff(NS, name)
                        continue
                    if any(name.startswith(prefix) for prefix in self.hold):
                        if pod["status"].get("conditions", []) == []:
                            self.kube.unschedulable_pod(NS, name)
                        continue
                    self._start(pod)
                    continue
                proc, out = self.procs[name]
                if pod["status"].get("phase") in ("Succeeded", "Failed"):
                    continue
                if meta.get("deletionTimestamp") and proc.poll() is None and name not in self.preempting:
                    self.preempting.add(name)
                    proc.send_signal(signal.SIGTERM)
                code = proc.poll()
                if code is not None:
                    disruption = None
                    if any(c["type"] == "DisruptionTarget" for c in pod["status"].get("conditions", [])):
                        disruption = (
                            "PreemptionByScheduler",
                            "default-scheduler: preempting to accommodate a higher priority pod",
                        )
                    self.kube.terminate_pod(NS, name, code, log=out.read_text(errors="replace"), disruption=disruption)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One fake cluster and one control plane (HONE_EXECUTOR=kubernetes) for the tests below."""
    tmp_path = tmp_path_factory.mktemp("k8s-control-plane")
    with FakeKube() as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        env = {
            "HONE_EXECUTOR": "kubernetes",
            "HONE_K8S_KUBECONFIG": str(kubeconfig),
            "HONE_K8S_GPUS_PER_JOB": "0",
            "HONE_K8S_NAMESPACE": NS,
            "HONE_K8S_MAX_PARALLEL_JOBS": "2",
            "HONE_K8S_IMAGE_PULL_TIMEOUT_S": "3",
        }
        server = HoneServer(tmp_path / "srv", env)
        try:
            yield kube, server
        finally:
            server.stop()


def test_a_job_trains_to_succeeded_through_the_kubernetes_executor(cluster, tmp_path):
    kube, k8s_server = cluster
    project = k8s_server.new_project("k8s")
    client_ = project.openai()
    train = client_.files.create(file=("train.jsonl", chat_dataset(12)), purpose="fine-tune")
    with LocalKubelet(kube, tmp_path, hold={"hone-train-"}) as kubelet:
        job = client_.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=train.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        )
        # No GPU free at first: the job says so, and runs once a node has one.
        FakeKube.wait_for(
            lambda: any("cannot be scheduled" in e.message for e in all_events(client_, job.id)), timeout=20
        )
        kubelet.hold.clear()
        done = wait_job(client_, job.id, lambda j: j.status == "succeeded", timeout=120)
        assert done.fine_tuned_model and done.trained_tokens
        (k8s_job,) = kube.list("jobs", NS, f"hone.dev/job-id={job.id}")
        labels = k8s_job["metadata"]["labels"]
        assert labels["hone.dev/job-id"] == job.id and labels["hone.dev/project-id"] == project.project_id
        assert labels["hone.dev/attempt"] == "1"
        messages = [e.message for e in all_events(client_, job.id)]
        assert any("Insufficient nvidia.com/gpu" in m for m in messages)
        assert any("is running on node" in m for m in messages)
        # The pod's log (the trainer's own JSON lines) is uploaded as the attempt's log once the run is reaped.
        log = FakeKube.wait_for(
            lambda: [
                p for p in Path(k8s_server.data_dir).rglob("attempt-1.log") if job.id in p.parts and p.stat().st_size
            ],
            timeout=10,
        )[0]
        assert f'"job_id": "{job.id}"' in log.read_text()


def test_preempted_trainer_resumes_from_its_checkpoint_through_the_control_plane(cluster, tmp_path):
    kube, k8s_server = cluster
    client_ = k8s_server.new_project("k8s-preempt").openai()
    data = jsonl([chat_line(f"Add {i} and {i} please" + " now" * 12, f"The sum is {2 * i}.") for i in range(30)])
    train = client_.files.create(file=("train.jsonl", data), purpose="fine-tune")
    with LocalKubelet(kube, tmp_path) as kubelet:
        job = client_.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=train.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}},
        )
        wait_job(client_, job.id, lambda j: j.status == "running" and (j.trained_tokens or 0) > 0, poll=0.05)
        kubelet.preempt(kubelet.started[0])
        done = wait_job(client_, job.id, lambda j: j.status == "succeeded", timeout=120)
        FakeKube.wait_for(
            lambda: (
                not kube.list("pods", NS, f"hone.dev/job-id={job.id},hone.dev/attempt=2")[0]["metadata"].get(
                    "finalizers"
                )
            ),
            timeout=20,
        )  # reaped
    assert len(kubelet.started) == 2  # a second Job (attempt 2) resumed
    assert sorted(
        j["metadata"]["labels"]["hone.dev/attempt"] for j in kube.list("jobs", NS, f"hone.dev/job-id={job.id}")
    ) == ["1", "2"]
    messages = [e.message for e in all_events(client_, job.id)]
    assert any("was preempted" in m and "resumes from its last checkpoint" in m for m in messages), messages
    assert any(m.startswith("Trainer was stopped; requeued to resume from checkpoint step") for m in messages)
    assert any(m.startswith("Resumed from checkpoint at step") for m in messages), messages
    assert not any("retrying" in m for m in messages)  # not counted as a crash
    assert done.fine_tuned_model


def test_a_trainer_image_that_cannot_be_pulled_fails_the_job_once_with_an_error_to_act_on(cluster, tmp_path):
    kube, k8s_server = cluster
    client_ = k8s_server.new_project("k8s-image").openai()
    train = client_.files.create(file=("train.jsonl", chat_dataset(12)), purpose="fine-tune")
    with LocalKubelet(kube, tmp_path, bad_image=True):
        job = client_.fine_tuning.jobs.create(model="hone-tiny", training_file=train.id)
        failed = wait_job(client_, job.id, lambda j: j.status == "failed", timeout=60)
    assert failed.error.code == "image_pull_failed"
    assert "cannot be pulled (ImagePullBackOff" in failed.error.message
    assert "HONE_K8S_IMAGE_PULL_TIMEOUT_S" in failed.error.message
    assert len(kube.list("jobs", NS, f"hone.dev/job-id={job.id}")) == 0  # deleted, and no second attempt made
    messages = [e.message for e in all_events(client_, job.id)]
    assert not any("retrying" in m for m in messages)
    assert any("cannot be pulled" in m and "waits" in m for m in messages)


def test_the_shipped_role_grants_what_the_executor_needs():
    from service.executors.kubernetes import REQUIRED_RBAC

    documents = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "base" / "rbac.yaml").read_text()))
    (role,) = [d for d in documents if d and d.get("kind") == "Role"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    missing = {
        key: verbs - granted.get(key, set()) for key, verbs in REQUIRED_RBAC.items() if verbs - granted.get(key, set())
    }
    assert not missing
