"""The batch/v1 Job of one trainer attempt, built from deploy/kubernetes/base/templates/trainer-job.yaml (the file
the kustomize base ships in the hone-templates ConfigMap): `python -m trainer --spec URL` with the trainer image,
the storage Secret by reference, nvidia.com/gpu, the node selector and tolerations from settings,
activeDeadlineSeconds, ttlSecondsAfterFinished and backoffLimit 0 (Hone retries a crashed trainer itself, from
its last checkpoint, as a new Job). Labels tie each Job and its pod to the tuning job, its project and the
attempt."""

from __future__ import annotations

import hashlib

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


def job_name(job_id: str, attempt: int) -> str:
    """`hone-train-{job id}-{hash}-{attempt}`: a DNS-1123 label (<= 63). Job ids are case-sensitive and names
    are not, so a short hash of the exact id keeps two ids that differ only in case apart."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:6]
    room = 63 - len("hone-train-") - len(digest) - len(str(attempt)) - 2
    return f"hone-train-{dns_label(job_id, room)}-{digest}-{attempt}"


# What the control plane's Role must allow in its namespace for this executor (deploy/kubernetes/base/rbac.yaml).
REQUIRED_RBAC = {
    ("batch", "jobs"): {"create", "get", "list", "delete"},
    ("", "pods"): {"get", "list", "delete", "patch"},
    ("", "pods/log"): {"get"},
}


def build_job(
    settings: Settings,
    job_id: str,
    attempt: int,
    spec_url: str,
    project_id: str | None = None,
    *,
    finalizer: bool = True,
) -> dict:
    """The batch/v1 Job of one attempt: the template with this run's fields filled in."""
    job = load_template(settings, TEMPLATE)
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        raise ValueError(f"{TEMPLATE} must be a batch/v1 Job")
    labels = {APP_LABEL: APP, JOB_ID_LABEL: label_value(job_id), ATTEMPT_LABEL: str(attempt)}
    if project_id:
        labels[PROJECT_LABEL] = label_value(project_id)
    meta = job.setdefault("metadata", {})
    meta.pop("generateName", None)
    meta.update(name=job_name(job_id, attempt), namespace=settings.kubernetes.k8s_namespace)
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), JOB_ID_ANNOTATION: job_id}
    spec = job.setdefault("spec", {})
    spec.update(
        backoffLimit=0,
        activeDeadlineSeconds=settings.kubernetes.k8s_job_deadline_s,
        ttlSecondsAfterFinished=settings.kubernetes.k8s_job_ttl_s,
    )
    template = spec.setdefault("template", {})
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
        raise ValueError(f"{TEMPLATE} has no container named {CONTAINER!r}")
    container["image"] = settings.kubernetes.k8s_trainer_image
    container["args"] = ["--spec", spec_url]
    ours = {"HONE_JOB_ID": job_id, "HONE_JOB_ATTEMPT": str(attempt)}
    if settings.training.trainer_threads > 0:
        ours["OMP_NUM_THREADS"] = str(settings.training.trainer_threads)
    container["env"] = [e for e in container.get("env") or [] if e.get("name") not in ours] + [
        {"name": k, "value": v} for k, v in ours.items()
    ]
    env_from = [e for e in container.get("envFrom") or [] if "secretRef" not in e]
    if settings.kubernetes.k8s_secret_name:
        env_from.append({"secretRef": {"name": settings.kubernetes.k8s_secret_name}})
    container["envFrom"] = env_from
    resources = container.setdefault("resources", {})
    for part in ("requests", "limits"):
        values = dict(resources.get(part) or {})
        values.pop("nvidia.com/gpu", None)
        if settings.kubernetes.k8s_gpus_per_job > 0:
            values["nvidia.com/gpu"] = str(settings.kubernetes.k8s_gpus_per_job)
        if values:
            resources[part] = values
        else:
            resources.pop(part, None)
    if not resources:
        container.pop("resources")
    return job
