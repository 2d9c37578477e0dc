"""Engines on Kubernetes (HONE_ENDPOINT_BACKEND=kubernetes): a Deployment, a Service and a Secret per engine.

An engine is what the local backend runs as a process: one per endpoint, or one per base model with
HONE_SHARED_ENGINES. Here each is

* a Deployment built from `engine-deployment.yaml` in HONE_K8S_TEMPLATES_DIR (the kustomize base ships the same
  files in a ConfigMap): container `engine` runs `vllm serve <base> --enable-lora --max-loras ... --max-lora-rank`
  (or the built-in engine with the same flags) with VLLM_ALLOW_RUNTIME_LORA_UPDATING, its readinessProbe GET
  /health; container `fetcher` (`python -m inference.fetcher`) downloads adapters from storage into the
  `/adapters` volume the two share;
* a Service from `engine-service.yaml` (port `http` for requests, port `fetch` for the fetcher);
* a Secret holding the engine's API key (made here, read by vLLM as VLLM_API_KEY through secretKeyRef, and by
  every control-plane worker's gateway through `api_key_reader`).

Objects are named `hone-engine-<slug of the key>` and annotated with the key. `ensure` creates or updates them
(or scales a Deployment at zero back to its `spec.replicas`: pods the Service spreads requests over, each with
the adapters loaded into it by pod IP) and returns once the Deployment has a ready replica and
the engine answers /health at its URL: `http://<service>.<namespace>.svc.cluster.local:<port>`, or
`http://<clusterIP>:<port>` when the Service's clusterIP is a loopback address (a test cluster whose "pods" are
local processes). `stop` deletes all three (foreground propagation); `scale(key, n)` scales without deleting.

Adapters: the deployer asks `stage_weights` for the path of an adapter on the engine's filesystem; here that is
a `POST /fetch` to the pod's fetcher with the adapter's storage URL, answered with `/adapters/<endpoint>`.

Restarts: `get` answers a handle only for engines this process ensured, while the Deployment has a ready
replica and its pod is the same one (same uid and container restart count): a pod that restarted has lost its
runtime-loaded adapters, so the deployer sees the engine gone and deploys its endpoints again."""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from pathlib import Path

import httpx

from inference.client import EngineClient, EngineUnavailable
from service.engines import EngineHandle, EngineSpec, EngineStartError, Replica
from service.engines.k8s_engine_objects import (
    COMPONENT_SELECTOR,
    DEPLOYMENT_TEMPLATE,
    ENGINE_LABEL,
    FATAL_WAITING,
    KEY_ANNOTATION,
    SECRET_KEY,
    SERVICE_TEMPLATE,
    SPEC_ANNOTATION,
    WEIGHTS_INIT,
    build_objects,
    endpoint_of,
    object_name,
    service_url,
    storage_source,
)
from service.engines.k8s_keys import api_key_reader
from service.k8s import api_client
from service.settings import Settings

log = logging.getLogger("hone.engines")

# What the tests and engines/__init__ read from here (built in k8s_engine_objects.py).
__all__ = [
    "DEPLOYMENT_TEMPLATE",
    "SERVICE_TEMPLATE",
    "KubernetesEngines",
    "api_key_reader",
    "build_objects",
    "endpoint_of",
    "object_name",
    "service_url",
]


class KubernetesEngines:
    def __init__(self, settings: Settings, api=None):
        from kubernetes import client

        self._settings = settings
        self._ns = settings.kubernetes.k8s_namespace
        self._client = api or api_client(settings)
        self._apps = client.AppsV1Api(self._client)
        self._core = client.CoreV1Api(self._client)
        self._known: dict[str, tuple[EngineHandle, str]] = {}  # key -> (handle, pod incarnation) we ensured
        self._suspended: set[str] = set()  # keys this process scaled to zero (so it patches each once)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    # --- helpers ---------------------------------------------------------------------------------------

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _read(self, reader, name: str):
        from kubernetes.client.exceptions import ApiException

        try:
            return reader(name, self._ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _api_key(self, name: str, key: str) -> str:
        """The engine's API key from its Secret, made first if there is none."""
        from kubernetes.client.exceptions import ApiException

        existing = self._read(self._core.read_namespaced_secret, name)
        if existing is not None and existing.data and SECRET_KEY in existing.data:
            return base64.b64decode(existing.data[SECRET_KEY]).decode()
        api_key = secrets.token_urlsafe(24)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": self._ns,
                "annotations": {KEY_ANNOTATION: key},
                "labels": {
                    "app.kubernetes.io/name": "hone-engine",
                    ENGINE_LABEL: name,
                    "app.kubernetes.io/component": "engine",
                    "app.kubernetes.io/managed-by": "hone",
                },
            },
            "data": {SECRET_KEY: base64.b64encode(api_key.encode()).decode()},
        }
        try:
            # a dict body: the client's validate_call makes the model its annotation asks for
            self._core.create_namespaced_secret(self._ns, body)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:  # another worker made it first: use theirs
                raise
            return self._api_key(name, key)
        return api_key

    def _pod_trouble(self, name: str) -> tuple[str | None, str | None]:
        """(a reason to give up now, a reason it is still waiting) from the engine's pods."""
        waiting = None
        for pod in self._core.list_namespaced_pod(self._ns, label_selector=f"{ENGINE_LABEL}={name}").items:
            status, meta = pod.status, pod.metadata
            assert meta is not None  # the API server sends every object's metadata
            if status is None or meta.deletion_timestamp is not None:
                continue
            for c in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
                state = c.state.waiting if c.state else None
                if state is not None and state.reason in FATAL_WAITING:
                    return f"container {c.name}: {state.reason}: {state.message or ''}".strip(), None
                ended = c.state.terminated if c.state else None
                if c.name == WEIGHTS_INIT and ended is not None and ended.exit_code:  # no weights: no engine
                    return (
                        f"init container {c.name} exited {ended.exit_code}: "
                        f"{(ended.message or ended.reason or '').strip()}"
                    ), None
            for cond in status.conditions or []:
                if cond.type == "PodScheduled" and cond.status == "False":
                    waiting = f"pod {meta.name} is not scheduled: {cond.message or cond.reason}"
        return None, waiting

    def _ready_pods(self, name: str) -> list[tuple[str, str | None, dict[str, int]]]:
        """(uid/restart count, pod IP, container ports by name) of each ready pod, in a stable order."""
        pods = self._core.list_namespaced_pod(self._ns, label_selector=f"{ENGINE_LABEL}={name}").items
        found = []
        for pod in pods:
            status, meta = pod.status, pod.metadata
            assert meta is not None  # the API server sends every object's metadata
            if meta.deletion_timestamp is not None or status is None:
                continue
            if any(c.type == "Ready" and c.status == "True" for c in (status.conditions or [])):
                restarts = sum(c.restart_count or 0 for c in (status.container_statuses or []))
                ports = {
                    p.name: p.container_port
                    for c in (pod.spec.containers if pod.spec else [])
                    for p in (c.ports or [])
                    if p.name
                }
                found.append((f"{meta.uid}/{restarts}", status.pod_ip, ports))
        return sorted(found, key=lambda pod: pod[0])

    def _incarnation(self, name: str) -> str | None:
        """The ready pods' uids and their containers' restart counts (None: no ready pod). Any change (a pod
        restarted, added or gone) says some pod has not had the adapters loaded, so the endpoint deploys again."""
        pods = self._ready_pods(name)
        return ",".join(pod[0] for pod in pods) if pods else None

    def _replicas(self, spec: EngineSpec, name: str, service_http: str) -> tuple[Replica, ...]:
        """Where adapters are loaded: the Service when there is one pod; each ready pod by its IP when there are
        several (the Service would hand a load to one pod of them only)."""
        if spec.replicas <= 1:
            return ()
        return tuple(
            Replica(f"http://{ip}:{ports.get('http', 8000)}", f"http://{ip}:{ports.get('fetch', 8001)}")
            for _, ip, ports in self._ready_pods(name)
            if ip
        )

    # --- the EngineBackend protocol ----------------------------------------------------------------------

    def ensure(self, spec: EngineSpec) -> EngineHandle:
        with self._key_lock(spec.key):
            with self._lock:
                self._suspended.discard(spec.key)
            name = object_name(spec.key)
            deployment, service, digest = build_objects(self._settings, spec)
            current = self._read(self._apps.read_namespaced_deployment, name)
            if current is not None and current.metadata.deletion_timestamp is not None:
                self._wait_deleted(spec.key, name)  # stopped a moment ago: its pod is still going
                current = None
            api_key = self._api_key(name, spec.key)
            if current is None:
                # a dict body: the client's validate_call makes the model its annotation asks for
                self._apps.create_namespaced_deployment(self._ns, deployment)  # type: ignore[arg-type]
                log.info("engine deployment created", extra={"engine": spec.key, "deployment": name})
            elif (current.metadata.annotations or {}).get(SPEC_ANNOTATION) != digest:
                deployment["metadata"]["resourceVersion"] = current.metadata.resource_version
                # a dict body: the client's validate_call makes the model its annotation asks for
                self._apps.replace_namespaced_deployment(name, self._ns, deployment)  # type: ignore[arg-type]
                log.info("engine deployment updated", extra={"engine": spec.key, "deployment": name})
            elif current.spec.replicas != spec.replicas:  # suspended (at zero), or its replicas changed
                self.scale(spec.key, spec.replicas)
            svc = self._read(self._core.read_namespaced_service, name)
            if svc is None:
                # a dict body: the client's validate_call makes the model its annotation asks for
                svc = self._core.create_namespaced_service(self._ns, service)  # type: ignore[arg-type]
            handle, incarnation = self._wait_ready(spec, name, api_key)
            with self._lock:
                self._known[spec.key] = (handle, incarnation)
            return handle

    def _wait_deleted(self, key: str, name: str) -> None:
        deadline = time.monotonic() + self._settings.serving.engine_start_timeout_s
        while self._read(self._apps.read_namespaced_deployment, name) is not None:
            if time.monotonic() >= deadline:
                raise EngineStartError(f"engine {key}: Deployment {self._ns}/{name} is still being deleted")
            time.sleep(0.5)

    def _wait_ready(self, spec: EngineSpec, name: str, api_key: str) -> tuple[EngineHandle, str]:
        timeout = self._settings.serving.engine_start_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            dep = self._read(self._apps.read_namespaced_deployment, name)
            if dep is None:
                raise EngineStartError(f"engine {spec.key}: Deployment {self._ns}/{name} was deleted while starting")
            ready = (dep.status.ready_replicas or 0) if dep.status else 0
            # a status older than the spec (just scaled up, or replaced) still counts the old pod
            current = dep.status is not None and (dep.status.observed_generation or 0) >= dep.metadata.generation
            svc = self._read(self._core.read_namespaced_service, name)
            # every replica, or (one that cannot be scheduled must not keep the endpoint down) at least one by
            # half the timeout: a pod ready later changes the incarnation, and the endpoint deploys onto it then
            enough = ready >= spec.replicas or (ready >= 1 and time.monotonic() >= deadline - timeout / 2)
            if current and enough and svc is not None and svc.spec.cluster_ip:
                incarnation = self._incarnation(name)
                if incarnation is not None:
                    break
            fatal, waiting = self._pod_trouble(name)
            if fatal:  # a bad image or a crashing engine does not mend by waiting
                raise EngineStartError(f"engine {spec.key}: Deployment {self._ns}/{name}: {fatal}")
            if time.monotonic() >= deadline:
                raise EngineStartError(
                    f"engine {spec.key}: Deployment {self._ns}/{name} had no ready replica "
                    f"within {timeout:g}s"
                    + (f" ({waiting})" if waiting else "")
                    + f" (kubectl -n {self._ns} describe deployment {name})"
                )
            time.sleep(0.5)
        url = service_url(svc, "http")
        handle = EngineHandle(spec.key, url, api_key, spec, replicas=self._replicas(spec, name, url))
        try:
            with EngineClient(handle.url, api_key=api_key) as client:
                client.wait_healthy(min(60.0, max(5.0, deadline - time.monotonic())))
        except EngineUnavailable as exc:
            raise EngineStartError(
                f"engine {spec.key} is ready in Kubernetes but {handle.url} is not healthy: {exc}"
            ) from exc
        log.info("engine ready", extra={"engine": spec.key, "deployment": name, "url": handle.url})
        return handle, incarnation

    def get(self, key: str) -> EngineHandle | None:
        with self._lock:
            known = self._known.get(key)
        if known is None:
            return None
        handle, incarnation = known
        name = object_name(key)
        dep = self._read(self._apps.read_namespaced_deployment, name)
        ready = (dep.status.ready_replicas or 0) if dep is not None and dep.status else 0
        current = self._incarnation(name) if ready >= 1 and dep.spec.replicas else None
        if current != incarnation:
            with self._lock:
                if self._known.get(key) == known:
                    del self._known[key]
            log.warning("engine gone or restarted", extra={"engine": key, "deployment": name, "ready_replicas": ready})
            return None
        return handle

    def stop(self, key: str) -> None:
        """Deletes the engine's Deployment, Service and Secret (foreground: its pod goes first)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self._key_lock(key):
            with self._lock:
                self._known.pop(key, None)
                self._suspended.discard(key)
            name = object_name(key)
            options = client.V1DeleteOptions(propagation_policy="Foreground")
            for delete in (
                self._apps.delete_namespaced_deployment,
                self._core.delete_namespaced_service,
                self._core.delete_namespaced_secret,
            ):
                try:
                    delete(name, self._ns, body=options)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            log.info("engine deleted", extra={"engine": key, "deployment": name})

    def scale(self, key: str, replicas: int) -> None:
        """Scales the engine's Deployment (0: no pod and no GPU held; the objects and API key stay)."""
        name = object_name(key)
        # the Deployment itself, not its /scale subresource: the control plane's Role grants deployments only
        self._apps.patch_namespaced_deployment(name, self._ns, {"spec": {"replicas": replicas}})
        if replicas == 0:
            with self._lock:
                self._known.pop(key, None)
        log.info("engine scaled", extra={"engine": key, "deployment": name, "replicas": replicas})

    def suspend(self, key: str) -> None:
        """Scale to zero (an idle endpoint's engine): once per key and process, unless ensure() brought it back."""
        with self._lock:
            if key in self._suspended:
                return
        self.scale(key, 0)
        with self._lock:
            self._suspended.add(key)

    def keys(self) -> list[str]:
        """Engines in the namespace, whoever started them (so a restarted control plane stops unused ones)."""
        found = self._apps.list_namespaced_deployment(self._ns, label_selector=COMPONENT_SELECTOR).items
        return [
            d.metadata.annotations[KEY_ANNOTATION]
            for d in found
            if d.metadata and d.metadata.annotations and KEY_ANNOTATION in d.metadata.annotations
        ]

    def close(self) -> None:
        """Control-plane shutdown leaves engines running: they are cluster objects, and a restarted control
        plane (or another replica) takes them over and loads their adapters again."""
        with self._lock:
            self._known.clear()
        self._client.close()

    # --- adapters ------------------------------------------------------------------------------------------

    def stage_weights(
        self, handle: EngineHandle, name: str, prefix: str, local: Path, replica: Replica | None = None
    ) -> str:
        """Has the engine pod's fetcher (the replica's own, when it names one) copy `prefix` from storage; returns
        the path on the engine."""
        fetch_url = replica.fetch_url if replica is not None else None
        if fetch_url is None:
            svc = self._read(self._core.read_namespaced_service, object_name(handle.key))
            if svc is None:
                raise EngineUnavailable(f"engine {handle.key} has no Service")
            fetch_url = service_url(svc, "fetch")
        source = storage_source(self._settings, prefix)
        try:
            reply = httpx.post(
                f"{fetch_url}/fetch",
                json={"source": source, "name": name},
                headers={"Authorization": f"Bearer {handle.api_key}"},
                timeout=600,
            )
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"the adapter fetcher of {handle.key}: {type(exc).__name__}: {exc}") from exc
        if reply.status_code != 200:
            raise EngineUnavailable(
                f"the adapter fetcher of {handle.key} answered {reply.status_code}: {reply.text[:500]}",
                status=reply.status_code,
            )
        return reply.json()["path"]
