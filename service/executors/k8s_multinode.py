"""The objects of a trainer run on several nodes (resources.nodes > 1), and whether a deployment can run one.

HONE_K8S_MULTINODE picks the engine the cluster has installed (deploy/kubernetes/README.md):

- `jobset`: a jobset.x-k8s.io/v1alpha2 JobSet (templates/trainer-jobset.yaml) of one replicated Job, `node`, of
  `nodes` pods with Indexed completions. Each pod is trainer-job.yaml's pod (see k8s_trainer_job.fill_pod_template)
  running `python -m trainer.ranks --nnodes N --nproc-per-node G --node-rank $(NODE_RANK) --master-addr
  {name}-node-0-0.{name} --master-port 29500 --spec URL` (torchrun's flags; trainer/ranks.py says why not torchrun): NODE_RANK is the pod's completion index, and rank 0's address is its
  DNS hostname under the headless Service JobSet makes for the set (network.enableDNSHostnames).
- `kubeflow`: a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1, templates/trainer-trainjob.yaml) on
  the hone-torch TrainingRuntime (deploy/kubernetes/components/kubeflow-trainer), whose torch policy hands the
  launcher (trainer.ranks, as it would torchrun) the node rank and rank 0's address as PET_* variables; Hone sets numNodes, numProcPerNode, resourcesPerNode, the command, and, as a
  runtime patch, the pods' labels, node selector and tolerations.
- `none`: a job of several nodes is refused at creation (`refusal`).

Either way the engine restarts nothing (JobSet maxRestarts 0, Job backoffLimit 0, pods restartPolicy Never): one
rank's failure fails the run, and Hone's scheduler retries the attempt from its last checkpoint, as for one node.
Both engines label every pod with `jobset.sigs.k8s.io/jobset-name` (the run's name: a TrainJob's JobSet has its
name), which is how the watcher finds a run's pods.
"""

from __future__ import annotations

from dataclasses import dataclass

from hone_kernel.trainer_contract import Resources
from service.executors.k8s_trainer_job import (
    TEMPLATE,
    fill_pod_template,
    gpus_per_pod,
    job_name,
    labels_of,
    name_object,
)
from service.k8s import load_template
from service.settings import Settings

REPLICATED_JOB = "node"  # the replicated Job's name in both engines (Kubeflow Trainer's torch runtime requires it)
RENDEZVOUS_PORT = 29500  # the rendezvous port of rank 0 (torchrun's default)
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # a pod's annotation (and label): its node rank
# A rank's hostname, {name}-node-0-{index}, is a DNS label (<= 63): room for `-node-0-` and a 3-digit index.
NAME_MAX = 63 - len(f"-{REPLICATED_JOB}-0-") - 3


@dataclass(frozen=True)
class Engine:
    setting: str  # HONE_K8S_MULTINODE's value
    group: str
    version: str
    plural: str
    kind: str
    template: str  # under HONE_K8S_TEMPLATES_DIR

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


ENGINES = {
    "jobset": Engine("jobset", "jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet", "trainer-jobset.yaml"),
    "kubeflow": Engine(
        "kubeflow", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", "trainer-trainjob.yaml"
    ),
}
BY_PLURAL = {engine.plural: engine for engine in ENGINES.values()}


def refusal(settings: Settings, resources: Resources) -> str | None:
    """Why this deployment cannot run a job of `resources`, naming the field, or None. For job creation (a 400):
    only the Kubernetes executor's limits are judged here."""
    if settings.training.executor != "kubernetes" or resources.nodes <= 1:
        return None
    if settings.kubernetes.k8s_multinode == "none":
        return (
            f"resources.nodes: this deployment trains on one node per job (asked for {resources.nodes}); "
            "multi-node training on Kubernetes needs JobSet or Kubeflow Trainer installed and HONE_K8S_MULTINODE "
            "set to jobset or kubeflow"
        )
    return None


def engine_for(settings: Settings, resources: Resources) -> Engine | None:
    """The engine a run of `resources` runs on; None: one node, a batch/v1 Job."""
    if resources.nodes <= 1:
        return None
    engine = ENGINES.get(settings.kubernetes.k8s_multinode)
    if engine is None:  # job creation refuses these (refusal); one created before the setting changed fails here
        raise ValueError(
            f"a run on {resources.nodes} nodes needs HONE_K8S_MULTINODE=jobset or kubeflow (it is "
            f"{settings.kubernetes.k8s_multinode!r})"
        )
    return engine


def run_name(job_id: str, attempt: int) -> str:
    return job_name(job_id, attempt, NAME_MAX)


def build_run(
    settings: Settings,
    engine: Engine,
    job_id: str,
    attempt: int,
    spec_url: str,
    resources: Resources,
    project_id: str | None = None,
    *,
    finalizer: bool = True,
) -> dict:
    build = build_jobset if engine.plural == "jobsets" else build_trainjob
    return build(settings, job_id, attempt, spec_url, resources, project_id, finalizer=finalizer)


def _template(settings: Settings, engine: Engine) -> dict:
    obj = load_template(settings, engine.template)
    if obj.get("apiVersion") != engine.api_version or obj.get("kind") != engine.kind:
        raise ValueError(f"{engine.template} must be a {engine.api_version} {engine.kind}")
    return obj


def _node_job(spec: dict, source: str) -> dict:
    jobs = [j for j in spec.get("replicatedJobs") or [] if j.get("name") == REPLICATED_JOB]
    if len(jobs) != 1:
        raise ValueError(f"{source} must have one replicated Job named {REPLICATED_JOB!r}")
    return jobs[0]


def build_jobset(
    settings: Settings,
    job_id: str,
    attempt: int,
    spec_url: str,
    resources: Resources,
    project_id: str | None = None,
    *,
    finalizer: bool = True,
) -> dict:
    engine = ENGINES["jobset"]
    jobset = _template(settings, engine)
    name, labels = run_name(job_id, attempt), labels_of(job_id, attempt, project_id)
    name_object(jobset, settings, name, labels, job_id)
    spec = jobset.setdefault("spec", {})
    # Pinned whatever the template says: the ranks find rank 0 by its hostname, and Hone retries, not JobSet.
    spec["network"] = {**(spec.get("network") or {}), "enableDNSHostnames": True}
    spec["network"].pop("subdomain", None)  # the Service is then named after the JobSet, as the address below says
    spec["failurePolicy"] = {**(spec.get("failurePolicy") or {}), "maxRestarts": 0}
    spec["ttlSecondsAfterFinished"] = settings.kubernetes.k8s_job_ttl_s
    node = _node_job(spec, engine.template)
    node["replicas"] = 1
    job_template = node.setdefault("template", {})
    job_meta = job_template.setdefault("metadata", {})
    job_meta["labels"] = {**(job_meta.get("labels") or {}), **labels}
    job_spec = job_template.setdefault("spec", {})
    job_spec.update(
        completionMode="Indexed",
        completions=resources.nodes,
        parallelism=resources.nodes,
        backoffLimit=0,
        activeDeadlineSeconds=settings.kubernetes.k8s_job_deadline_s,
    )
    pod_template = load_template(settings, TEMPLATE).get("spec", {}).get("template", {})
    command = [
        "python",
        "-m",
        "trainer.ranks",
        "--nnodes",
        str(resources.nodes),
        "--nproc-per-node",
        str(resources.gpus_per_node),
        "--node-rank",
        "$(NODE_RANK)",  # the kubelet expands it from the env below
        "--master-addr",
        f"{name}-{REPLICATED_JOB}-0-0.{name}",
        "--master-port",
        str(RENDEZVOUS_PORT),
    ]
    container = fill_pod_template(
        settings,
        pod_template,
        labels,
        job_id,
        attempt,
        spec_url,
        command=command,
        gpus=gpus_per_pod(settings, resources),
        finalizer=finalizer,
        source=TEMPLATE,
    )
    container["env"] = [e for e in container["env"] if e.get("name") != "NODE_RANK"] + [
        {
            "name": "NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
        }
    ]
    job_spec["template"] = pod_template
    return jobset


def build_trainjob(
    settings: Settings,
    job_id: str,
    attempt: int,
    spec_url: str,
    resources: Resources,
    project_id: str | None = None,
    *,
    finalizer: bool = True,  # not settable: a TrainJob's runtime patches may add only labels and annotations to pods
) -> dict:
    engine = ENGINES["kubeflow"]
    trainjob = _template(settings, engine)
    name, labels = run_name(job_id, attempt), labels_of(job_id, attempt, project_id)
    name_object(trainjob, settings, name, labels, job_id)
    spec = trainjob.setdefault("spec", {})
    spec["activeDeadlineSeconds"] = settings.kubernetes.k8s_job_deadline_s
    trainer = spec.setdefault("trainer", {})
    trainer.update(
        image=settings.kubernetes.k8s_trainer_image,
        # trainer.ranks takes the node rank and rank 0's address from the runtime's PET_* variables, as torchrun would
        command=[
            "python",
            "-m",
            "trainer.ranks",
            "--nnodes",
            str(resources.nodes),
            "--nproc-per-node",
            str(resources.gpus_per_node),
        ],
        args=["--spec", spec_url],
        numNodes=resources.nodes,
        numProcPerNode=resources.gpus_per_node,
    )
    ours = {"HONE_JOB_ID": job_id, "HONE_JOB_ATTEMPT": str(attempt)}
    if settings.training.trainer_threads > 0:
        ours["OMP_NUM_THREADS"] = str(settings.training.trainer_threads)
    trainer["env"] = [e for e in trainer.get("env") or [] if e.get("name") not in ours] + [
        {"name": k, "value": v} for k, v in ours.items()
    ]
    gpus = gpus_per_pod(settings, resources)
    per_node = dict(trainer.get("resourcesPerNode") or {})
    for part in ("requests", "limits"):
        values = {k: v for k, v in (per_node.get(part) or {}).items() if k != "nvidia.com/gpu"}
        if gpus > 0:
            values["nvidia.com/gpu"] = str(gpus)
        if values:
            per_node[part] = values
        else:
            per_node.pop(part, None)
    if per_node:
        trainer["resourcesPerNode"] = per_node
    else:
        trainer.pop("resourcesPerNode", None)
    pod_spec: dict = {}
    if settings.kubernetes.k8s_node_selector:
        pod_spec["nodeSelector"] = dict(settings.kubernetes.k8s_node_selector)
    if settings.kubernetes.k8s_tolerations:
        pod_spec["tolerations"] = list(settings.kubernetes.k8s_tolerations)
    pod_patch: dict = {"metadata": {"labels": labels, "annotations": {"hone.dev/job-id": job_id}}}
    if pod_spec:
        pod_patch["spec"] = pod_spec
    patch = {
        "manager": "hone.dev/control-plane",
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": REPLICATED_JOB,
                            "template": {"metadata": {"labels": labels}, "spec": {"template": pod_patch}},
                        }
                    ]
                }
            }
        },
    }
    spec["runtimePatches"] = [p for p in spec.get("runtimePatches") or [] if p.get("manager") != patch["manager"]] + [
        patch
    ]
    return trainjob


def rank_of(pod: dict) -> int:
    """A rank's node index (its Job completion index); pods without one sort last."""
    meta = pod["metadata"]
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(COMPLETION_INDEX)
    return int(value) if isinstance(value, str) and value.isdigit() else 1 << 30
