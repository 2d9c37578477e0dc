"""What a job trains on (Hone's `resources`): checked at creation against what this deployment can run.

A job asks for `gpus` on one machine or `nodes` x `gpus_per_node`; the trainer runs one process per device
(trainer/distributed.py). Refused with a 400 naming the field, never queued to wait forever: more devices than the
local executor has, several nodes where no multi-node engine is set up (service/executors/k8s_multinode.py), or a
method that trains in one process only."""

from __future__ import annotations

from hone_kernel.trainer_contract import Resources
from service.errors import InvalidRequest
from service.executors import k8s_multinode
from service.settings import Settings

# Data-parallel covers the supervised loss (distillation's student included: rank 0 asks the teacher) and DPO;
# RFT's sampling and grading run in one process.
PARALLEL_METHODS = ("supervised", "distillation", "dpo")


def of_job(stored: dict | None) -> Resources:
    return Resources(**stored) if stored else Resources()


def check(settings: Settings, resolved: dict[str, int] | None, method_type: str, given_as_gpus: bool) -> None:
    resources = of_job(resolved)
    if resources.world_size == 1:
        return
    field = "resources.gpus" if given_as_gpus else "resources.gpus_per_node"
    if method_type not in PARALLEL_METHODS:
        raise InvalidRequest(
            f"{field}: the {method_type} method trains in one process; data-parallel training (more than one "
            f"device) covers {', '.join(PARALLEL_METHODS)}",
            param=field,
        )
    if settings.training.executor == "local":
        if resources.nodes > 1:
            raise InvalidRequest(
                f"resources.nodes: the local executor trains on this machine only (asked for {resources.nodes} "
                "nodes); use the Kubernetes executor for multi-node jobs",
                param="resources.nodes",
            )
        devices = len(settings.training.gpu_devices) or settings.training.local_slots
        if devices and resources.gpus_per_node > devices:  # 0: this replica trains nothing; others may
            where = "GPUs (CUDA_VISIBLE_DEVICES)" if settings.training.gpu_devices else "CPU slots (HONE_LOCAL_SLOTS)"
            raise InvalidRequest(
                f"{field}: asks for {resources.gpus_per_node} devices; this machine has {devices} {where}",
                param=field,
            )
    why = k8s_multinode.refusal(settings, resources)
    if why is not None:
        raise InvalidRequest(why, param="resources.nodes")
