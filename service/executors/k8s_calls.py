"""The Kubernetes API calls of the trainer executor (service/executors/kubernetes.py): listing, creating and deleting
trainer Jobs, JobSets, TrainJobs and pods in one namespace, reading a pod's log, and releasing a pod from the
executor's finalizer. Objects come back as plain dicts (the API's JSON), which is what the classifiers read."""

from __future__ import annotations

import json
import logging
from typing import Any

from service.executors.k8s_multinode import JOBSET_NAME_LABEL, Engine
from service.executors.k8s_observation import CONTAINER, TRAINER_CONTAINERS
from service.executors.k8s_trainer_job import APP, APP_LABEL, FINALIZER

log = logging.getLogger("hone.executor.kubernetes")


def api_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message") or ""
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")[:300]


def run_key(obj: dict) -> str:
    """The name of the run a trainer pod or child Job belongs to: its JobSet's (both multi-node engines label
    their pods and Jobs with it; a TrainJob's JobSet has the TrainJob's name), else its controlling Job's."""
    labels = obj["metadata"].get("labels") or {}
    if labels.get(JOBSET_NAME_LABEL):
        return labels[JOBSET_NAME_LABEL]
    return next(
        (
            r.get("name")
            for r in obj["metadata"].get("ownerReferences") or []
            if r.get("kind") == "Job" and r.get("controller")
        ),
        "",
    )


def trainer_container(pod: dict) -> str:
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    return next((n for n in names if n in TRAINER_CONTAINERS), CONTAINER)


class TrainerCalls:
    def __init__(self, api, namespace: str):
        from kubernetes import client

        self.ns = namespace
        self.batch, self.core = client.BatchV1Api(api), client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.finalizer = True  # off once the API says this control plane may not patch pods (its Role)

    def list_of(self, kind: str | Engine, selector: str | None = None) -> list[dict]:
        """Trainer objects of a kind ("jobs", "pods", or a multi-node Engine), by label (default: every trainer's)."""
        selector = selector or f"{APP_LABEL}={APP}"
        if isinstance(kind, Engine):
            found: dict = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
                kind.group, kind.version, self.ns, kind.plural, label_selector=selector, _request_timeout=30
            )
            return found.get("items") or []
        call = self.batch.list_namespaced_job if kind == "jobs" else self.core.list_namespaced_pod
        response = call(self.ns, label_selector=selector, _preload_content=False, _request_timeout=30)
        # _preload_content=False answers the raw urllib3 response, not the annotated model
        return json.loads(response.data).get("items") or []  # type: ignore[union-attr]

    def create(self, engine: Engine | None, body: dict) -> None:
        if engine is None:
            # a dict body: the client's validate_call makes the model its annotation asks for
            self.batch.create_namespaced_job(self.ns, body)  # type: ignore[arg-type]
        else:
            self.custom.create_namespaced_custom_object(engine.group, engine.version, self.ns, engine.plural, body)

    def pods_of(self, name: str) -> list[str]:
        return [p["metadata"]["name"] for p in self.list_of("pods") if run_key(p) == name]

    def delete_run(self, engine: Engine | None, name: str, *, pods_now: bool = True) -> None:
        """Deletes a run's Job, JobSet or TrainJob (Foreground: it goes once its pods are gone), and with
        `pods_now` its pods at once, not after their grace period."""
        from kubernetes.client.rest import ApiException

        try:
            if engine is None:
                self.batch.delete_namespaced_job(name, self.ns, propagation_policy="Foreground")
            else:
                self.custom.delete_namespaced_custom_object(
                    engine.group, engine.version, self.ns, engine.plural, name, propagation_policy="Foreground"
                )
        except ApiException as exc:
            if exc.status != 404:
                raise
        if pods_now:
            for pod in self.pods_of(name):
                self.delete_pod(pod, grace=0)

    def delete_pod(self, pod: str, *, grace: int) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.core.delete_namespaced_pod(pod, self.ns, grace_period_seconds=grace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def pod_log(self, pod: str, container: str = CONTAINER) -> bytes:
        try:
            return self.pod_log_or_raise(pod, container)
        except Exception as exc:
            return f"[hone kubernetes executor] the pod's log could not be read: {exc}\n".encode()

    def pod_log_or_raise(self, pod: str, container: str = CONTAINER) -> bytes:
        # raw bytes: the client would otherwise try to parse a JSON log line as a JSON document
        response = self.core.read_namespaced_pod_log(
            pod, self.ns, container=container, _preload_content=False, _request_timeout=30
        )
        # _preload_content=False answers the raw urllib3 response, not the annotated str
        return response.data  # type: ignore[attr-defined]

    def release(self, pod: dict) -> None:
        """Removes this executor's finalizer from a pod whose end has been read."""
        from kubernetes.client.rest import ApiException

        meta = pod["metadata"]
        for _ in range(3):
            finalizers = meta.get("finalizers") or []
            if FINALIZER not in finalizers:
                return
            rest = [f for f in finalizers if f != FINALIZER]
            try:
                self.core.patch_namespaced_pod(
                    meta["name"],
                    self.ns,
                    {"metadata": {"finalizers": rest or None, "resourceVersion": meta["resourceVersion"]}},
                )
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status == 403:
                    if self.finalizer:
                        log.error(
                            "the control plane may not patch pods (its Role needs the `patch` verb on pods): new "
                            "trainer pods go without the hone.dev/trainer-exit finalizer, and this one keeps it "
                            "until removed by hand",
                            extra={"pod": meta["name"], "error": api_message(exc)},
                        )
                    self.finalizer = False
                    return
                if exc.status != 409:
                    log.warning("could not release a trainer pod", extra={"pod": meta["name"], "error": str(exc)})
                    return
            except Exception as exc:
                log.warning("could not release a trainer pod", extra={"pod": meta["name"], "error": str(exc)})
                return
            try:  # changed meanwhile (e.g. the Job controller's own finalizer went): read it again
                response = self.core.read_namespaced_pod(meta["name"], self.ns, _preload_content=False)
                # _preload_content=False answers the raw urllib3 response, not the annotated model
                meta = json.loads(response.data)["metadata"]  # type: ignore[attr-defined]
            except Exception:
                return
