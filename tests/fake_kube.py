"""A fake Kubernetes API server for tests: the real `kubernetes` client talks to it over loopback HTTP.

No real API server (or kind/k3s) can run in this test environment, so this module implements the part
of the Kubernetes REST API that Hone's backends use, following the API's semantics for those objects.

HTTP side (what the client sees), generic over registered resources (`RESOURCES`: batch/v1 jobs, v1 pods,
services, configmaps, secrets, events, apps/v1 deployments and replicasets; `FakeKube.register` adds more):

- POST create: 201 with the stored object (metadata.uid, creationTimestamp, resourceVersion, generation set;
  generateName honoured); 409 AlreadyExists / 422 Invalid (bad DNS name) as proper `Status` objects.
- GET one, LIST (namespaced and across namespaces) with `labelSelector` (equality `a=b`, `a==b`, `a!=b`,
  set-based `a in (x,y)`, `a notin (x)`, existence `a`, `!a`) and `resourceVersion` on the list.
- `?watch=true` on a LIST: ADDED/MODIFIED/DELETED events after the given resourceVersion (or from now),
  one JSON object per line, until `timeoutSeconds` (default 5) passes.
- PUT replace, PATCH (merge-patch and strategic-merge-patch are both applied as a JSON merge patch,
  json-patch add/replace/remove supported); 409 Conflict on a stale metadata.resourceVersion in a PUT.
  Objects with a status subresource (jobs, pods, deployments, replicasets) ignore `status` on the main
  resource and only take it through `/status`. `generation` bumps when `spec` changes.
- `/scale` for deployments and replicasets (autoscaling/v1 Scale; GET, PUT, PATCH).
- `/log` for pods (text; `tailLines` honoured); the text is whatever the controller API set.
- DELETE with `propagationPolicy` (query or DeleteOptions body) and `gracePeriodSeconds`:
  Foreground: dependents (by ownerReferences uid) are deleted first, the owner keeps a deletionTimestamp and
  the `foregroundDeletion` finalizer until they are gone; Background: the owner goes at once, then its
  dependents; Orphan: dependents lose their ownerReference and stay. The default is Background, except for
  batch/v1 Jobs, whose API default is Orphan (as a real server; kubectl sends Background itself).
  Objects with finalizers get a deletionTimestamp and stay until the finalizers are removed.
  Pods that a "kubelet" runs (phase Running, or `graceful_pods` on) with a grace period other than 0
  are deleted gracefully: they get deletionTimestamp/deletionGracePeriodSeconds and stay until the test
  marks them terminated (a controller helper below), then they are removed (once their finalizers are gone),
  as a kubelet would do; a second DELETE with gracePeriodSeconds=0 stops waiting for the kubelet. The Job
  controller copies the pod template's finalizers onto the pods it makes (as the real one does).
- 404 NotFound `Status` for unknown objects and unregistered resources.

Controller side (Python, not HTTP; what the tests use to play the cluster):

    kube = FakeKube().start()            # or `with FakeKube() as kube:`; kube.url is http://127.0.0.1:PORT
    kube.write_kubeconfig(path)          # a kubeconfig for kubernetes.config.new_client_from_config
    kube.client()                        # an ApiClient connected to it
    kube.stop()

    kube.get(plural, namespace, name) / kube.list(plural, namespace=None, selector=None)  # deep copies
    kube.create(obj) / kube.update(plural, namespace, name, fn)  # fn(obj) mutates; bumps resourceVersion
    kube.delete(plural, namespace, name, propagation="Background")
    kube.add_listener(fn)                # fn(event_type, plural, obj) after every change (HTTP thread!)
    kube.wait_for(predicate, timeout=10) # polls predicate() until truthy, returns its value

    Job controller (on by default, `FakeKube(job_controller=False)` turns it off): a created Job gets
    the labels/selector a real API server defaults (controller-uid, job-name) and one Pod, named
    `{job}-xxxxx`, with the template's labels and spec, an ownerReference to the Job (controller: true),
    phase Pending. When a pod of a Job ends, the Job's status follows: Succeeded -> succeeded=1 and
    conditions SuccessCriteriaMet + Complete; Failed -> failed=1 and FailureTarget + Failed
    (reason BackoffLimitExceeded; the Job's backoffLimit is taken as 0, which is what Hone uses).

    kube.pods_of_job(namespace, job_name) -> [pod]
    kube.schedule_pod(ns, pod)                            # PodScheduled=True, nodeName set (still Pending)
    kube.run_pod(ns, pod)                                 # Running, container running, Ready
    kube.succeed_pod(ns, pod, log=None)                   # Succeeded, exitCode 0
    kube.fail_pod(ns, pod, exit_code=1, reason="Error", message=None, log=None)
    kube.oom_kill_pod(ns, pod, log=None)                  # Failed, exitCode 137, reason OOMKilled
    kube.evict_pod(ns, pod, message=...)                  # Failed, status.reason Evicted, DisruptionTarget
    kube.preempt_pod(ns, pod, exit_code=75)               # DisruptionTarget PreemptionByScheduler, Failed
    kube.terminate_pod(ns, pod, exit_code, reason=None, log=None)  # generic; also ends a graceful deletion
    kube.unschedulable_pod(ns, pod, message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    kube.image_pull_backoff(ns, pod, message=..., reason="ImagePullBackOff")  # or "ErrImagePull"
    kube.set_pod_log(ns, pod, text) / kube.append_pod_log(ns, pod, text)
    kube.set_job_failed(ns, job, reason="DeadlineExceeded", message=...)

    kube.requests: list of (method, path) the server answered, for assertions.
    kube.forbidden: set of (method, "pods" | "pods/log" | ...) to answer 403 Forbidden, as RBAC would.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support import wait_for


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    scale_subresource: bool = False
    default_propagation: str = "Background"
    name_rule: str = "subdomain"  # "subdomain" (DNS-1123, <= 253) or "label" (DNS-1035/1123 label, <= 63)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = [
    Resource("", "v1", "pods", "Pod", status_subresource=True),
    Resource("", "v1", "services", "Service", status_subresource=True, name_rule="label"),
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "events", "Event"),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, status_subresource=True, name_rule="label"),
    Resource("batch", "v1", "jobs", "Job", status_subresource=True, default_propagation="Orphan"),
    Resource("apps", "v1", "deployments", "Deployment", status_subresource=True, scale_subresource=True),
    Resource("apps", "v1", "replicasets", "ReplicaSet", status_subresource=True, scale_subresource=True),
]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, **details: Any) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, **details: Any):
        super().__init__(message)
        self.code, self.body = code, status_object(code, reason, message, **details)


# --- label selectors -----------------------------------------------------------------------------------


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def parse_selector(text: str | None) -> Callable[[dict], bool]:
    """A predicate over a labels dict for a label selector string (equality and set-based)."""
    if not text:
        return lambda labels: True
    tests: list[Callable[[dict], bool]] = []
    for part in _split_selector(text):
        match = re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)", part)
        if match:
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
            continue
        match = re.fullmatch(r"([^\s!=]+)\s*(!=|==|=)\s*(\S*)", part)
        if match:
            key, op, value = match.groups()
            if op == "!=":
                tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
            continue
        if part.startswith("!"):
            tests.append(lambda labels, k=part[1:].strip(): k not in labels)
            continue
        if re.fullmatch(r"[^\s!=(),]+", part):
            tests.append(lambda labels, k=part: k in labels)
            continue
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return lambda labels: all(test(labels) for test in tests)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict, ops: list[dict]) -> dict:
    result = copy.deepcopy(target)
    for op in ops:
        path = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = result
        for part in path[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = path[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif op["op"] == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                parent.pop(last, None)
        else:
            raise ApiError(422, "Invalid", f"unsupported json-patch op {op['op']!r}")
    return result


# --- the store -------------------------------------------------------------------------------------------


class FakeKube:
    def __init__(self, *, job_controller: bool = True, graceful_pods: bool = False):
        self.resources: dict[tuple[str, str, str], Resource] = {}
        for resource in RESOURCES:
            self.register(resource)
        self.job_controller = job_controller
        self.graceful_pods = graceful_pods
        self._objects: dict[tuple[str, str, str], dict] = {}  # (qualified plural, namespace, name) -> obj
        self._logs: dict[tuple[str, str], str] = {}
        self._rv = 1
        self._events: list[tuple[int, str, str, dict]] = []  # (rv, type, qualified plural, obj)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Callable[[str, str, dict], None]] = []
        self._pending_notifications: list = []
        self._connections: set = set()
        self.forbidden: set[tuple[str, str]] = set()  # (HTTP method, plural[/subresource]) answered 403
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Controllers of custom resources (tests/fake_kube_jobsets.py), called under the lock: on_create[plural]
        # after an object is stored; on_job_status after a Job's status changes (a JobSet follows its Jobs).
        self.on_create: dict[str, list[Callable[[FakeKube, dict], None]]] = {}
        self.on_job_status: list[Callable[[FakeKube, dict], None]] = []

    def register(self, resource: Resource) -> None:
        self.resources[(resource.group, resource.version, resource.plural)] = resource

    def _resource(self, plural: str) -> Resource:
        for resource in self.resources.values():
            if resource.plural == plural or resource.qualified == plural:
                return resource
        raise KeyError(plural)

    # --- lifecycle ---

    def start(self) -> FakeKube:
        kube = self

        class Handler(_Handler):
            fake = kube

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-kube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            import socket

            for connection in list(self._connections):  # kept-alive client connections go too
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()

    def __enter__(self) -> FakeKube:
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        path = Path(path)
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
                    ],
                }
            )
        )
        return path

    def client(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def add_listener(self, fn: Callable[[str, str, dict], None]) -> None:
        self._listeners.append(fn)

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.02) -> Any:
        return wait_for(predicate, timeout, interval)

    # --- primitive store operations (all under the lock) ---

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _record(self, event_type: str, resource: Resource, obj: dict) -> None:
        self._events.append(
            (int(obj["metadata"]["resourceVersion"]), event_type, resource.qualified, copy.deepcopy(obj))
        )
        del self._events[:-5000]
        self._changed.notify_all()
        pending = [(fn, event_type, resource.plural, copy.deepcopy(obj)) for fn in self._listeners]
        # Listeners run after the lock is released by the caller's thread (see _flush).
        self._pending_notifications.extend(pending)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending_notifications = self._pending_notifications, []
        for fn, event_type, plural, obj in pending:
            fn(event_type, plural, obj)

    def _validate_name(self, resource: Resource, name: str) -> None:
        if resource.name_rule == "label":
            ok = len(name) <= 63 and _LABEL.match(name)
        else:
            ok = len(name) <= 253 and _SUBDOMAIN.match(name)
        if not ok:
            raise ApiError(
                422,
                "Invalid",
                f'{resource.kind} "{name}" is invalid: metadata.name: Invalid value: '
                f'"{name}": a lowercase RFC 1123 {resource.name_rule} must consist of lower case '
                f"alphanumeric characters or '-'",
                name=name,
                kind=resource.kind,
            )
        if resource.plural == "jobs" and len(name) > 63:
            raise ApiError(
                422,
                "Invalid",
                f'Job.batch "{name}" is invalid: metadata.name: must be no more than 63 characters',
                name=name,
                kind=resource.kind,
            )

    def _create(self, resource: Resource, namespace: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "name or generateName is required", kind=resource.kind)
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta["name"]
        self._validate_name(resource, name)
        if resource.namespaced:
            meta["namespace"] = namespace
        key = (resource.qualified, namespace if resource.namespaced else "", name)
        if key in self._objects:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{resource.qualified} "{name}" already exists',
                name=name,
                group=resource.group,
                kind=resource.plural,
            )
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        if resource.status_subresource:
            obj["status"] = obj.get("status") if resource.plural == "pods" and obj.get("status") else {}
        if resource.plural == "jobs":
            self._default_job(obj)
        if resource.plural == "pods":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        self._objects[key] = obj
        self._record("ADDED", resource, obj)
        if resource.plural == "jobs" and self.job_controller:
            self._create_job_pod(obj)
        for hook in self.on_create.get(resource.plural, []):
            hook(self, obj)
        return copy.deepcopy(self._objects.get(key, obj))

    def _default_job(self, job: dict) -> None:
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        spec = job.setdefault("spec", {})
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        labels = template_meta.setdefault("labels", {})
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
        )
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        job["status"] = {}

    def _create_job_pod(self, job: dict) -> None:
        """One pod per Job, or `parallelism` for an Indexed Job: pod i gets completion index i (annotation and
        label, as the real controller sets them) and, under a subdomain, the hostname `{job}-{i}`."""
        indexed = job["spec"].get("completionMode") == "Indexed"
        for index in range(job["spec"].get("parallelism", 1) if indexed else 1):
            template = copy.deepcopy(job["spec"].get("template", {}))
            meta = template.get("metadata", {})
            name = f"{job['metadata']['name'][:57]}-{secrets.token_hex(3)[:5]}"
            if indexed:
                name = f"{job['metadata']['name'][:50]}-{index}-{secrets.token_hex(3)[:5]}"
                for part in ("annotations", "labels"):
                    meta[part] = {**meta.get(part, {}), "batch.kubernetes.io/job-completion-index": str(index)}
                if template.get("spec", {}).get("subdomain"):
                    template["spec"]["hostname"] = f"{job['metadata']['name']}-{index}"
            pod = {
                "metadata": {
                    **meta,
                    "name": name,
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": job["metadata"]["name"],
                            "uid": job["metadata"]["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": template.get("spec", {}),
                "status": {"phase": "Pending", "conditions": []},
            }
            self._create(self._resource("pods"), job["metadata"]["namespace"], pod)
        self._bump_job_status(
            job["metadata"]["namespace"],
            job["metadata"]["name"],
            {"active": job["spec"].get("parallelism", 1) if indexed else 1, "startTime": now_rfc3339(), "ready": 0},
        )

    def _bump_job_status(self, namespace: str, name: str, status: dict) -> None:
        job = self._objects.get(("jobs.batch", namespace, name))
        if job is None:
            return
        job["status"] = {**job.get("status", {}), **status}
        job["metadata"]["resourceVersion"] = self._next_rv()
        self._record("MODIFIED", self._resource("jobs"), job)
        for hook in self.on_job_status:
            hook(self, job)

    def _replace(self, resource: Resource, key: tuple, new: dict, *, subresource: str | None) -> dict:
        old = self._objects[key]
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        expected = meta.get("resourceVersion")
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.qualified} "{key[2]}": '
                "the object has been modified; please apply your changes to the latest version and "
                "try again",
                name=key[2],
                group=resource.group,
                kind=resource.plural,
            )
        if subresource == "status":
            result = copy.deepcopy(old)
            result["status"] = new.get("status", {})
        else:
            result = new
            for field in (
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ):
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
                else:
                    meta.pop(field, None)
            result["apiVersion"], result["kind"] = resource.api_version, resource.kind
            if resource.status_subresource:
                result["status"] = old.get("status", {})
            if result.get("spec") != old.get("spec"):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        result["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key] = result
        self._record("MODIFIED", resource, result)
        self._after_status_change(resource, result)
        self._collect_all()  # finalizers may have been removed, dependents may be gone
        return copy.deepcopy(self._objects.get(key, result))

    def _dependents(self, uid: str) -> list[tuple]:
        return [
            key
            for key, obj in self._objects.items()
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences", []))
        ]

    def _delete(self, resource: Resource, key: tuple, *, propagation: str | None, grace: int | None) -> dict:
        obj = self._objects[key]
        meta = obj["metadata"]
        propagation = propagation or resource.default_propagation
        if propagation not in ("Foreground", "Background", "Orphan"):
            raise ApiError(400, "BadRequest", f"unknown propagationPolicy {propagation!r}")
        dependents = self._dependents(meta["uid"])
        if propagation == "Orphan":
            for dep_key in dependents:
                dep = self._objects[dep_key]
                dep["metadata"]["ownerReferences"] = [
                    r for r in dep["metadata"].get("ownerReferences", []) if r.get("uid") != meta["uid"]
                ]
                if not dep["metadata"]["ownerReferences"]:
                    del dep["metadata"]["ownerReferences"]
                dep["metadata"]["resourceVersion"] = self._next_rv()
                self._record("MODIFIED", self._resource(dep_key[0]), dep)
        graceful = (
            resource.plural == "pods"
            and grace != 0
            and "deletionTimestamp" not in meta
            and obj.get("status", {}).get("phase") not in ("Succeeded", "Failed")
            and (self.graceful_pods or obj.get("status", {}).get("phase") == "Running")
        )
        if resource.plural == "pods" and grace == 0 and "deletionGracePeriodSeconds" in meta:
            del meta["deletionGracePeriodSeconds"]  # a forced deletion does not wait for the kubelet
        if graceful:
            meta["deletionGracePeriodSeconds"] = (
                grace if grace is not None else obj.get("spec", {}).get("terminationGracePeriodSeconds", 30)
            )
        if propagation == "Foreground" and dependents:
            meta.setdefault("finalizers", [])
            if "foregroundDeletion" not in meta["finalizers"]:
                meta["finalizers"].append("foregroundDeletion")
        if meta.get("finalizers") or graceful:
            meta.setdefault("deletionTimestamp", now_rfc3339())
            meta["resourceVersion"] = self._next_rv()
            self._record("MODIFIED", resource, obj)
            result = copy.deepcopy(obj)
        else:
            result = self._remove(key)
        if propagation in ("Foreground", "Background"):
            for dep_key in dependents:
                if dep_key in self._objects and "deletionTimestamp" not in self._objects[dep_key]["metadata"]:
                    self._delete(self._resource(dep_key[0]), dep_key, propagation="Background", grace=grace)
        self._collect_all()
        return result

    def _remove(self, key: tuple) -> dict:
        obj = self._objects.pop(key)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._record("DELETED", self._resource(key[0]), obj)
        self._logs.pop((key[1], key[2]), None) if key[0] == "pods" else None
        if key[0] == "pods":
            for ref in obj["metadata"].get("ownerReferences", []):
                if ref.get("kind") == "Job" and ref.get("controller"):
                    self._job_pod_gone(key[1], ref["name"], obj)
        return copy.deepcopy(obj)

    def _collect(self, key: tuple) -> None:
        obj = self._objects.get(key)
        if obj is None:
            return
        meta = obj["metadata"]
        if "deletionTimestamp" not in meta:
            return
        finalizers = meta.get("finalizers") or []
        if finalizers == ["foregroundDeletion"] and not self._dependents(meta["uid"]):
            meta["finalizers"] = []
            finalizers = []
        graceful_wait = (
            key[0] == "pods"
            and "deletionGracePeriodSeconds" in meta
            and obj.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        )
        if not finalizers and not graceful_wait:
            self._remove(key)

    def _collect_all(self) -> None:
        for _ in range(10):
            before = len(self._objects)
            for key in list(self._objects):
                self._collect(key)
            if len(self._objects) == before:
                return

    # --- the Job controller ---

    def _after_status_change(self, resource: Resource, obj: dict) -> None:
        if resource.plural != "pods":
            return
        phase = obj.get("status", {}).get("phase")
        for ref in obj["metadata"].get("ownerReferences", []):
            if ref.get("kind") != "Job" or not ref.get("controller") or not self.job_controller:
                continue
            key = ("jobs.batch", obj["metadata"]["namespace"], ref["name"])
            job = self._objects.get(key)
            if job is None or _finished(job):
                continue
            now = now_rfc3339()
            if phase == "Running":
                ready = any(
                    c.get("type") == "Ready" and c.get("status") == "True" for c in obj["status"].get("conditions", [])
                )
                self._bump_job_status(key[1], key[2], {"active": 1, "ready": int(ready)})
            elif phase == "Succeeded" and self._succeeded_pods(key) < job["spec"].get("completions", 1):
                self._bump_job_status(key[1], key[2], {"succeeded": self._succeeded_pods(key)})
            elif phase == "Succeeded":
                self._bump_job_status(
                    key[1],
                    key[2],
                    {
                        "active": 0,
                        "ready": 0,
                        "succeeded": self._succeeded_pods(key),
                        "completionTime": now,
                        "conditions": [
                            _condition(
                                "SuccessCriteriaMet",
                                "CompletionsReached",
                                "Reached expected number of succeeded pods",
                                now,
                            ),
                            _condition(
                                "Complete", "CompletionsReached", "Reached expected number of succeeded pods", now
                            ),
                        ],
                    },
                )
            elif phase == "Failed":
                self._fail_job(key, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if "deletionTimestamp" in obj["metadata"]:
            self._collect(("pods", obj["metadata"]["namespace"], obj["metadata"]["name"]))

    def _succeeded_pods(self, key: tuple) -> int:
        uid = self._objects[key]["metadata"]["uid"]
        return sum(
            1
            for (q, _, _), obj in self._objects.items()
            if q == "pods"
            and obj.get("status", {}).get("phase") == "Succeeded"
            and any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences", []))
        )

    def _fail_job(self, key: tuple, reason: str, message: str) -> None:
        now = now_rfc3339()
        self._bump_job_status(
            key[1],
            key[2],
            {
                "active": 0,
                "ready": 0,
                "failed": self._objects[key].get("status", {}).get("failed", 0) + 1,
                "conditions": [
                    _condition("FailureTarget", reason, message, now),
                    _condition("Failed", reason, message, now),
                ],
            },
        )
        # A failed Job (backoffLimit 0) then terminates its other active pods, as the real controller does.
        if key not in self._objects:
            return
        for dep_key in self._dependents(self._objects[key]["metadata"]["uid"]):
            dep = self._objects.get(dep_key)
            if (
                dep is not None
                and dep_key[0] == "pods"
                and dep.get("status", {}).get("phase") not in ("Succeeded", "Failed")
                and "deletionTimestamp" not in dep["metadata"]
            ):
                self._delete(self._resource("pods"), dep_key, propagation=None, grace=None)

    def _job_pod_gone(self, namespace: str, job_name: str, pod: dict) -> None:
        key = ("jobs.batch", namespace, job_name)
        job = self._objects.get(key)
        if job is None or _finished(job) or "deletionTimestamp" in job["metadata"] or not self.job_controller:
            return
        if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            # A pod deleted before it ended counts as failed (backoffLimit 0).
            self._fail_job(key, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    # --- the controller API (Python side) ---

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        resource = self._resource(plural)
        with self._lock:
            obj = self._objects.get((resource.qualified, namespace if resource.namespaced else "", name))
            return copy.deepcopy(obj) if obj else None

    def list(self, plural: str, namespace: str | None = None, selector: str | None = None) -> list[dict]:
        resource, matches = self._resource(plural), parse_selector(selector)
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (q, ns, _), obj in sorted(self._objects.items())
                if q == resource.qualified
                and (namespace is None or ns == namespace)
                and matches(obj["metadata"].get("labels") or {})
            ]

    def create(self, obj: dict) -> dict:
        resource = self._resource_for(obj)
        with self._lock:
            result = self._create(resource, obj.get("metadata", {}).get("namespace", "default"), obj)
        self._flush()
        return result

    def _resource_for(self, obj: dict) -> Resource:
        for resource in self.resources.values():
            if resource.api_version == obj.get("apiVersion") and resource.kind == obj.get("kind"):
                return resource
        raise KeyError(f"{obj.get('apiVersion')} {obj.get('kind')}")

    def update(self, plural: str, namespace: str, name: str, fn: Callable[[dict], Any]) -> dict:
        resource = self._resource(plural)
        key = (resource.qualified, namespace if resource.namespaced else "", name)
        with self._lock:
            obj = copy.deepcopy(self._objects[key])
            fn(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._objects[key] = obj
            self._record("MODIFIED", resource, obj)
            self._after_status_change(resource, obj)
            self._collect_all()
            result = copy.deepcopy(obj)
        self._flush()
        return result

    def delete(
        self, plural: str, namespace: str, name: str, propagation: str | None = None, grace: int | None = None
    ) -> dict:
        resource = self._resource(plural)
        with self._lock:
            result = self._delete(
                resource,
                (resource.qualified, namespace if resource.namespaced else "", name),
                propagation=propagation,
                grace=grace,
            )
        self._flush()
        return result

    def pods_of_job(self, namespace: str, job_name: str) -> list[dict]:
        return self.list("pods", namespace, f"batch.kubernetes.io/job-name={job_name}")

    def set_pod_log(self, namespace: str, pod: str, text: str) -> None:
        with self._lock:
            self._logs[(namespace, pod)] = text

    def append_pod_log(self, namespace: str, pod: str, text: str) -> None:
        with self._lock:
            self._logs[(namespace, pod)] = self._logs.get((namespace, pod), "") + text

    def pod_log(self, namespace: str, pod: str) -> str:
        with self._lock:
            return self._logs.get((namespace, pod), "")

    def _set_condition(
        self, status: dict, type_: str, value: str, reason: str | None = None, message: str | None = None
    ) -> None:
        conditions = [c for c in status.get("conditions", []) if c.get("type") != type_]
        condition = {"type": type_, "status": value, "lastTransitionTime": now_rfc3339()}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        status["conditions"] = conditions + [condition]

    def _container_names(self, pod: dict) -> list[str]:
        return [c["name"] for c in pod.get("spec", {}).get("containers", [])] or ["main"]

    def _container_statuses(self, pod: dict, state: dict, ready: bool = False) -> list[dict]:
        images = {c["name"]: c.get("image", "") for c in pod.get("spec", {}).get("containers", [])}
        return [
            {
                "name": name,
                "image": images.get(name, ""),
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
                "started": "running" in state,
                "state": state,
            }
            for name in self._container_names(pod)
        ]

    def schedule_pod(self, namespace: str, pod: str, node: str = "gpu-node-1") -> dict:
        def change(obj):
            obj["spec"]["nodeName"] = node
            self._set_condition(obj["status"], "PodScheduled", "True")

        return self.update("pods", namespace, pod, change)

    def run_pod(self, namespace: str, pod: str, node: str = "gpu-node-1") -> dict:
        def change(obj):
            obj["spec"]["nodeName"] = obj["spec"].get("nodeName") or node
            status = obj["status"]
            status.update(
                {
                    "phase": "Running",
                    "startTime": status.get("startTime", now_rfc3339()),
                    "hostIP": "10.0.0.1",
                    "podIP": "10.1.0.7",
                }
            )
            self._set_condition(status, "PodScheduled", "True")
            self._set_condition(status, "Initialized", "True")
            self._set_condition(status, "ContainersReady", "True")
            self._set_condition(status, "Ready", "True")
            status["containerStatuses"] = self._container_statuses(
                obj, {"running": {"startedAt": now_rfc3339()}}, ready=True
            )

        return self.update("pods", namespace, pod, change)

    def terminate_pod(
        self,
        namespace: str,
        pod: str,
        exit_code: int,
        reason: str | None = None,
        message: str | None = None,
        log: str | None = None,
        pod_reason: str | None = None,
        disruption: tuple[str, str] | None = None,
    ) -> dict:
        if log is not None:
            self.set_pod_log(namespace, pod, log)

        def change(obj):
            status = obj["status"]
            status["phase"] = "Succeeded" if exit_code == 0 and not pod_reason else "Failed"
            status.setdefault("startTime", now_rfc3339())
            if pod_reason:
                status["reason"] = pod_reason
                if message:
                    status["message"] = message
            if disruption:
                self._set_condition(status, "DisruptionTarget", "True", disruption[0], disruption[1])
            self._set_condition(status, "Ready", "False", "PodCompleted" if exit_code == 0 else "PodFailed")
            self._set_condition(status, "ContainersReady", "False")
            terminated = {
                "exitCode": exit_code,
                "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "startedAt": status.get("startTime"),
                "finishedAt": now_rfc3339(),
            }
            if message and not pod_reason:
                terminated["message"] = message
            status["containerStatuses"] = self._container_statuses(obj, {"terminated": terminated})

        return self.update("pods", namespace, pod, change)

    def succeed_pod(self, namespace: str, pod: str, log: str | None = None) -> dict:
        return self.terminate_pod(namespace, pod, 0, log=log)

    def fail_pod(
        self,
        namespace: str,
        pod: str,
        exit_code: int = 1,
        reason: str = "Error",
        message: str | None = None,
        log: str | None = None,
    ) -> dict:
        return self.terminate_pod(namespace, pod, exit_code, reason, message, log)

    def oom_kill_pod(self, namespace: str, pod: str, log: str | None = None) -> dict:
        return self.terminate_pod(namespace, pod, 137, "OOMKilled", log=log)

    def evict_pod(
        self,
        namespace: str,
        pod: str,
        message: str = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.",
        exit_code: int = 137,
    ) -> dict:
        return self.terminate_pod(
            namespace,
            pod,
            exit_code,
            "Error",
            message,
            pod_reason="Evicted",
            disruption=("TerminationByKubelet", message),
        )

    def preempt_pod(self, namespace: str, pod: str, exit_code: int = 75, log: str | None = None) -> dict:
        """The scheduler preempted it for a higher-priority pod: DisruptionTarget, SIGTERM, then gone."""
        return self.terminate_pod(
            namespace,
            pod,
            exit_code,
            "Error",
            log=log,
            disruption=("PreemptionByScheduler", "default-scheduler: preempting to accommodate a higher priority pod"),
        )

    def unschedulable_pod(
        self,
        namespace: str,
        pod: str,
        message: str = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. "
        "preemption: 0/3 nodes are available: 3 No preemption victims "
        "found for incoming pod.",
    ) -> dict:
        def change(obj):
            obj["status"]["phase"] = "Pending"
            self._set_condition(obj["status"], "PodScheduled", "False", "Unschedulable", message)

        return self.update("pods", namespace, pod, change)

    def image_pull_backoff(
        self, namespace: str, pod: str, reason: str = "ImagePullBackOff", message: str | None = None
    ) -> dict:
        def change(obj):
            image = obj["spec"]["containers"][0].get("image", "")
            text = message or (
                f'Back-off pulling image "{image}"'
                if reason == "ImagePullBackOff"
                else f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found'
            )
            obj["spec"]["nodeName"] = obj["spec"].get("nodeName") or "gpu-node-1"
            obj["status"]["phase"] = "Pending"
            self._set_condition(obj["status"], "PodScheduled", "True")
            obj["status"]["containerStatuses"] = self._container_statuses(
                obj, {"waiting": {"reason": reason, "message": text}}
            )

        return self.update("pods", namespace, pod, change)

    def set_job_failed(
        self,
        namespace: str,
        job: str,
        reason: str = "DeadlineExceeded",
        message: str = "Job was active longer than specified deadline",
    ) -> None:
        with self._lock:
            self._fail_job(("jobs.batch", namespace, job), reason, message)
            for key in self._dependents(self._objects[("jobs.batch", namespace, job)]["metadata"]["uid"]):
                self._delete(self._resource(key[0]), key, propagation="Background", grace=None)
        self._flush()

    # --- HTTP dispatch ---

    def handle(self, method: str, raw_path: str, query: dict[str, str], body: Any, content_type: str):
        """Returns (status, object or text, content type) or a generator of watch lines."""
        path = [p for p in raw_path.split("/") if p]
        if path[:1] == ["api"] and len(path) >= 2:
            group, version, rest = "", path[1], path[2:]
        elif path[:1] == ["apis"] and len(path) >= 3:
            group, version, rest = path[1], path[2], path[3:]
        elif raw_path in ("/version", "/version/"):
            return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"}, None
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = ""
        if len(rest) >= 2 and rest[0] == "namespaces" and (len(rest) > 2 or (group, version) != ("", "v1")):
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resource = self.resources.get((group, version, rest[0]))
        if resource is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if not resource.namespaced:
            namespace = ""
        target = resource.plural + (f"/{subresource}" if subresource else "")
        if (method, target) in self.forbidden:
            raise ApiError(
                403,
                "Forbidden",
                f'{resource.qualified} "{name or ""}" is forbidden: User '
                f'"system:serviceaccount:{namespace}:hone-control-plane" cannot {method.lower()} '
                f'resource "{target}" in API group "{resource.group}" in the namespace "{namespace}"',
                name=name or "",
                group=resource.group,
                kind=resource.plural,
            )
        with self._lock:
            result = self._dispatch(resource, method, namespace, name, subresource, query, body, content_type)
        self._flush()
        return result

    def _key(self, resource: Resource, namespace: str, name: str) -> tuple:
        return (resource.qualified, namespace, name)

    def _get_or_404(self, resource: Resource, namespace: str, name: str) -> dict:
        obj = self._objects.get(self._key(resource, namespace, name))
        if obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'{resource.qualified} "{name}" not found',
                name=name,
                group=resource.group,
                kind=resource.plural,
            )
        return obj

    def _dispatch(self, resource, method, namespace, name, subresource, query, body, content_type):
        if name is None:
            if method == "GET":
                if query.get("watch") in ("true", "1"):
                    return 200, self._watch(resource, namespace, query), "watch"
                matches = parse_selector(query.get("labelSelector"))
                items = [
                    copy.deepcopy(obj)
                    for (q, ns, _), obj in sorted(self._objects.items())
                    if q == resource.qualified
                    and (not namespace or ns == namespace)
                    and matches(obj["metadata"].get("labels") or {})
                ]
                return (
                    200,
                    {
                        "kind": f"{resource.kind}List",
                        "apiVersion": resource.api_version,
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": items,
                    },
                    None,
                )
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the request body must be an object")
                meta = body.get("metadata") or {}
                if resource.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
                    raise ApiError(
                        400,
                        "BadRequest",
                        "the namespace of the provided object does not match the namespace sent on the request",
                    )
                return 201, self._create(resource, namespace, body), None
            if method == "DELETE":  # deletecollection
                matches = parse_selector(query.get("labelSelector"))
                keys = [
                    k
                    for k, obj in self._objects.items()
                    if k[0] == resource.qualified
                    and (not namespace or k[1] == namespace)
                    and matches(obj["metadata"].get("labels") or {})
                ]
                items = [
                    self._delete(resource, k, propagation=_propagation(query, body), grace=_grace(query, body))
                    for k in keys
                    if k in self._objects
                ]
                return (
                    200,
                    {
                        "kind": f"{resource.kind}List",
                        "apiVersion": resource.api_version,
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": items,
                    },
                    None,
                )
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
        key = self._key(resource, namespace, name)
        if subresource == "log":
            if resource.plural != "pods" or method != "GET":
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            self._get_or_404(resource, namespace, name)
            text = self._logs.get((namespace, name), "")
            if query.get("tailLines"):
                lines = text.splitlines(keepends=True)
                text = "".join(lines[-int(query["tailLines"]) :]) if int(query["tailLines"]) else ""
            return 200, text, "text/plain"
        if subresource == "scale":
            if not resource.scale_subresource:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            obj = self._get_or_404(resource, namespace, name)
            if method in ("PUT", "PATCH"):
                scale = self._scale(obj)
                scale = json_patch(scale, body) if isinstance(body, list) else merge_patch(scale, body)
                new = copy.deepcopy(obj)
                new["spec"]["replicas"] = scale.get("spec", {}).get("replicas", 0)
                new["metadata"].pop("resourceVersion", None)
                self._replace(resource, key, new, subresource=None)
                obj = self._objects[key]
            elif method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
            return 200, self._scale(obj), None
        if subresource not in (None, "status"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if subresource == "status" and not resource.status_subresource:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        obj = self._get_or_404(resource, namespace, name)
        if method == "GET":
            return 200, copy.deepcopy(obj), None
        if method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the request body must be an object")
            return 200, self._replace(resource, key, body, subresource=subresource), None
        if method == "PATCH":
            if isinstance(body, list) or "json-patch" in content_type:
                new = json_patch(obj, body)
            else:
                new = merge_patch(obj, body)
                if not (body.get("metadata") or {}).get("resourceVersion"):
                    new["metadata"].pop("resourceVersion", None)
            if isinstance(body, list):
                new["metadata"].pop("resourceVersion", None)
            return 200, self._replace(resource, key, new, subresource=subresource), None
        if method == "DELETE":
            if subresource:
                raise ApiError(405, "MethodNotAllowed", "DELETE is not supported on a subresource")
            result = self._delete(resource, key, propagation=_propagation(query, body), grace=_grace(query, body))
            return 200, result, None
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _scale(self, obj: dict) -> dict:
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 1)},
            "status": {
                "replicas": obj.get("status", {}).get("replicas", 0),
                "selector": ",".join(
                    f"{k}={v}" for k, v in obj.get("spec", {}).get("selector", {}).get("matchLabels", {}).items()
                ),
            },
        }

    def _watch(self, resource: Resource, namespace: str, query: dict):
        matches = parse_selector(query.get("labelSelector"))
        since = int(query.get("resourceVersion") or 0) or self._rv
        timeout = float(query.get("timeoutSeconds") or 5)

        def lines():
            deadline = time.monotonic() + timeout
            position = since
            while True:
                with self._lock:
                    batch = [
                        (rv, t, obj)
                        for rv, t, q, obj in self._events
                        if rv > position
                        and q == resource.qualified
                        and (not namespace or obj["metadata"].get("namespace") == namespace)
                    ]
                    if not batch:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        self._changed.wait(min(remaining, 0.5))
                        continue
                for rv, event_type, obj in batch:
                    position = max(position, rv)
                    if matches(obj["metadata"].get("labels") or {}):
                        yield (json.dumps({"type": event_type, "object": obj}) + "\n").encode()

        return lines()


def _finished(job: dict) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in job.get("status", {}).get("conditions", [])
    )


def _condition(type_: str, reason: str, message: str, now: str) -> dict:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def _propagation(query: dict, body: Any) -> str | None:
    if query.get("propagationPolicy"):
        return query["propagationPolicy"]
    if isinstance(body, dict):
        if body.get("propagationPolicy"):
            return body["propagationPolicy"]
        if body.get("orphanDependents") is True:
            return "Orphan"
        if body.get("orphanDependents") is False:
            return "Background"
    if query.get("orphanDependents") == "true":
        return "Orphan"
    return None


def _grace(query: dict, body: Any) -> int | None:
    if query.get("gracePeriodSeconds") not in (None, ""):
        return int(query["gracePeriodSeconds"])
    if isinstance(body, dict) and body.get("gracePeriodSeconds") is not None:
        return int(body["gracePeriodSeconds"])
    return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.fake._connections.add(self.connection)

    def finish(self) -> None:
        self.fake._connections.discard(self.connection)
        super().finish()

    def _respond(self, code: int, payload: Any, content_type: str | None = None) -> None:
        if content_type == "watch":
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for line in payload:
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.fake.requests.append((method, parts.path))
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            self._respond(400, status_object(400, "BadRequest", "the request body is not JSON"))
            return
        try:
            code, payload, content_type = self.fake.handle(
                method, parts.path, query, body, self.headers.get("Content-Type") or ""
            )
        except ApiError as exc:
            self._respond(exc.code, exc.body)
            return
        except Exception as exc:  # a bug in the fake: say so, as a 500 Status
            self._respond(500, status_object(500, "InternalError", f"fake kube: {exc!r}"))
            return
        self._respond(code, payload, content_type)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")
