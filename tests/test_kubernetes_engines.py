"""The Kubernetes endpoint backend (service/engines/kubernetes.py) and the adapter fetcher (inference/fetcher.py).

What is fake here, and why: no Kubernetes API server can run on these machines, so the backend talks (with the
real `kubernetes` client library, over loopback HTTP) to the fake API server in tests/fake_kube.py; and vLLM
cannot run here (no GPU), so this module's simulated cluster runs each engine pod as local processes: the
FAKE engine of tests/fake_engine (the built-in engine's torch-free server, which takes `vllm serve`'s flags,
around a generator that answers with a digest of its weights: what is tested here is the backend, not the
model, and the built-in engine would import torch and load a model at each pod start) with the container's own
arguments, and the real fetcher sidecar pointed at moto's S3. Everything else is real: the control plane, the trainer,
S3 (moto's server), the objects the backend generates (checked offline against the Kubernetes OpenAPI schema
with kubernetes_validate) and the openai SDK as the client."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from inference.launcher import served_lora_rank
from service.engines import EngineSpec, EngineStartError
from service.engines.kubernetes import (
    DEPLOYMENT_TEMPLATE,
    SERVICE_TEMPLATE,
    build_objects,
    object_name,
    service_url,
)
from service.settings import Settings
from tests.fake_engine.engine import answer_of
from tests.support import FAKE_ENGINE_PYTHON, REPO, free_port, start_python, wait_for, wait_http

K8S_VERSION = kubernetes_validate.latest_version()


def _validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _containers(deployment: dict) -> dict:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


# --- 1. generated objects -----------------------------------------------------------------------------------


def test_templates_are_valid_manifests_as_shipped():
    templates = Settings().kubernetes.resolved_templates_dir
    for name in (DEPLOYMENT_TEMPLATE, SERVICE_TEMPLATE):
        _validate(yaml.safe_load((templates / name).read_text()))


@pytest.mark.parametrize("engine", ["vllm", "builtin"])
def test_generated_deployment_and_service(engine, tmp_path):
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    settings = Settings(
        data_dir=tmp_path,
        k8s_namespace="tuning",
        k8s_inference_image="registry.local/inf:7",
        k8s_gpus_per_engine=2,
        k8s_node_selector={"gpu": "h100"},
        k8s_tolerations=tolerations,
        k8s_secret_name="storage-creds",
    )
    template_file = tmp_path / "pinned.jinja"
    template_file.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    spec = EngineSpec(
        "base:acme/Tiny_Chat",
        engine,
        "acme/tiny-chat",
        "acme/Tiny_Chat",
        max_loras=3,
        max_cpu_loras=6,
        max_lora_rank=20,
        chat_template=str(template_file),
    )
    deployment, service, digest = build_objects(settings, spec)
    _validate(deployment)
    _validate(service)

    name = object_name(spec.key)
    assert len(name) <= 63 and name.startswith("hone-engine-base-acme-tiny-chat-")
    assert object_name("base:acme/tiny_chat") != name  # keys that slug alike still get their own objects
    for obj in (deployment, service):
        assert obj["metadata"]["name"] == name and obj["metadata"]["namespace"] == "tuning"
        assert obj["metadata"]["annotations"]["hone.dev/engine-key"] == spec.key
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items() and selector["hone.dev/engine"] == name
    assert service["spec"]["selector"] == selector  # the Service reaches this engine's pod only

    shipped = yaml.safe_load((settings.kubernetes.resolved_templates_dir / DEPLOYMENT_TEMPLATE).read_text())
    assert pod["spec"]["volumes"] == shipped["spec"]["template"]["spec"]["volumes"]  # the template's, kept
    containers = _containers(deployment)
    main, fetcher = containers["engine"], containers["fetcher"]
    assert main["image"] == fetcher["image"] == "registry.local/inf:7"
    command = main["command"] + main["args"]
    if engine == "vllm":
        assert command[:3] == ["vllm", "serve", "acme/tiny-chat"]
    else:
        assert command[:5] == ["python3", "-m", "inference", "--model", "acme/tiny-chat"]
    flags = dict(itertools.pairwise(command))
    assert "--enable-lora" in command
    assert flags["--served-model-name"] == "acme/Tiny_Chat"
    assert flags["--max-loras"] == "3" and flags["--max-cpu-loras"] == "6"
    assert flags["--max-lora-rank"] == str(served_lora_rank(20)) == "32"
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "8000"
    assert flags["--chat-template"] == template_file.read_text()  # inline: the pod cannot see our disk
    env = _env(main)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": name, "key": "api-key"}}  # never a literal
    assert _env(fetcher)["HONE_FETCHER_API_KEY"] == {"secretKeyRef": {"name": name, "key": "api-key"}}
    assert fetcher["envFrom"] == [{"secretRef": {"name": "storage-creds", "optional": True}}]
    assert main["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"name": "http", "containerPort": 8000} in main["ports"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == main["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in fetcher["resources"].get("limits", {})
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert pod["spec"]["tolerations"] == tolerations
    mounts = {m["name"]: m["mountPath"] for c in (main, fetcher) for m in c["volumeMounts"]}
    assert mounts["adapters"] == "/adapters"
    assert {"name": "adapters", "mountPath": "/adapters"} in main["volumeMounts"]
    assert {"name": "adapters", "mountPath": "/adapters"} in fetcher["volumeMounts"]
    assert fetcher["command"] == ["python3", "-m", "inference.fetcher"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "fetch": 8001}

    # A Hugging Face id needs no init container; built-in and stored weights are put in /models/base first.
    assert "initContainers" not in pod["spec"]
    assert {"name": "models", "mountPath": "/models"} in main["volumeMounts"]
    for source, fetched in (
        ("builtin:hone-tiny", "builtin:hone-tiny"),
        ("storage:jobs/ftjob-9/model/", "s3://hone/blobs/jobs/ftjob-9/model/"),
    ):
        staged = dataclasses.replace(spec, model_path=str(tmp_path / "cache" / "x"), model_source=source)
        s3_settings = settings.model_copy(
            update={"storage": settings.storage.model_copy(update={"storage_url": "s3://hone/blobs"})}
        )
        s3_settings.__dict__.pop("resolved_storage_url", None)  # a cached_property of the copy
        deployment, _, _ = build_objects(s3_settings, staged)
        _validate(deployment)
        (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
        assert init["name"] == "weights" and init["image"] == "registry.local/inf:7"
        assert init["command"] + init["args"] == [
            "python3",
            "-m",
            "inference.fetcher",
            "--root",
            "/models",
            "--once",
            fetched,
            "--name",
            "base",
        ]
        assert init["envFrom"] == [{"secretRef": {"name": "storage-creds", "optional": True}}]
        assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
        served = _containers(deployment)["engine"]
        assert dict(itertools.pairwise(served["command"] + served["args"])).get(
            "--model", "/models/base"
        ) == "/models/base" and str(tmp_path) not in json.dumps(deployment)  # nothing of our disk

    # CPU engines ask for no GPU; another spec is another digest (so ensure replaces the pod).
    cpu = Settings(data_dir=tmp_path, k8s_gpus_per_engine=0)
    deployment, _, other = build_objects(cpu, spec)
    _validate(deployment)
    assert "nvidia.com/gpu" not in json.dumps(deployment) and other != digest
    with pytest.raises(kubernetes_validate.ValidationError):  # the schema check is a real one
        _validate({**deployment, "spec": {**deployment["spec"], "replicas": "one"}})


def test_service_url_is_cluster_dns_or_loopback():
    from kubernetes.client import V1ObjectMeta, V1Service, V1ServicePort, V1ServiceSpec

    ports = [V1ServicePort(name="http", port=8000), V1ServicePort(name="fetch", port=8001)]
    svc = V1Service(
        metadata=V1ObjectMeta(name="hone-engine-x", namespace="tuning"),
        spec=V1ServiceSpec(cluster_ip="10.96.4.2", ports=ports),
    )
    assert service_url(svc, "http") == "http://hone-engine-x.tuning.svc.cluster.local:8000"
    svc.spec.cluster_ip = "127.31.0.9"
    assert service_url(svc, "fetch") == "http://127.31.0.9:8001"


def test_backend_lifecycle_on_the_fake_api_server(tmp_path):
    """ensure / get / scale / keys / stop against the fake API server, with the test playing the cluster (one
    pod, made Ready by hand) and a stub answering /health on the Service's loopback clusterIP."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from service.engines import engine_api_keys
    from service.engines.kubernetes import KubernetesEngines
    from tests.fake_kube import FakeKube

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    stub = ThreadingHTTPServer(("127.78.0.1", 0), Healthy)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    with FakeKube(job_controller=False) as kube:
        settings = Settings(
            data_dir=tmp_path,
            k8s_kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"),
            k8s_namespace="hone",
            endpoint_backend="kubernetes",
            engine_start_timeout_s=20,
        )
        backend = KubernetesEngines(settings)
        spec = EngineSpec("base:acme/tiny", "vllm", "acme/tiny", "acme/tiny", 2, 2, 16)
        name = object_name(spec.key)

        def play_cluster():
            kube.wait_for(lambda: kube.get("deployments", "hone", name) and kube.get("services", "hone", name))

            def service(obj):
                obj["spec"]["clusterIP"] = "127.78.0.1"
                obj["spec"]["ports"][0]["port"] = stub.server_address[1]

            kube.update("services", "hone", name, service)
            labels = kube.get("deployments", "hone", name)["spec"]["template"]["metadata"]["labels"]
            kube.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"{name}-1", "namespace": "hone", "labels": labels},
                    "spec": {"containers": [{"name": "engine", "image": "x"}]},
                }
            )
            kube.run_pod("hone", f"{name}-1")
            kube.update(
                "deployments",
                "hone",
                name,
                lambda o: o.update(
                    status={"observedGeneration": o["metadata"]["generation"], "replicas": 1, "readyReplicas": 1}
                ),
            )

        player = threading.Thread(target=play_cluster)
        player.start()
        handle = backend.ensure(spec)
        player.join()
        assert handle.url == f"http://127.78.0.1:{stub.server_address[1]}"
        secret = kube.get("secrets", "hone", name)
        assert base64.b64decode(secret["data"]["api-key"]).decode() == handle.api_key
        assert engine_api_keys(settings)(spec.key) == handle.api_key  # what every gateway worker reads
        assert backend.get(spec.key) == handle and backend.keys() == [spec.key]
        assert KubernetesEngines(settings).get(spec.key) is None  # another process has loaded no adapters

        # The engine container restarted in place: its runtime-loaded adapters are gone, so the engine is.
        kube.update("pods", "hone", f"{name}-1", lambda o: o["status"]["containerStatuses"][0].update(restartCount=1))
        assert backend.get(spec.key) is None
        again = backend.ensure(spec)  # nothing to change in the cluster: the same engine, ready, same key
        assert again == handle and backend.get(spec.key) == handle

        # A pod that cannot pull its image ends a start at once, saying why.
        other = EngineSpec("ep-badimage", "vllm", "acme/tiny", "acme/tiny", 2, 2, 16)
        bad = object_name(other.key)

        def pull_fails():
            kube.wait_for(lambda: kube.get("deployments", "hone", bad))
            kube.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"{bad}-1", "namespace": "hone", "labels": {"hone.dev/engine": bad}},
                    "spec": {"containers": [{"name": "engine", "image": "x"}]},
                }
            )
            kube.image_pull_backoff("hone", f"{bad}-1")

        player = threading.Thread(target=pull_fails)
        player.start()
        started = time.monotonic()
        with pytest.raises(EngineStartError, match="ImagePullBackOff"):
            backend.ensure(other)
        player.join()
        assert time.monotonic() - started < 10
        backend.stop(other.key)

        backend.scale(spec.key, 0)
        assert kube.get("deployments", "hone", name)["spec"]["replicas"] == 0
        assert backend.get(spec.key) is None and backend.keys() == [spec.key]  # kept, at zero
        backend.stop(spec.key)
        assert not any(kube.get(kind, "hone", name) for kind in ("deployments", "services", "secrets"))
        assert backend.keys() == []
        backend.close()
    stub.shutdown()


# --- the fetcher sidecar ------------------------------------------------------------------------------------


@pytest.fixture
def fetcher(moto, tmp_path):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **moto.env(),
        "HONE_FETCHER_API_KEY": "sk-engine",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference.fetcher",
            "--root",
            str(tmp_path / "adapters"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc=proc)
    yield url, tmp_path / "adapters"
    proc.terminate()
    proc.wait(10)


def test_fetcher_copies_an_adapter_from_s3(fetcher, moto):
    url, root = fetcher
    s3 = moto.client()
    s3.create_bucket(Bucket="fetch-tests")
    files = {
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": b"\0" * 3000,
        "tok/tokenizer.json": b"{}",
        "trainer_state.pt": b"not served",
    }
    for rel, body in files.items():
        s3.put_object(Bucket="fetch-tests", Key=f"blobs/jobs/j1/adapter/{rel}", Body=body)
    s3.put_object(Bucket="fetch-tests", Key="blobs/jobs/j1/adapter-other/x", Body=b"not under the prefix")
    auth = {"Authorization": "Bearer sk-engine"}
    source = "s3://fetch-tests/blobs/jobs/j1/adapter/"
    body = {"source": source, "name": "ep-1"}

    assert httpx.post(url + "/fetch", json=body).status_code == 401  # the engine's API key only
    reply = httpx.post(url + "/fetch", json=body, headers=auth, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"path": str(root / "ep-1"), "files": 3, "cached": False}
    got = {str(p.relative_to(root / "ep-1")): p.read_bytes() for p in (root / "ep-1").rglob("*") if p.is_file()}
    assert got == {**{k: v for k, v in files.items() if k != "trainer_state.pt"}, ".hone-source": source.encode()}
    assert sorted(p.name for p in root.iterdir()) == ["ep-1"]  # no partial copies left behind
    assert httpx.post(url + "/fetch", json=body, headers=auth).json()["cached"] is True

    missing = httpx.post(
        url + "/fetch", json={"source": "s3://fetch-tests/blobs/jobs/none/", "name": "ep-2"}, headers=auth
    )
    assert missing.status_code == 404 and "No files" in missing.json()["error"]["message"]
    assert httpx.post(url + "/fetch", json={"source": source, "name": "../escape"}, headers=auth).status_code == 400
    assert httpx.post(url + "/fetch", json={"source": "http://x/", "name": "ep-3"}, headers=auth).status_code == 400
    assert httpx.post(url + "/evict", json={"name": "ep-1"}, headers=auth).json() == {"removed": True}
    assert not (root / "ep-1").exists()


def test_fetcher_once_stages_base_weights_as_an_init_container(moto, tmp_path):
    """`--once`: what init container `weights` runs; exit 0 with the weights in place, else non-zero."""
    s3 = moto.client()
    s3.create_bucket(Bucket="fetch-once")
    s3.put_object(Bucket="fetch-once", Key="b/jobs/j1/model/config.json", Body=b'{"model_type": "llama"}')
    env = {**os.environ, **moto.env(), "OMP_WAIT_POLICY": "PASSIVE"}

    def once(source: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "inference.fetcher",
                "--root",
                str(tmp_path / "models"),
                "--once",
                source,
                "--name",
                "base",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = once("s3://fetch-once/b/jobs/j1/model/")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / "base" / "config.json").read_bytes() == b'{"model_type": "llama"}'
    missing = once("s3://fetch-once/b/jobs/none/")
    assert missing.returncode == 1 and "No files under s3://fetch-once/b/jobs/none/" in missing.stderr
    unknown = once("builtin:gpt-9")
    assert unknown.returncode == 1 and "unknown built-in model 'gpt-9'" in unknown.stderr


# --- 2. the backend through the real control plane, on the fake cluster --------------------------------------


class SimulatedEngines:
    """Plays the Deployment controller and the kubelet for engine Deployments in the fake cluster.

    A Deployment with replicas >= 1 gets a Pod object (owned by it, so foreground deletion waits for it) and
    the pod's containers run as local processes: `vllm serve MODEL ...` becomes the built-in engine with the
    same flags (`python -m inference --model MODEL ...`, run as the fake engine), the fetcher runs as itself, init containers run first,
    each to completion (a failure shows in the pod's initContainerStatuses and nothing else starts), `/adapters`
    and `/models` are folders per pod (the emptyDirs), env comes from the container's values, secretKeyRefs and
    envFrom Secrets.
    Each Service gets a loopback clusterIP of its own (127.77.x.y) that the pod's processes bind, on the
    Service's ports. The pod is Ready (and the Deployment's status.readyReplicas 1) once both containers
    answer /health, as their readiness probes would. Scaling to 0 or deleting stops the processes."""

    def __init__(self, kube, namespace: str, workdir: Path):
        self.kube, self.ns, self.workdir = kube, namespace, workdir
        self.running: dict[str, dict] = {}  # deployment name -> {"pod", "procs", "ready", "template", "root"}
        self.pods_started: dict[str, list[str]] = {}  # deployment name -> pod names, in order
        self.inits_run: list[tuple[str, str, int]] = []  # (pod, init container, exit code)
        self._ips: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simulated-engines", daemon=True)
        self.errors: list[str] = []

    def start(self) -> SimulatedEngines:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for name in list(self.running):
            self._stop_pod(name)

    def ip(self, name: str) -> str:
        if name not in self._ips:
            n = len(self._ips) + 1
            self._ips[name] = f"127.77.{n // 250}.{n % 250 + 1}"
        return self._ips[name]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reconcile()
            except Exception as exc:  # noqa: BLE001 - recorded for the test to show, never silently lost
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.1)

    def _reconcile(self) -> None:
        kube, ns = self.kube, self.ns
        for svc in kube.list("services", ns):
            name = svc["metadata"]["name"]
            if not svc["spec"].get("clusterIP"):
                ip = self.ip(name)
                kube.update("services", ns, name, lambda o, ip=ip: o["spec"].update(clusterIP=ip))
        for pod in kube.list("pods", ns, "app.kubernetes.io/component=engine"):
            if pod["metadata"].get("deletionTimestamp"):  # deleted with a grace period: the kubelet stops it
                owner = next(iter(pod["metadata"].get("ownerReferences") or []), {}).get("name")
                if owner in self.running and self.running[owner]["pod"] == pod["metadata"]["name"]:
                    self._stop_pod(owner, delete=False)
                kube.terminate_pod(ns, pod["metadata"]["name"], 0)
        deployments = {d["metadata"]["name"]: d for d in kube.list("deployments", ns)}
        for name in list(self.running):
            if name not in deployments:
                self._stop_pod(name)
        for name, dep in deployments.items():
            want = 0 if dep["metadata"].get("deletionTimestamp") else dep["spec"].get("replicas", 1)
            template = json.dumps(dep["spec"]["template"], sort_keys=True)
            current = self.running.get(name)
            generation = dep["metadata"].get("generation", 1)
            # A scale to zero and back between two polls leaves replicas and template as they were, but the
            # generation two ahead: a real ReplicaSet would have deleted the pod at zero, so this one goes too.
            scaled_through_zero = current is not None and generation - current["generation"] >= 2
            if current is not None and (want == 0 or current["template"] != template or scaled_through_zero):
                self._stop_pod(name)
                current = None
            if want >= 1 and current is None:
                current = self._start_pod(dep, template)
            if current is not None:
                current["generation"] = generation
            if current is not None and not current["ready"] and self._healthy(current):
                kube.run_pod(ns, current["pod"])
                current["ready"] = True
            ready = 1 if current is not None and current["ready"] else 0
            status = {
                "observedGeneration": dep["metadata"].get("generation", 1),
                "replicas": 1 if current else 0,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": 1 if current else 0,
            }
            if {k: dep.get("status", {}).get(k, 0) for k in status} != status:
                kube.update("deployments", ns, name, lambda o, s=status: o.__setitem__("status", s))

    def _healthy(self, running: dict) -> bool:
        for url in running["health"]:
            try:
                if httpx.get(url, timeout=0.5).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True

    def _secret_value(self, name: str, key: str) -> str:
        return base64.b64decode(self.kube.get("secrets", self.ns, name)["data"][key]).decode()

    def _container_env(self, container: dict) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_"))}
        env |= {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
        for source in container.get("envFrom", []):
            secret = self.kube.get("secrets", self.ns, source["secretRef"]["name"])
            if secret is None and not source["secretRef"].get("optional"):
                raise RuntimeError(f"secret {source['secretRef']['name']} missing")
            env |= {k: base64.b64decode(v).decode() for k, v in ((secret or {}).get("data") or {}).items()}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self._secret_value(ref["name"], ref["key"])
        return env

    def _start_pod(self, dep: dict, template: str) -> dict:
        name, spec = dep["metadata"]["name"], dep["spec"]["template"]
        pod_name = f"{name[:50]}-{len(self.pods_started.get(name, [])) + 1:05d}"
        self.kube.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": self.ns,
                    "labels": spec["metadata"]["labels"],
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": name,
                            "uid": dep["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": spec["spec"],
            }
        )
        self.kube.schedule_pod(self.ns, pod_name, node="cpu-node-1")
        self.pods_started.setdefault(name, []).append(pod_name)
        folder = self.workdir / pod_name
        root = folder / "adapters"  # the emptyDirs: /adapters (fetcher and engine), /models (init and engine)
        root.mkdir(parents=True)
        volumes = {"/adapters": root, "/models": folder / "models"}
        ip, procs, health = self.ip(name), [], []

        def local_argv(container: dict) -> list[str]:
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv[:2] == ["vllm", "serve"]:  # no vLLM here: the built-in engine takes the same flags
                argv = ["python3", "-m", "inference", "--model", *argv[2:]]
            python = sys.executable
            if argv[1:3] == ["-m", "inference"]:  # the engine container runs the fake engine (see the docstring)
                python = FAKE_ENGINE_PYTHON
            local = {"python": python, "python3": python, "0.0.0.0": ip}
            return [
                local.get(a)
                or next(
                    (
                        str(path) + a[len(mount) :]
                        for mount, path in volumes.items()
                        if a == mount or a.startswith(mount + "/")
                    ),
                    a,
                )
                for a in argv
            ]

        for init in spec["spec"].get("initContainers", []):  # in order, each to completion, as the kubelet does
            # Warm when it is this Python (the fetcher), as the control plane starts its own processes.
            done = start_python(local_argv(init), self._container_env(init), folder / f"{init['name']}.log")
            done.wait(300)
            self.inits_run.append((pod_name, init["name"], done.returncode))
            if done.returncode != 0:
                message = (folder / f"{init['name']}.log").read_text()[-500:]
                self.kube.update(
                    "pods",
                    self.ns,
                    pod_name,
                    lambda o, c=init["name"], rc=done.returncode, m=message: o["status"].update(
                        initContainerStatuses=[
                            {
                                "name": c,
                                "ready": False,
                                "restartCount": 0,
                                "image": "hone",
                                "imageID": "",
                                "state": {"terminated": {"exitCode": rc, "reason": "Error", "message": m}},
                            }
                        ]
                    ),
                )
                self.running[name] = {
                    "pod": pod_name,
                    "procs": [],
                    "ready": False,
                    "template": template,
                    "root": root,
                    "health": ["http://127.0.0.1:1/never"],
                }
                return self.running[name]
        for container in spec["spec"]["containers"]:
            argv = local_argv(container)
            port = {p["name"]: p["containerPort"] for p in container["ports"]}
            probe = container["readinessProbe"]["httpGet"]
            health.append(f"http://{ip}:{port.get(probe['port'], probe['port'])}{probe['path']}")
            procs.append(start_python(argv, self._container_env(container), folder / f"{container['name']}.log"))
        self.running[name] = {
            "pod": pod_name,
            "procs": procs,
            "ready": False,
            "template": template,
            "root": root,
            "health": health,
        }
        return self.running[name]

    def _stop_pod(self, name: str, delete: bool = True) -> None:
        running = self.running.pop(name)
        for proc in running["procs"]:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in running["procs"]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        if delete and self.kube.get("pods", self.ns, running["pod"]) is not None:
            self.kube.delete("pods", self.ns, running["pod"], grace=0)


@pytest.fixture
def cluster(moto, tmp_path):
    from tests.fake_kube import FakeKube

    kube = FakeKube(job_controller=False).start()
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="hone")
    # The storage credentials engine pods get by envFrom (HONE_K8S_SECRET_NAME), as the kustomize base ships.
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hone-secrets", "namespace": "hone"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in moto.env().items()},
        }
    )
    engines = SimulatedEngines(kube, "hone", tmp_path / "pods").start()
    yield kube, engines, kubeconfig
    engines.stop()
    kube.stop()
    assert not engines.errors, engines.errors


def test_tuned_model_serves_from_a_kubernetes_deployment(cluster, moto, tmp_path):
    from tests.support import HoneServer, jsonl, one_label_tickets, wait_endpoint, wait_job

    kube, engines, kubeconfig = cluster
    env = {
        **moto.env(),
        "HONE_STORAGE_URL": "s3://hone-k8s-engines/blobs",
        "HONE_EXECUTOR": "local",
        "HONE_ENDPOINT_BACKEND": "kubernetes",
        "HONE_K8S_KUBECONFIG": str(kubeconfig),
        "HONE_K8S_NAMESPACE": "hone",
        "HONE_K8S_GPUS_PER_ENGINE": "0",
        "HONE_INFERENCE_ENGINE": "builtin",
        "HONE_AUTO_DEPLOY": "true",
        "HONE_ENGINE_START_TIMEOUT_S": "120",
    }
    server = HoneServer(tmp_path / "server", env)
    try:
        project = server.new_project("k8s")
        client = project.openai()
        train, held_out = one_label_tickets(seed=3)
        file = client.files.create(file=("tickets.jsonl", jsonl(train)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=file.id,
            seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
        )
        job = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=300)
        http = project.http()
        endpoint = wait_endpoint(http, job.fine_tuned_model)
        assert endpoint["state"] == "ready", endpoint["error"]

        # One Deployment, Service and Secret for the endpoint's engine, made from the templates.
        name = object_name(endpoint["id"])
        deployment = kube.get("deployments", "hone", name)
        assert deployment["metadata"]["annotations"]["hone.dev/engine-key"] == endpoint["id"]
        _validate({k: v for k, v in deployment.items() if k != "status"})
        main = _containers(deployment)["engine"]
        assert "--enable-lora" in main["args"] and _env(main)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
        service = kube.get("services", "hone", name)
        assert service["spec"]["clusterIP"] == engines.ip(name)
        api_key = base64.b64decode(kube.get("secrets", "hone", name)["data"]["api-key"]).decode()
        assert api_key not in json.dumps(deployment) and api_key not in server.logs()

        # hone-tiny is built in: init container `weights` built it into the pod's /models, which the engine serves.
        pod_root = engines.running[name]["root"]
        assert (engines.pods_started[name][0], "weights", 0) in engines.inits_run
        assert (pod_root.parent / "models" / "base" / "config.json").is_file()
        assert main["args"][:2] == ["--model", "/models/base"]  # the built-in engine, with vllm serve's flags

        # The sidecar fetched the adapter from S3 into the pod's /adapters, and vLLM's API loaded it from there.
        assert (pod_root / endpoint["id"] / "adapter_config.json").is_file()
        assert (
            pod_root / endpoint["id"] / ".hone-source"
        ).read_text() == f"s3://hone-k8s-engines/blobs/jobs/{job.id}/adapter/"
        engine_url = f"http://{engines.ip(name)}:8000"
        cards = httpx.get(engine_url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"}).json()["data"]
        assert {c["id"]: c["root"] for c in cards}[job.fine_tuned_model] == str(pod_root / endpoint["id"])
        assert httpx.get(engine_url + "/v1/models").status_code == 401  # the key from the Secret guards it

        prompt = held_out[0]["messages"][:-1]
        # max_tokens 16 (was 8, enough for "Billing"): the fake's answer below is about ten tokens.
        first = client.chat.completions.create(
            model=job.fine_tuned_model, messages=prompt, max_tokens=16, temperature=0
        )
        # The fake engine answers with a digest of the weights that answered: the adapter the sidecar fetched.
        assert first.choices[0].message.content == answer_of(pod_root / endpoint["id"])

        # Idle for its timeout, the endpoint scales to zero: the Deployment goes to zero replicas (its pod with
        # it) and keeps its Service and API-key Secret. The next request wakes it: back to one replica, the
        # adapter loaded into the new pod, and the request answered once it is ready.
        first_pod = engines.pods_started[name][0]
        assert http.post("/v1/endpoints", json={"model": job.fine_tuned_model, "idle_timeout_s": 2}).status_code == 200
        wait_for(
            lambda: http.get(f"/v1/endpoints/{endpoint['id']}").json()["state"] == "idle",
            60,
            0.3,
            what="the endpoint going idle",
        )
        wait_for(
            lambda: (
                kube.get("deployments", "hone", name)["spec"]["replicas"] == 0
                and kube.get("pods", "hone", first_pod) is None
            ),
            30,
            what="the Deployment scaling to zero",
        )
        assert kube.get("services", "hone", name) and kube.get("secrets", "hone", name)
        patches = [path for method, path in kube.requests if method == "PATCH" and name in path]
        second = client.chat.completions.create(
            model=job.fine_tuned_model, messages=prompt, max_tokens=16, temperature=0
        )
        assert second.choices[0].message.content == first.choices[0].message.content
        assert len([p for m, p in kube.requests if m == "PATCH" and name in p]) == len(patches) + 1  # to one
        assert http.post("/v1/endpoints", json={"model": job.fine_tuned_model, "idle_timeout_s": 0}).status_code == 200
        assert len(patches) == 1  # scaled to zero once, not on every tick of the deployer
        assert len(engines.pods_started[name]) == 2
        again = http.get(f"/v1/endpoints/{endpoint['id']}").json()
        assert again["state"] == "ready" and again["error"] is None
        assert kube.get("deployments", "hone", name)["spec"]["replicas"] == 1
        new_root = engines.running[name]["root"]
        assert new_root != pod_root and (new_root / endpoint["id"] / "adapter_config.json").is_file()

        # Deleting the endpoint deletes the engine's Deployment (its pod first), Service and Secret.
        assert http.delete(f"/v1/endpoints/{endpoint['id']}").status_code == 200
        wait_for(
            lambda: not any(kube.get(kind, "hone", name) for kind in ("deployments", "services", "secrets")),
            30,
            what="the engine's objects being deleted",
        )
        assert not engines.running and not kube.list("pods", "hone")
        deletes = [path for method, path in kube.requests if method == "DELETE" and name in path]
        assert any("/deployments/" in p for p in deletes) and any("/services/" in p for p in deletes)
        http.close()
    finally:
        server.stop()
