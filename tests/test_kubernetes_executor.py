"""The Kubernetes executor (HONE_EXECUTOR=kubernetes) and the fake API server it is tested against.

The API server here is a FAKE (tests/fake_kube.py): no real Kubernetes API server (kind, k3s, envtest) can
run in this environment. The fake speaks the Kubernetes REST API over loopback HTTP, so the real `kubernetes`
client library (the one the executor uses in production) does the requests, (de)serialisation and error
handling; the first tests below check the fake follows the API's semantics for the objects Hone uses.
"""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.fake_kube import FakeKube

NS = "hone"


@pytest.fixture
def kube():
    with FakeKube() as fake:
        yield fake


def _job(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": labels or {"app": "t"}},
            "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "t"}}, "spec": {
                "restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}}}}


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
        '"reason":"', '"reason": "')
    with pytest.raises(ApiException) as missing:
        batch.read_namespaced_job("nope", NS)
    assert missing.value.status == 404 and "NotFound" in missing.value.body
    with pytest.raises(ApiException) as invalid:
        batch.create_namespaced_job(NS, _job("Not_A_Name"))
    assert invalid.value.status == 422

    names = lambda items: sorted(i.metadata.name for i in items)  # noqa: E731
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
    patched = batch.patch_namespaced_job("a", NS, {"metadata": {"labels": {"extra": "1"}},
                                                   "status": {"active": 9}})
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

    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"x": "1"}},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"x": "1"}},
                           "template": {"metadata": {"labels": {"x": "1"}},
                                        "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    apps.create_namespaced_deployment(NS, deployment)
    scaled = apps.patch_namespaced_deployment_scale("d", NS, {"spec": {"replicas": 3}})
    assert scaled.spec.replicas == 3
    assert apps.read_namespaced_deployment("d", NS).metadata.generation == 2
    apps.patch_namespaced_deployment_status("d", NS, {"status": {"readyReplicas": 3, "replicas": 3}})
    assert apps.read_namespaced_deployment_status("d", NS).status.ready_replicas == 3

    from kubernetes import watch
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    core.create_namespaced_service(NS, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                                        "spec": {"ports": [{"port": 80}]}})
    kube.update("pods", NS, pod, lambda p: p["metadata"]["labels"].update(seen="yes"))
    events = [(e["type"], e["object"].metadata.labels.get("seen"))
              for e in watch.Watch().stream(core.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=1)]
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
    core.create_namespaced_config_map(NS, {"apiVersion": "v1", "kind": "ConfigMap",
                                           "metadata": {"name": "c", "finalizers": ["example.com/hold"]}})
    core.delete_namespaced_config_map("c", NS)
    assert core.read_namespaced_config_map("c", NS).metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("c", NS, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("c", NS)
    assert gone.value.status == 404
