"""What a multi-node run (a JobSet or a Kubeflow TrainJob) and its rank pods mean: a pure classifier, the sibling of
k8s_observation.py (whose per-pod reading it reuses), objects in, an Observation out.

The run's verdict, in the scheduler's terms (the same Observations, exit codes and events as one node's):
- the owner's activeDeadlineSeconds (a TrainJob's) or a child Job's (a JobSet's) passed -> DEADLINE_EXCEEDED (124);
- one rank failed (its trainer's exit code; 137 OOMKilled; 75 stopped for a pause or disrupted by eviction or
  preemption) -> the run ends with that rank's verdict: the rank that ended first, the lowest on a tie, since the
  others then fail on their broken collectives;
- every rank exited 0, or the owner says Complete -> SUCCEEDED, rank 0's log;
- a rank Pending that cannot be scheduled, or whose image cannot be pulled -> the same events and timeouts as one
  pod (STUCK past its timeout);
- the owner failed or gone without a rank's exit to show for it -> paused (if asked), disrupted (a rank had run),
  or lost, as for one pod.
"""

from __future__ import annotations

from service.executors.k8s_multinode import rank_of
from service.executors.k8s_observation import (
    EXIT_DEADLINE,
    EXIT_STOPPED,
    Event,
    Observation,
    Seen,
    Verdict,
    classify_pod,
    conditions,
)
from service.settings import Settings


def expected_ranks(owner: dict | None) -> int | None:
    """How many rank pods the run has: a TrainJob's numNodes, or the JobSet's node Job's completions."""
    if owner is None:
        return None
    spec = owner.get("spec") or {}
    if owner.get("kind") == "TrainJob":
        return (spec.get("trainer") or {}).get("numNodes")
    return sum(
        (j.get("replicas") or 1) * ((j.get("template") or {}).get("spec") or {}).get("completions", 1)
        for j in spec.get("replicatedJobs") or []
    )


def _finished_at(pod: dict) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        if terminated.get("finishedAt"):
            return terminated["finishedAt"]
    return "~"  # sorts after any timestamp


def _deadline(owner: dict | None, jobs: list[dict]) -> str | None:
    for obj in ([owner] if owner else []) + jobs:
        failed = conditions(obj).get("Failed", {})
        if failed.get("status") == "True" and failed.get("reason") == "DeadlineExceeded":
            seconds = (obj.get("spec") or {}).get("activeDeadlineSeconds")
            return (
                f"{obj.get('kind', 'Job')} {obj['metadata']['name']} ran longer than activeDeadlineSeconds ({seconds} s"
            )
    return None


def classify_ranks(
    owner: dict | None, jobs: list[dict], pods: list[dict], seen: Seen, settings: Settings, now: float
) -> Verdict:
    """The run's state from its owner (JobSet or TrainJob; None once deleted), its child Jobs and its rank pods."""
    # The newest pod of each rank (a rank's pod is never replaced, but a stale one may linger while deleted)
    newest: dict[int, dict] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        newest[rank_of(pod)] = pod
    ranks = sorted(newest.items())
    rank0 = ranks[0][1]["metadata"]["name"] if ranks else None
    deadline = _deadline(owner, jobs)
    if deadline:
        note = f"{deadline}, HONE_K8S_JOB_DEADLINE_S) and was stopped"
        return Verdict(
            Observation.DEADLINE_EXCEEDED, seen, EXIT_DEADLINE, note, rank0, (Event("deadline", "error", note + "."),)
        )
    if seen.stop == "kill" and seen.kill_sent:
        return Verdict(Observation.CANCELLED, seen, None, "the multi-node run was deleted (cancelled)", rank0)
    events: list[Event] = []
    ended: list[tuple[str, int, Verdict]] = []
    for rank, pod in ranks:
        verdict = classify_pod(pod, seen, settings, now)
        seen = verdict.seen
        events.extend(e for e in verdict.events if e.kind not in {x.kind for x in events})
        if verdict.observation is Observation.STUCK:
            return Verdict(verdict.observation, seen, None, verdict.note, verdict.pod, tuple(events), verdict.error)
        if verdict.ended:
            ended.append((_finished_at(pod), rank, verdict))
    failures = sorted((f for f in ended if f[2].observation is not Observation.SUCCEEDED), key=lambda f: f[:2])
    if failures:
        _, rank, verdict = failures[0]
        note = f"rank {rank} of {len(ranks)}: {verdict.note}" if verdict.note else ""
        return Verdict(verdict.observation, seen, verdict.exit_code, note, verdict.pod, tuple(events), verdict.error)
    owner_conditions = conditions(owner) if owner else {}
    expected = expected_ranks(owner)
    succeeded = len(ended)
    if (owner_conditions.get("Complete", {}).get("status") == "True") or (
        expected and succeeded >= expected and succeeded == len(ranks)
    ):
        return Verdict(Observation.SUCCEEDED, seen, 0, "", rank0, tuple(events))
    failed = owner_conditions.get("Failed", {})
    if owner is not None and failed.get("status") != "True" and not owner["metadata"].get("deletionTimestamp"):
        return Verdict(Observation.RUNNING, seen, events=tuple(events))
    # The owner failed or went away, and no rank's pod shows why: rank pods were deleted (pause, drain, preemption)
    # and the engine, which restarts nothing, failed the run.
    how = seen.disrupted or (
        f"{failed.get('reason')}: {failed.get('message') or ''}".strip(": ") if failed else "the run was deleted"
    )
    if seen.stop == "pause":
        return Verdict(Observation.PAUSED, seen, EXIT_STOPPED, "stopped for a pause", rank0, tuple(events))
    if seen.pod_ran or seen.disrupted:
        message = f"A rank of the multi-node run went away ({how}); the job resumes from its last checkpoint."
        return Verdict(
            Observation.DISRUPTED,
            seen,
            EXIT_STOPPED,
            message,
            rank0,
            tuple(events) + (Event("disrupted", "warn", message),),
        )
    return Verdict(
        Observation.LOST, seen, None, f"the multi-node run ended without a rank's exit ({how})", rank0, tuple(events)
    )
