"""The batch/v1 Job of one trainer attempt on one node, built from deploy/kubernetes/base/templates/trainer-job.yaml
(the file the kustomize base ships in the hone-templates ConfigMap): `python -m trainer --spec URL` with the trainer
image, or `python -m trainer.ranks --nproc-per-node G --spec URL` for a job of G > 1 devices, the storage
Secret by reference, nvidia.com/gpu, the node selector and tolerations from settings, activeDeadlineSeconds,
ttlSecondsAfterFinished and backoffLimit 0 (Hone retries a crashed trainer itself, from its last checkpoint, as a
new Job). Labels tie each Job and its pod to the tuning job, its project and the attempt.

The pod template is filled by `fill_pod_template`, which the multi-node objects (k8s_multinode.py) use too, so a
rank's pod is a single-node trainer pod with another command."""

from __future__ import annotations

import hashlib

from hone_kernel.trainer_contract import Resources
from service.executors.k8s_observation import CONTAINER
from service.k8s import dns_label, label_value, load_template
from service.settings import Settings

TEMPLATE = "trainer-job.yaml"
APP_LABEL = "app.kubernetes.io/name"
APP = "hone-trainer"
JOB_ID_LABEL, PROJECT_LABEL, ATTEMPT_LABEL = "hone.dev/job-id", "hone.dev/project-id", "hone.dev/attempt"
JOB_ID_ANNOTATION = "hone.dev/job-id"
# On every trainer pod: the pod object (its exit status and its log) stays until reap() has read them, even when
# it is deleted (pause, preemption, eviction, drain) and would otherwise be gone before the next poll.
FINALIZER = "hone.dev/trainer-exit"


def job_name(job_id: str, attempt: int, max_length: int = 63) -> str:
    """`hone-train-{job id}-{hash}-{attempt}`: a DNS-1123 label (<= max_length, 63 by default). Job ids are
    case-sensitive and names are not, so a short hash of the exact id keeps two ids that differ only in case
    apart."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:6]
    room = max_length - len("hone-train-") - len(digest) - len(str(attempt)) - 2
    return f"hone-train-{dns_label(job_id, room)}-{digest}-{attempt}"


# What the control plane's Role must allow in its namespace for this executor (deploy/kubernetes/base/rbac.yaml).
REQUIRED_RBAC = {
    ("batch", "jobs"): {"create", "get", "list", "delete"},
    ("", "pods"): {"get", "list", "delete", "patch"},
    ("", "pods/log"): {"get"},
    # a multi-node run's object (HONE_K8S_MULTINODE=jobset or kubeflow; k8s_multinode.py)
    ("jobset.x-k8s.io", "jobsets"): {"create", "list", "delete"},
    ("trainer.kubeflow.org", "trainjobs"): {"create", "list", "delete"},
}


def gpus_per_pod(settings: Settings, resources: Resources) -> int:
    """nvidia.com/gpu each trainer pod asks for. A job of more than one device per node gets what it asks for; a
    job of one device per node (also what a job that says nothing gets) gets HONE_K8S_GPUS_PER_JOB, so operators
    keep choosing that one; HONE_K8S_GPUS_PER_JOB=0 (a cluster without GPUs) never asks for a GPU: each pod runs
    its processes on CPU (gloo), as the local executor does on a host without GPUs."""
    setting = settings.kubernetes.k8s_gpus_per_job
    if setting <= 0:
        return 0
    return resources.gpus_per_node if resources.gpus_per_node > 1 else setting


def labels_of(job_id: str, attempt: int, project_id: str | None) -> dict[str, str]:
    labels = {APP_LABEL: APP, JOB_ID_LABEL: label_value(job_id), ATTEMPT_LABEL: str(attempt)}
    if project_id:
        labels[PROJECT_LABEL] = label_value(project_id)
    return labels


def name_object(obj: dict, settings: Settings, name: str, labels: dict[str, str], job_id: str) -> None:
    meta = obj.setdefault("metadata", {})
    meta.pop("generateName", None)
    meta.update(name=name, namespace=settings.kubernetes.k8s_namespace)
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), JOB_ID_ANNOTATION: job_id}


def build_job(
    settings: Settings,
    job_id: str,
    attempt: int,
    spec_url: str,
    project_id: str | None = None,
    *,
    finalizer: bool = True,
    resources: Resources | None = None,
) -> dict:
    """The batch/v1 Job of one attempt on one node: the template with this run's fields filled in."""
    resources = resources or Resources()
    job = load_template(settings, TEMPLATE)
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        raise ValueError(f"{TEMPLATE} must be a batch/v1 Job")
    labels = labels_of(job_id, attempt, project_id)
    name_object(job, settings, job_name(job_id, attempt), labels, job_id)
    spec = job.setdefault("spec", {})
    spec.update(
        backoffLimit=0,
        activeDeadlineSeconds=settings.kubernetes.k8s_job_deadline_s,
        ttlSecondsAfterFinished=settings.kubernetes.k8s_job_ttl_s,
    )
    processes = resources.gpus_per_node
    # One process: the template's own command (python -m trainer). Several: trainer.ranks starts one per device on
    # this node (torchrun's variables, rank 0's address on loopback) and exits with the ranks' code: 75 for a pause,
    # 2 for a failure reported, a crash's own (torchrun's agent would say 1 for all of them).
    command = ["python", "-m", "trainer.ranks", "--nproc-per-node", str(processes)] if processes > 1 else None
    fill_pod_template(
        settings,
        spec.setdefault("template", {}),
        labels,
        job_id,
        attempt,
        spec_url,
        command=command,
        gpus=gpus_per_pod(settings, resources),
        finalizer=finalizer,
        source=TEMPLATE,
    )
    return job


def fill_pod_template(
    settings: Settings,
    template: dict,
    labels: dict[str, str],
    job_id: str,
    attempt: int,
    spec_url: str,
    *,
    command: list[str] | None,
    gpus: int,
    finalizer: bool,
    source: str,
    env: dict[str, str] | None = None,
) -> dict:
    """Fills a pod template (from trainer-job.yaml) in place: labels, finalizer, image, command (None: the
    template's), --spec, env, the Secret, nvidia.com/gpu, node selector, tolerations. Returns the trainer
    container."""
    template_meta = template.setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    template_meta["annotations"] = {**(template_meta.get("annotations") or {}), JOB_ID_ANNOTATION: job_id}
    template_meta["finalizers"] = [f for f in template_meta.get("finalizers") or [] if f != FINALIZER] + (
        [FINALIZER] if finalizer else []
    )
    if not template_meta["finalizers"]:
        del template_meta["finalizers"]
    pod = template.setdefault("spec", {})
    pod["restartPolicy"] = "Never"
    if settings.kubernetes.k8s_node_selector:
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **settings.kubernetes.k8s_node_selector}
    if settings.kubernetes.k8s_tolerations:
        pod["tolerations"] = list(pod.get("tolerations") or []) + list(settings.kubernetes.k8s_tolerations)
    containers = pod.setdefault("containers", [])
    container = next((c for c in containers if c.get("name") == CONTAINER), None)
    if container is None:
        raise ValueError(f"{source} has no container named {CONTAINER!r}")
    container["image"] = settings.kubernetes.k8s_trainer_image
    if command is not None:
        container["command"] = command
    container["args"] = ["--spec", spec_url]
    ours = {"HONE_JOB_ID": job_id, "HONE_JOB_ATTEMPT": str(attempt), **(env or {})}
    if settings.training.trainer_threads > 0:
        ours["OMP_NUM_THREADS"] = str(settings.training.trainer_threads)
    container["env"] = [e for e in container.get("env") or [] if e.get("name") not in ours] + [
        {"name": k, "value": v} for k, v in ours.items()
    ]
    env_from = [e for e in container.get("envFrom") or [] if "secretRef" not in e]
    if settings.kubernetes.k8s_secret_name:
        env_from.append({"secretRef": {"name": settings.kubernetes.k8s_secret_name}})
    container["envFrom"] = env_from
    set_gpus(container, gpus)
    return container


def set_gpus(container: dict, gpus: int) -> None:
    """nvidia.com/gpu in a container's requests and limits (none at 0), the rest of its resources kept."""
    resources = container.setdefault("resources", {})
    for part in ("requests", "limits"):
        values = dict(resources.get(part) or {})
        values.pop("nvidia.com/gpu", None)
        if gpus > 0:
            values["nvidia.com/gpu"] = str(gpus)
        if values:
            resources[part] = values
        else:
            resources.pop(part, None)
    if not resources:
        container.pop("resources")
