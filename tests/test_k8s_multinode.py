"""Training on several GPUs and several nodes on Kubernetes: the objects, their validation against the published
CRDs, the classification of a run's ranks, and the executor through a fake API server.

There is no real cluster here (no API server, JobSet controller or Kubeflow Trainer can run in this environment):
the objects are validated against the CRDs the projects publish (vendored in tests/crds/, checked with jsonschema by
tests/crd_schema.py: their CEL rules and webhooks are not run), and the executor talks, through the real `kubernetes`
client, to tests/fake_kube.py with the JobSet and TrainJob controllers of tests/fake_kube_jobsets.py.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from hone_kernel.trainer_contract import Resources
from service.executors import open_executor
from service.executors.k8s_multinode import build_jobset, build_trainjob, refusal
from service.executors.k8s_observation import Observation, Seen
from service.executors.k8s_rank_observation import classify_ranks
from service.executors.k8s_trainer_job import FINALIZER, build_job
from service.settings import Settings
from tests.crd_schema import errors
from tests.fake_kube import FakeKube
from tests.fake_kube_jobsets import install

NS = "hone"
REPO = Path(__file__).resolve().parent.parent
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SPEC = "s3://hone/jobs/ftjob-1/spec.json"


def _settings(tmp_path: Path | None = None, kube: FakeKube | None = None, **extra) -> Settings:
    values: dict = {
        "executor": "kubernetes",
        "k8s_namespace": NS,
        "k8s_gpus_per_job": 1,
        "k8s_node_selector": {"hone.dev/gpu": "a100"},
        "k8s_tolerations": [TOLERATION],
        "k8s_job_deadline_s": 7200,
        "k8s_job_ttl_s": 600,
        "pause_grace_s": 45,
    }
    if tmp_path is not None:
        values["data_dir"] = tmp_path
    if kube is not None:
        values["k8s_kubeconfig"] = kube.write_kubeconfig(tmp_path / "kubeconfig")  # type: ignore[operator]
    values.update(extra)
    return Settings(**values)


# --- one node, several GPUs ----------------------------------------------------------------------------------


def _trainer(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "setting, resources, gpus, command",
    [
        (1, Resources(1, 1), "1", ["python", "-m", "trainer"]),  # the template's own command
        (2, Resources(1, 1), "2", ["python", "-m", "trainer"]),  # one device asked: the setting decides
        (1, Resources(1, 4), "4", ["python", "-m", "trainer.ranks", "--nproc-per-node", "4"]),
        (0, Resources(1, 4), None, ["python", "-m", "trainer.ranks", "--nproc-per-node", "4"]),  # CPU
    ],
)
def test_one_node_job_asks_for_the_jobs_gpus_and_runs_a_rank_per_device(setting, resources, gpus, command):
    job = build_job(_settings(k8s_gpus_per_job=setting), "ftjob-1", 1, SPEC, resources=resources)
    container = _trainer(job)
    assert container["command"] == command and container["args"] == ["--spec", SPEC]
    assert (container.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu") == gpus
    assert (container.get("resources") or {}).get("requests", {}).get("nvidia.com/gpu") == gpus
    kubernetes_validate.validate(job, kubernetes_validate.utils.latest_version(), strict=True)


# --- refusal at job creation ------------------------------------------------------------------------------------


def test_refusal_names_resources_nodes_only_when_no_engine_is_set():
    message = refusal(_settings(k8s_multinode="none"), Resources(2, 8))
    assert message and message.startswith("resources.nodes") and "HONE_K8S_MULTINODE" in message
    assert refusal(_settings(k8s_multinode="none"), Resources(1, 8)) is None
    assert refusal(_settings(k8s_multinode="jobset"), Resources(4, 8)) is None
    assert refusal(_settings(k8s_multinode="kubeflow"), Resources(4, 8)) is None
    assert refusal(_settings(executor="local"), Resources(2, 1)) is None  # not this executor's to judge


# --- the objects, validated against the projects' CRDs -----------------------------------------------------------


def test_jobset_validates_against_the_jobset_crd_and_carries_the_trainer_pod():
    jobset = build_jobset(_settings(), "ftjob-Ab", 3, SPEC, Resources(4, 8), "proj-1")
    assert errors(jobset) == []
    name = jobset["metadata"]["name"]
    assert jobset["metadata"]["labels"]["hone.dev/job-id"] == "ftjob-Ab"
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] == 0 and jobset["spec"]["ttlSecondsAfterFinished"] == 600
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True
    (node,) = jobset["spec"]["replicatedJobs"]
    job_spec = node["template"]["spec"]
    assert node["replicas"] == 1 and job_spec["completionMode"] == "Indexed"
    assert job_spec["completions"] == job_spec["parallelism"] == 4
    assert job_spec["backoffLimit"] == 0 and job_spec["activeDeadlineSeconds"] == 7200
    pod = job_spec["template"]
    assert pod["metadata"]["finalizers"] == [FINALIZER]
    assert pod["metadata"]["labels"]["hone.dev/attempt"] == "3"
    assert pod["spec"]["nodeSelector"] == {"hone.dev/gpu": "a100"} and pod["spec"]["tolerations"] == [TOLERATION]
    assert pod["spec"]["restartPolicy"] == "Never"
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["envFrom"] == [{"secretRef": {"name": "hone-secrets"}}]
    assert container["command"] == [
        "python",
        "-m",
        "trainer.ranks",
        "--nnodes",
        "4",
        "--nproc-per-node",
        "8",
        "--node-rank",
        "$(NODE_RANK)",
        "--master-addr",
        f"{name}-node-0-0.{name}",
        "--master-port",
        "29500",
    ]
    rank = next(e for e in container["env"] if e["name"] == "NODE_RANK")
    assert "job-completion-index" in rank["valueFrom"]["fieldRef"]["fieldPath"]
    # A rank's hostname ({name}-node-0-{index}) stays a DNS label even for the longest job ids
    long = build_jobset(_settings(), "ftjob-" + "x" * 80, 12, SPEC, Resources(2, 1))["metadata"]["name"]
    assert len(f"{long}-node-0-999") <= 63
    # The single-pod trainer's pod, so that both run the same way (volumes, security)
    single = build_job(_settings(), "ftjob-Ab", 3, SPEC)["spec"]["template"]["spec"]
    assert pod["spec"]["volumes"] == single["volumes"]
    assert container["volumeMounts"] == single["containers"][0]["volumeMounts"]


def test_trainjob_validates_against_the_trainjob_crd():
    trainjob = build_trainjob(_settings(), "ftjob-Ab", 2, SPEC, Resources(3, 4), "proj-1")
    assert errors(trainjob) == []
    spec = trainjob["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "hone-torch"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert trainer["command"] == ["python", "-m", "trainer.ranks", "--nnodes", "3", "--nproc-per-node", "4"]
    assert trainer["args"] == ["--spec", SPEC] and spec["activeDeadlineSeconds"] == 7200
    assert {"name": "HONE_JOB_ATTEMPT", "value": "2"} in trainer["env"]
    (patch,) = spec["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["hone.dev/job-id"] == "ftjob-Ab"
    assert pod["spec"] == {"nodeSelector": {"hone.dev/gpu": "a100"}, "tolerations": [TOLERATION]}


def test_the_validation_catches_a_wrong_field_and_a_wrong_type():
    jobset = build_jobset(_settings(), "ftjob-1", 1, SPEC, Resources(2, 1))
    typo = copy.deepcopy(jobset)
    typo["spec"]["failurePolicy"] = {"maxRestart": 0}  # maxRestarts
    assert any("maxRestart" in e and "spec.failurePolicy" in e for e in errors(typo))
    trainjob = build_trainjob(_settings(), "ftjob-1", 1, SPEC, Resources(2, 1))
    wrong = copy.deepcopy(trainjob)
    wrong["spec"]["trainer"]["numNodes"] = "2"
    assert any("spec.trainer.numNodes" in e for e in errors(wrong))
    nested = copy.deepcopy(trainjob)
    nested["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"
    ]["template"]["spec"]["nodeSelectors"] = {}
    assert any("nodeSelectors" in e for e in errors(nested))


def test_the_shipped_training_runtime_validates_and_restarts_nothing():
    path = REPO / "deploy" / "kubernetes" / "components" / "kubeflow-trainer" / "training-runtime.yaml"
    runtime = yaml.safe_load(path.read_text())
    assert errors(runtime) == []
    spec = runtime["spec"]["template"]["spec"]
    assert spec["failurePolicy"]["maxRestarts"] == 0
    (node,) = spec["replicatedJobs"]
    assert node["name"] == "node" and node["template"]["spec"]["backoffLimit"] == 0
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and [c["name"] for c in pod["containers"]] == ["node"]
    # the single-node trainer pod's volumes and Secret, so that both run the same way
    single = yaml.safe_load((REPO / "deploy/kubernetes/base/templates/trainer-job.yaml").read_text())
    single_pod = single["spec"]["template"]["spec"]
    assert pod["volumes"] == single_pod["volumes"]
    assert pod["containers"][0]["envFrom"] == single_pod["containers"][0]["envFrom"]


def test_the_kubeflow_component_renders_with_the_base(tmp_path):
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: scripts/setup.sh installs Debian's kubernetes-client (as root)"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = REPO / "deploy" / "kubernetes"
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(base / "base", overlay)],  # kustomize takes relative paths only
                "components": [os.path.relpath(base / "components" / "kubeflow-trainer", overlay)],
            }
        )
    )
    done = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rendered = [o for o in yaml.safe_load_all(done.stdout) if o]
    (runtime,) = [o for o in rendered if o["kind"] == "TrainingRuntime"]
    assert runtime["metadata"]["namespace"] == NS and errors(runtime) == []
    (config,) = [o for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("hone-config")]
    assert config["data"]["HONE_K8S_MULTINODE"] == "kubeflow"
    assert _settings(k8s_multinode=config["data"]["HONE_K8S_MULTINODE"]).kubernetes.k8s_multinode == "kubeflow"


# --- classifying a run's ranks, over recorded objects -----------------------------------------------------------


def _rank(index: int, phase: str = "Running", code: int | None = None, reason: str = "Error", at: str = "08:10:00"):
    state: dict = {"running": {"startedAt": "2026-12-04T08:01:00Z"}}
    if code is not None:
        state = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": f"2026-12-04T{at}Z"}}
    return {
        "metadata": {
            "name": f"run-node-0-{index}-abcde",
            "creationTimestamp": "2026-12-04T08:00:00Z",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            "labels": {"jobset.sigs.k8s.io/jobset-name": "run"},
        },
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "trainer"}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def _owner(kind: str = "JobSet", condition: tuple[str, str] | None = None) -> dict:
    spec = (
        {"trainer": {"numNodes": 2}}
        if kind == "TrainJob"
        else {"replicatedJobs": [{"name": "node", "replicas": 1, "template": {"spec": {"completions": 2}}}]}
    )
    status = {"conditions": [{"type": condition[0], "status": "True", "reason": condition[1]}]} if condition else {}
    return {"kind": kind, "metadata": {"name": "run"}, "spec": {**spec, "activeDeadlineSeconds": 60}, "status": status}


SETTINGS = Settings(executor="kubernetes")


@pytest.mark.parametrize(
    "what, owner, pods, seen, observation, code, pod",
    [
        ("both ranks running", _owner(), [_rank(0), _rank(1)], Seen(), Observation.RUNNING, None, None),
        (
            "rank 0 done, rank 1 not yet",
            _owner(),
            [_rank(0, "Succeeded", 0), _rank(1)],
            Seen(),
            Observation.RUNNING,
            None,
            None,
        ),
        (
            "all ranks exit 0",
            _owner(),
            [_rank(1, "Succeeded", 0), _rank(0, "Succeeded", 0)],
            Seen(),
            Observation.SUCCEEDED,
            0,
            "run-node-0-0-abcde",
        ),
        (
            "the first rank to fail is the run's failure",
            _owner(),
            [_rank(0, "Failed", 1, at="08:10:05"), _rank(1, "Failed", 3, at="08:10:01")],
            Seen(),
            Observation.FAILED,
            3,
            "run-node-0-1-abcde",
        ),
        (
            "a rank OOMKilled",
            _owner("TrainJob"),
            [_rank(0), _rank(1, "Failed", 137, "OOMKilled")],
            Seen(),
            Observation.OOM_KILLED,
            137,
            "run-node-0-1-abcde",
        ),
        (
            "paused: every rank checkpointed",
            _owner(),
            [_rank(0, "Failed", 75), _rank(1, "Failed", 75)],
            Seen(stop="pause"),
            Observation.PAUSED,
            75,
            "run-node-0-0-abcde",
        ),
        (
            "the TrainJob's deadline",
            _owner("TrainJob", ("Failed", "DeadlineExceeded")),
            [],
            Seen(),
            Observation.DEADLINE_EXCEEDED,
            124,
            None,
        ),
        (
            "cancelled",
            _owner(),
            [_rank(0)],
            Seen(stop="kill", kill_sent=True),
            Observation.CANCELLED,
            None,
            "run-node-0-0-abcde",
        ),
        (
            "the owner failed, its ranks gone after running",
            _owner(condition=("Failed", "FailedJobs")),
            [],
            Seen(pod_ran=True),
            Observation.DISRUPTED,
            75,
            None,
        ),
        ("gone before any rank ran", None, [], Seen(), Observation.LOST, None, None),
    ],
)
def test_recorded_ranks_classify(what, owner, pods, seen, observation, code, pod):
    verdict = classify_ranks(owner, [], pods, seen, SETTINGS, 0.0)
    assert verdict.observation is observation, (what, verdict)
    assert verdict.exit_code == code and verdict.pod == pod


def test_a_jobset_child_jobs_deadline_is_the_runs():
    child = {
        "kind": "Job",
        "metadata": {"name": "run-node-0"},
        "spec": {"activeDeadlineSeconds": 7200},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]},
    }
    verdict = classify_ranks(_owner(condition=("Failed", "FailedJobs")), [child], [], Seen(), SETTINGS, 0.0)
    assert verdict.observation is Observation.DEADLINE_EXCEEDED and "7200 s" in verdict.note


def test_an_unschedulable_rank_is_an_event_then_stuck():
    pending = _rank(1, "Pending")
    pending["spec"] = {"containers": [{"name": "trainer", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}
    pending["status"] = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}],
    }
    first = classify_ranks(_owner(), [], [_rank(0), pending], Seen(), SETTINGS, 0.0)
    assert first.observation is Observation.RUNNING and "8 nvidia.com/gpu" in first.events[0].message
    later = classify_ranks(_owner(), [], [_rank(0), pending], first.seen, SETTINGS, 1e6)
    assert later.observation is Observation.STUCK and later.error["code"] == "no_gpu_capacity"


# --- the executor, through the fake API server and its JobSet / TrainJob controllers ----------------------------


@pytest.fixture
def kube():
    with FakeKube() as fake:
        yield install(fake)


def _runtime(kube: FakeKube) -> None:
    path = REPO / "deploy" / "kubernetes" / "components" / "kubeflow-trainer" / "training-runtime.yaml"
    kube.create(yaml.safe_load(path.read_text()))


def _ranks(kube: FakeKube, name: str, count: int) -> list[str]:
    def found():
        pods = kube.list("pods", NS, f"jobset.sigs.k8s.io/jobset-name={name}")
        return pods if len(pods) == count else None

    pods = kube.wait_for(found)
    return [
        p["metadata"]["name"]
        for p in sorted(pods, key=lambda p: int(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]))
    ]


def _reap_one(executor, timeout: float = 5):
    exits = FakeKube.wait_for(executor.reap, timeout=timeout)
    assert len(exits) == 1
    return exits[0]


@pytest.mark.parametrize("engine", ["jobset", "kubeflow"])
def test_a_multinode_run_succeeds_when_every_rank_exits_0(kube, tmp_path, engine):
    _runtime(kube)
    executor = open_executor(_settings(tmp_path, kube, k8s_multinode=engine))
    ref = executor.launch("ftjob-1", 1, SPEC, Resources(2, 4))
    plural = "jobsets" if engine == "jobset" else "trainjobs"
    assert ref.startswith(f"k8s:{NS}/{plural}/") and executor.running() == {"ftjob-1": ref}
    name = ref.rsplit("/", 1)[1].rsplit(":", 1)[0]
    assert kube.get(plural, NS, name)["metadata"]["labels"]["hone.dev/job-id"] == "ftjob-1"
    ranks = _ranks(kube, name, 2)
    pod = kube.get("pods", NS, ranks[1])
    assert pod["metadata"]["labels"]["hone.dev/attempt"] == "1"  # found by the executor's label selector
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"][:3] == ["python", "-m", "trainer.ranks"]
    for rank in ranks:
        kube.run_pod(NS, rank)
    assert executor.reap() == []
    kube.succeed_pod(NS, ranks[1], log="rank 1 done\n")
    assert executor.reap() == []  # rank 0 still trains
    kube.succeed_pod(NS, ranks[0], log="rank 0: saved the adapter\n")
    done = _reap_one(executor)
    assert done.returncode == 0 and b"rank 0: saved the adapter" in done.log and b"rank 1 done" not in done.log
    assert executor.running() == {}
    assert kube.get(plural, NS, name) is None  # deleted once read: nothing is left behind


@pytest.mark.parametrize("engine", ["jobset", "kubeflow"])
def test_a_ranks_failure_fails_the_run_with_its_exit_code_and_both_logs(kube, tmp_path, engine):
    _runtime(kube)
    executor = open_executor(_settings(tmp_path, kube, k8s_multinode=engine))
    ref = executor.launch("ftjob-1", 2, SPEC, Resources(3, 1))
    name = ref.rsplit("/", 1)[1].rsplit(":", 1)[0]
    ranks = _ranks(kube, name, 3)
    for rank in ranks:
        kube.run_pod(NS, rank)
    kube.set_pod_log(NS, ranks[0], "rank 0 waiting in all_reduce\n")
    kube.fail_pod(NS, ranks[2], exit_code=3, log="Traceback: rank 2 broke\n")
    failed = _reap_one(executor)
    assert failed.returncode == 3
    assert b"rank 0 waiting" in failed.log and b"rank 2 broke" in failed.log
    assert b"rank 2 of 3: trainer container exited with code 3" in failed.log


def test_pause_deletes_every_rank_gracefully_and_the_checkpointed_exit_comes_back(kube, tmp_path):
    executor = open_executor(_settings(tmp_path, kube, k8s_multinode="jobset"))
    ref = executor.launch("ftjob-1", 1, SPEC, Resources(2, 1))
    name = ref.rsplit("/", 1)[1].rsplit(":", 1)[0]
    ranks = _ranks(kube, name, 2)
    for rank in ranks:
        kube.run_pod(NS, rank)
    executor.stop("ftjob-1", kill=False)
    for rank in ranks:  # each got a graceful delete: the kubelet sends SIGTERM, the finalizer keeps the pod
        pod = kube.get("pods", NS, rank)
        assert pod["metadata"]["deletionGracePeriodSeconds"] == 45 and FINALIZER in pod["metadata"]["finalizers"]
    for rank in ranks:
        kube.terminate_pod(NS, rank, 75, log="checkpointed\n")
    paused = _reap_one(executor)
    assert paused.returncode == 75
    kube.wait_for(lambda: not kube.list("pods", NS, f"jobset.sigs.k8s.io/jobset-name={name}"))  # released


def test_cancel_deletes_the_whole_run(kube, tmp_path):
    executor = open_executor(_settings(tmp_path, kube, k8s_multinode="jobset"))
    ref = executor.launch("ftjob-1", 1, SPEC, Resources(2, 1))
    name = ref.rsplit("/", 1)[1].rsplit(":", 1)[0]
    ranks = _ranks(kube, name, 2)
    kube.run_pod(NS, ranks[0])
    executor.stop("ftjob-1", kill=True)
    assert ("DELETE", f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{NS}/jobsets/{name}") in kube.requests
    cancelled = _reap_one(executor)
    assert cancelled.returncode is None
    kube.wait_for(lambda: kube.get("jobsets", NS, name) is None and not kube.list("jobs", NS))


def test_a_control_plane_restart_adopts_a_multinode_run_by_label(kube, tmp_path):
    _runtime(kube)
    settings = _settings(tmp_path, kube, k8s_multinode="kubeflow")
    ref = open_executor(settings).launch("ftjob-1", 4, SPEC, Resources(2, 2))
    name = ref.rsplit("/", 1)[1].rsplit(":", 1)[0]
    ranks = _ranks(kube, name, 2)
    restarted = open_executor(settings)
    assert restarted.adopt("ftjob-1", ref) and restarted.running() == {"ftjob-1": ref}
    assert not restarted.adopt("ftjob-2", ref)  # another job's labels
    for rank in ranks:
        kube.run_pod(NS, rank)
    kube.oom_kill_pod(NS, ranks[1])
    oom = _reap_one(restarted)
    assert oom.returncode == 137 and b"OOMKilled" in oom.log


def test_without_an_engine_a_multinode_launch_fails_before_creating_anything(kube, tmp_path):
    executor = open_executor(_settings(tmp_path, kube))
    with pytest.raises(OSError, match="HONE_K8S_MULTINODE"):
        executor.launch("ftjob-1", 1, SPEC, Resources(2, 1))
    assert not [r for r in kube.requests if r[0] == "POST"]


def test_a_trainjob_whose_runtime_is_missing_is_refused_at_launch(kube, tmp_path):
    executor = open_executor(_settings(tmp_path, kube, k8s_multinode="kubeflow"))
    with pytest.raises(OSError, match="hone-torch not found"):
        executor.launch("ftjob-1", 1, SPEC, Resources(2, 1))
    assert executor.running() == {} and kube.list("trainjobs", NS) == []
