"""The Kubernetes endpoint backend (service/engines/kubernetes.py) and the adapter fetcher (inference/fetcher.py).

What is fake here, and why: no Kubernetes API server can run on these machines, so the backend talks (with the
real `kubernetes` client library, over loopback HTTP) to the fake API server in tests/fake_kube.py; and vLLM
cannot run here (no GPU), so this module's simulated cluster runs each engine pod as local processes: the
built-in engine (`python -m inference`, which takes `vllm serve`'s flags) with the container's own arguments,
and the real fetcher sidecar pointed at moto's S3. Everything else is real: the control plane, the trainer,
S3 (moto's server), the objects the backend generates (checked offline against the Kubernetes OpenAPI schema
with kubernetes_validate) and the openai SDK as the client."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import boto3
import httpx
import kubernetes_validate
import pytest
import yaml

from inference.launcher import served_lora_rank
from service.engines import EngineSpec
from service.engines.kubernetes import (
    DEPLOYMENT_TEMPLATE,
    SERVICE_TEMPLATE,
    build_objects,
    object_name,
    service_url,
)
from service.settings import Settings
from tests.support import REPO, free_port, wait_http

K8S_VERSION = kubernetes_validate.latest_version()


def _validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _containers(deployment: dict) -> dict:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


# --- 1. generated objects -----------------------------------------------------------------------------------


def test_templates_are_valid_manifests_as_shipped():
    templates = Settings().resolved_k8s_templates_dir
    for name in (DEPLOYMENT_TEMPLATE, SERVICE_TEMPLATE):
        _validate(yaml.safe_load((templates / name).read_text()))


@pytest.mark.parametrize("engine", ["vllm", "builtin"])
def test_generated_deployment_and_service(engine, tmp_path):
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    settings = Settings(data_dir=tmp_path, k8s_namespace="tuning", k8s_inference_image="registry.local/inf:7",
                        k8s_gpus_per_engine=2, k8s_node_selector={"gpu": "h100"}, k8s_tolerations=tolerations,
                        k8s_secret_name="storage-creds")
    template_file = tmp_path / "pinned.jinja"
    template_file.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    spec = EngineSpec("base:acme/Tiny_Chat", engine, "acme/tiny-chat", "acme/Tiny_Chat", max_loras=3,
                      max_cpu_loras=6, max_lora_rank=20, chat_template=str(template_file))
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

    shipped = yaml.safe_load((settings.resolved_k8s_templates_dir / DEPLOYMENT_TEMPLATE).read_text())
    assert pod["spec"]["volumes"] == shipped["spec"]["template"]["spec"]["volumes"]  # the template's, kept
    containers = _containers(deployment)
    main, fetcher = containers["engine"], containers["fetcher"]
    assert main["image"] == fetcher["image"] == "registry.local/inf:7"
    command = main["command"] + main["args"]
    if engine == "vllm":
        assert command[:3] == ["vllm", "serve", "acme/tiny-chat"]
    else:
        assert command[:5] == ["python", "-m", "inference", "--model", "acme/tiny-chat"]
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
    assert fetcher["command"] == ["python", "-m", "inference.fetcher"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "fetch": 8001}

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
    svc = V1Service(metadata=V1ObjectMeta(name="hone-engine-x", namespace="tuning"),
                    spec=V1ServiceSpec(cluster_ip="10.96.4.2", ports=ports))
    assert service_url(svc, "http") == "http://hone-engine-x.tuning.svc.cluster.local:8000"
    svc.spec.cluster_ip = "127.31.0.9"
    assert service_url(svc, "fetch") == "http://127.31.0.9:8001"


# --- the fetcher sidecar ------------------------------------------------------------------------------------


@pytest.fixture
def fetcher(moto, tmp_path):
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **moto.env(),
           "HONE_FETCHER_API_KEY": "sk-engine"}
    proc = subprocess.Popen([sys.executable, "-m", "inference.fetcher", "--root", str(tmp_path / "adapters"),
                             "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc=proc)
    yield url, tmp_path / "adapters"
    proc.terminate()
    proc.wait(10)


def test_fetcher_copies_an_adapter_from_s3(fetcher, moto):
    url, root = fetcher
    s3 = boto3.client("s3", endpoint_url=moto.url, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="fetch-tests")
    files = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"\0" * 3000,
             "tok/tokenizer.json": b"{}", "trainer_state.pt": b"not served"}
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

    missing = httpx.post(url + "/fetch", json={"source": "s3://fetch-tests/blobs/jobs/none/", "name": "ep-2"},
                         headers=auth)
    assert missing.status_code == 404 and "No files" in missing.json()["error"]["message"]
    assert httpx.post(url + "/fetch", json={"source": source, "name": "../escape"}, headers=auth).status_code == 400
    assert httpx.post(url + "/fetch", json={"source": "http://x/", "name": "ep-3"}, headers=auth).status_code == 400
    assert httpx.post(url + "/evict", json={"name": "ep-1"}, headers=auth).json() == {"removed": True}
    assert not (root / "ep-1").exists()
