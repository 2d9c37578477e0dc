"""JobSet and Kubeflow Trainer TrainJob controllers for the fake Kubernetes API server (tests/fake_kube.py).

No real cluster, JobSet controller or Kubeflow Trainer can run here, so `install(kube)` registers their custom
resources (served at /apis/{group}/{version}/namespaces/{ns}/{plural}, which the real client's CustomObjectsApi
calls) and plays their controllers, following what those projects' controllers do, for what Hone relies on:

- every JobSet or TrainJob created is first validated against its project's CRD schema (tests/crds/, strictly:
  unknown fields fail), as a real API server with fieldValidation=Strict; an invalid one is a 422 Invalid;
- a JobSet (jobset v0.12 semantics) gets one child batch/v1 Job per replicated Job replica, `{jobset}-{rjob}-{i}`,
  labelled `jobset.sigs.k8s.io/jobset-name` (Job and pods), with the pods' subdomain set to the JobSet's name and a
  headless Service of that name (network.enableDNSHostnames), and an ownerReference to the JobSet; the fake Job
  controller makes the pods (Indexed: one per completion index). A failed child Job fails the JobSet (condition
  Failed, reason FailedJobs; with failurePolicy.maxRestarts 0 nothing restarts); all child Jobs complete ->
  condition Completed;
- a TrainJob (Kubeflow Trainer v2.3 semantics) must reference a TrainingRuntime in its namespace or a
  ClusterTrainingRuntime (else 422, as its webhook answers); the controller makes a JobSet of the TrainJob's name
  from the runtime's template, with numNodes pods of the trainer Job, the trainer's image, command, args and env,
  PET_NNODES / PET_NPROC_PER_NODE / PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT, resourcesPerNode on the
  `node` container, and the runtime patches' labels, annotations, node selector and tolerations; its conditions
  follow the JobSet's (Complete or Failed). activeDeadlineSeconds is not enforced (tests set the condition).
"""

from __future__ import annotations

import copy

from tests.crd_schema import errors
from tests.fake_kube import ApiError, FakeKube, Resource, _condition, now_rfc3339

JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
JOBSETS = Resource("jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet", status_subresource=True)
TRAINJOBS = Resource(
    "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", status_subresource=True, name_rule="label"
)
RUNTIMES = Resource("trainer.kubeflow.org", "v1alpha1", "trainingruntimes", "TrainingRuntime")
CLUSTER_RUNTIMES = Resource(
    "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", "ClusterTrainingRuntime", namespaced=False
)


def install(kube: FakeKube) -> FakeKube:
    for resource in (JOBSETS, TRAINJOBS, RUNTIMES, CLUSTER_RUNTIMES):
        kube.register(resource)
    kube.on_create.setdefault("jobsets", []).append(_jobset_created)
    kube.on_create.setdefault("trainjobs", []).append(_trainjob_created)
    kube.on_job_status.append(_job_changed)
    return kube


def _owner_ref(obj: dict) -> dict:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _refuse(kube: FakeKube, resource: Resource, obj: dict, message: str) -> None:
    """Answers 422 for an object the API server (its schema, or a webhook) would not have stored."""
    kube._objects.pop((resource.qualified, obj["metadata"]["namespace"], obj["metadata"]["name"]), None)
    raise ApiError(422, "Invalid", f'{obj["kind"]} "{obj["metadata"]["name"]}" is invalid: {message}')


def _validate(kube: FakeKube, resource: Resource, obj: dict) -> None:
    found = errors({k: v for k, v in obj.items() if k != "status"})
    if found:
        _refuse(kube, resource, obj, "; ".join(found))


def _jobset_created(kube: FakeKube, jobset: dict) -> None:
    _validate(kube, JOBSETS, jobset)
    namespace, name = jobset["metadata"]["namespace"], jobset["metadata"]["name"]
    spec = jobset["spec"]
    network = spec.setdefault("network", {})
    network.setdefault("enableDNSHostnames", True)  # the JobSet webhook's defaults
    network.setdefault("publishNotReadyAddresses", True)
    subdomain = network.get("subdomain") or name
    if network["enableDNSHostnames"]:
        kube._create(
            kube._resource("services"),
            namespace,
            {
                "metadata": {"name": subdomain, "ownerReferences": [_owner_ref(jobset)]},
                "spec": {"clusterIP": "None", "selector": {JOBSET_NAME: name}, "publishNotReadyAddresses": True},
            },
        )
    for rjob in spec.get("replicatedJobs") or []:
        for index in range(rjob.get("replicas", 1)):
            job = copy.deepcopy(rjob["template"])
            labels = {
                JOBSET_NAME: name,
                "jobset.sigs.k8s.io/replicatedjob-name": rjob["name"],
                "jobset.sigs.k8s.io/job-index": str(index),
            }
            meta = job.setdefault("metadata", {})
            meta.update(name=f"{name}-{rjob['name']}-{index}", ownerReferences=[_owner_ref(jobset)])
            meta["labels"] = {**meta.get("labels", {}), **labels}
            pod_template = job["spec"].setdefault("template", {})
            pod_meta = pod_template.setdefault("metadata", {})
            pod_meta["labels"] = {**pod_meta.get("labels", {}), **labels}
            pod_spec = pod_template.setdefault("spec", {})
            pod_spec.setdefault("restartPolicy", "OnFailure")  # the webhook's default
            if network["enableDNSHostnames"]:
                pod_spec["subdomain"] = subdomain
            kube._create(kube._resource("jobs"), namespace, job)


def _set_conditions(kube: FakeKube, resource: Resource, obj: dict, *conditions: dict) -> None:
    status = obj.setdefault("status", {})
    kinds = {c["type"] for c in conditions}
    status["conditions"] = [c for c in status.get("conditions") or [] if c["type"] not in kinds] + list(conditions)
    obj["metadata"]["resourceVersion"] = kube._next_rv()
    kube._record("MODIFIED", resource, obj)


def _finished(obj: dict, *types: str) -> bool:
    return any(
        c.get("type") in types and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or []
    )


def _job_changed(kube: FakeKube, job: dict) -> None:
    refs = [r for r in job["metadata"].get("ownerReferences") or [] if r.get("kind") == "JobSet"]
    if not refs:
        return
    namespace = job["metadata"]["namespace"]
    jobset = kube._objects.get(("jobsets.jobset.x-k8s.io", namespace, refs[0]["name"]))
    if jobset is None or _finished(jobset, "Completed", "Failed"):
        return
    now = now_rfc3339()
    children = [
        o
        for (q, ns, _), o in kube._objects.items()
        if q == "jobs.batch"
        and ns == namespace
        and any(r.get("uid") == jobset["metadata"]["uid"] for r in o["metadata"].get("ownerReferences") or [])
    ]
    if _finished(job, "Failed"):
        # failurePolicy maxRestarts 0 (and no rules): the first failed Job fails the JobSet, nothing restarts
        _set_conditions(
            kube,
            JOBSETS,
            jobset,
            _condition("Failed", "FailedJobs", "jobset failed due to one or more job failures", now),
        )
    elif children and all(_finished(c, "Complete") for c in children):
        _set_conditions(
            kube, JOBSETS, jobset, _condition("Completed", "AllJobsCompleted", "jobset completed successfully", now)
        )
    else:
        return
    _jobset_changed(kube, jobset)


def _jobset_changed(kube: FakeKube, jobset: dict) -> None:
    refs = [r for r in jobset["metadata"].get("ownerReferences") or [] if r.get("kind") == "TrainJob"]
    if not refs:
        return
    trainjob = kube._objects.get(("trainjobs.trainer.kubeflow.org", jobset["metadata"]["namespace"], refs[0]["name"]))
    if trainjob is None or _finished(trainjob, "Complete", "Failed"):
        return
    now = now_rfc3339()
    if _finished(jobset, "Failed"):
        _set_conditions(
            kube,
            TRAINJOBS,
            trainjob,
            _condition("Failed", "JobsFailed", "jobset failed due to one or more job failures", now),
        )
    elif _finished(jobset, "Completed"):
        _set_conditions(
            kube, TRAINJOBS, trainjob, _condition("Complete", "JobsCompleted", "TrainJob is completed", now)
        )


def _trainjob_created(kube: FakeKube, trainjob: dict) -> None:
    _validate(kube, TRAINJOBS, trainjob)
    namespace, name = trainjob["metadata"]["namespace"], trainjob["metadata"]["name"]
    spec = trainjob["spec"]
    ref = spec["runtimeRef"]
    if ref.get("kind", "ClusterTrainingRuntime") == "TrainingRuntime":
        runtime = kube._objects.get(("trainingruntimes.trainer.kubeflow.org", namespace, ref["name"]))
    else:
        runtime = kube._objects.get(("clustertrainingruntimes.trainer.kubeflow.org", "", ref["name"]))
    if runtime is None:  # what the Kubeflow Trainer admission webhook answers
        _refuse(kube, TRAINJOBS, trainjob, f"spec.runtimeRef: {ref.get('kind')} {ref['name']} not found")
        return
    template = copy.deepcopy(runtime["spec"]["template"])
    trainer = spec.get("trainer") or {}
    nodes = trainer.get("numNodes", runtime["spec"].get("mlPolicy", {}).get("numNodes", 1))
    patches = [
        p["trainingRuntimeSpec"]["template"] for p in spec.get("runtimePatches") or [] if p.get("trainingRuntimeSpec")
    ]
    for rjob in template["spec"]["replicatedJobs"]:
        job_meta = rjob["template"].setdefault("metadata", {})
        job_spec = rjob["template"]["spec"]
        pod = job_spec["template"]
        for patch in patches:
            for rpatch in (patch.get("spec") or {}).get("replicatedJobs") or []:
                if rpatch["name"] != rjob["name"]:
                    continue
                job_meta["labels"] = {
                    **job_meta.get("labels", {}),
                    **((rpatch["template"].get("metadata") or {}).get("labels") or {}),
                }
                pod_patch = (rpatch["template"].get("spec") or {}).get("template") or {}
                pod_meta = pod.setdefault("metadata", {})
                for part in ("labels", "annotations"):
                    pod_meta[part] = {**pod_meta.get(part, {}), **((pod_patch.get("metadata") or {}).get(part) or {})}
                for field in ("nodeSelector", "tolerations"):
                    if (pod_patch.get("spec") or {}).get(field):
                        pod["spec"][field] = pod_patch["spec"][field]
        if job_meta.get("labels", {}).get("trainer.kubeflow.org/trainjob-ancestor-step") != "trainer":
            continue
        job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
        container = next(c for c in pod["spec"]["containers"] if c["name"] == "node")
        for field in ("image", "command", "args"):
            if field in trainer:
                container[field] = trainer[field]
        if "resourcesPerNode" in trainer:
            container["resources"] = trainer["resourcesPerNode"]
        pet = {
            "PET_NNODES": str(nodes),
            "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", "auto")),
            "PET_MASTER_ADDR": f"{name}-node-0-0.{name}",
            "PET_MASTER_PORT": "29400",
        }
        container["env"] = (
            [e for e in container.get("env") or [] if e["name"] not in pet]
            + list(trainer.get("env") or [])
            + [{"name": k, "value": v} for k, v in pet.items()]
            + [
                {
                    "name": "PET_NODE_RANK",
                    "valueFrom": {
                        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                    },
                }
            ]
        )
    jobset = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {
            "name": name,
            "labels": dict((template.get("metadata") or {}).get("labels") or {}),
            "ownerReferences": [_owner_ref(trainjob)],
        },
        "spec": template["spec"],
    }
    kube._create(JOBSETS, namespace, jobset)
