"""The objects of one engine on Kubernetes: its Deployment and Service, built from the templates the kustomize base
ships (`engine-deployment.yaml`, `engine-service.yaml`) with this engine's command, adapters volume, fetcher
sidecar, API-key Secret reference and spec hash; and the URL a Service answers at. Pure functions of the settings
and the engine's spec: kubernetes.py creates, watches and deletes what these build."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import asdict
from pathlib import Path

from inference.launcher import engine_command
from service.engines import EngineSpec
from service.k8s import load_template
from service.settings import Settings

DEPLOYMENT_TEMPLATE = "engine-deployment.yaml"
SERVICE_TEMPLATE = "engine-service.yaml"
KEY_ANNOTATION = "hone.dev/engine-key"
SPEC_ANNOTATION = "hone.dev/engine-spec"  # hash of what the engine runs: a change replaces the pod
ENGINE_LABEL = "hone.dev/engine"
COMPONENT_SELECTOR = "app.kubernetes.io/component=engine,app.kubernetes.io/managed-by=hone"
SECRET_KEY = "api-key"
ENGINE_CONTAINER, FETCHER_CONTAINER, WEIGHTS_INIT = "engine", "fetcher", "weights"
ADAPTERS_ROOT = "/adapters"
MODELS_ROOT, MODEL_FOLDER = "/models", "base"  # where init container `weights` puts the base weights
# container waiting reasons that end a start at once (an endpoint's error says which)
FATAL_WAITING = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
)


def object_name(key: str) -> str:
    """A DNS-1035 label (Service names need one) unique to the key: `hone-engine-<slug>-<hash>`."""
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:38].strip("-")
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"hone-engine-{slug}-{digest}" if slug else f"hone-engine-{digest}"


def endpoint_of(key: str) -> str | None:
    return None if ":" in key else key


def _spec_hash(spec: EngineSpec, extra: dict) -> str:
    return hashlib.sha256(json.dumps([asdict(spec), extra], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _container(pod_spec: dict, name: str, part: str = "containers") -> dict:
    for c in pod_spec.get(part, []):
        if c.get("name") == name:
            return c
    raise ValueError(f"template {DEPLOYMENT_TEMPLATE} has no {part[:-1]} named {name!r}")


def engine_gpus(settings: Settings, spec: EngineSpec) -> int:
    """nvidia.com/gpu of one engine pod: the tp x pp devices vLLM splits the model over (a pod cannot span nodes,
    so they are all in it), else HONE_K8S_GPUS_PER_ENGINE."""
    return spec.devices if spec.devices > 1 else settings.kubernetes.k8s_gpus_per_engine


def storage_source(settings: Settings, prefix: str) -> str:
    """The URL of a storage prefix that pods (the fetcher) read: s3://bucket/prefix/..."""
    return f"{settings.resolved_storage_url.rstrip('/')}/{prefix.lstrip('/')}"


def _stage_base_weights(settings: Settings, spec: EngineSpec, pod_spec: dict) -> str:
    """The model path the engine serves: init container `weights` fills /models/base when the spec's weights
    live only on the control plane (built-in or in storage); otherwise it is dropped and the path stays."""
    init = _container(pod_spec, WEIGHTS_INIT, "initContainers")
    if spec.model_source is None:
        pod_spec["initContainers"] = [c for c in pod_spec["initContainers"] if c is not init]
        if not pod_spec["initContainers"]:
            del pod_spec["initContainers"]
        return spec.model_path
    kind, _, rest = spec.model_source.partition(":")
    source = storage_source(settings, rest) if kind == "storage" else spec.model_source
    init["image"] = settings.kubernetes.k8s_inference_image
    init["args"] = ["--root", MODELS_ROOT, "--once", source, "--name", MODEL_FOLDER]
    for env_source in init.get("envFrom", []):
        if "secretRef" in env_source:
            env_source["secretRef"]["name"] = settings.kubernetes.k8s_secret_name
    return f"{MODELS_ROOT}/{MODEL_FOLDER}"


def _set_env(container: dict, name: str, value: str | None = None, secret: tuple[str, str] | None = None) -> None:
    env = [e for e in container.get("env", []) if e.get("name") != name]
    env.append(
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret[0], "key": secret[1]}}}
        if secret
        else {"name": name, "value": value}
    )
    container["env"] = env


def build_objects(settings: Settings, spec: EngineSpec, *, port: int | None = None) -> tuple[dict, dict, str]:
    """The Deployment and Service for an engine (plain dicts, as the API takes them) and the spec hash."""
    name = object_name(spec.key)
    deployment = load_template(settings, DEPLOYMENT_TEMPLATE)
    service = load_template(settings, SERVICE_TEMPLATE)
    pod = deployment["spec"]["template"]
    engine = _container(pod["spec"], ENGINE_CONTAINER)
    engine_port = port or next((p["containerPort"] for p in engine.get("ports", []) if p.get("name") == "http"), 8000)
    chat_template = None
    if spec.chat_template:  # a file on the control plane's disk: vLLM takes the template inline as well
        chat_template = (
            Path(spec.chat_template).read_text() if Path(spec.chat_template).is_file() else spec.chat_template
        )
    model_path = _stage_base_weights(settings, spec, pod["spec"])
    launch = engine_command(
        spec.engine,
        model_path,
        spec.served_name,
        host="0.0.0.0",
        port=engine_port,
        max_loras=spec.max_loras,
        max_cpu_loras=spec.max_cpu_loras,
        max_lora_rank=spec.max_lora_rank,
        chat_template=chat_template,
        python="python3",
        tensor_parallel_size=spec.tensor_parallel_size,
        pipeline_parallel_size=spec.pipeline_parallel_size,
        images_per_prompt=spec.images_per_prompt,
        tool_call_parser=spec.tool_call_parser,
    )
    if spec.engine == "vllm":
        engine["command"], engine["args"] = ["vllm", "serve"], launch.argv[2:]
    else:
        engine["command"], engine["args"] = ["python3", "-m", "inference"], launch.argv[3:]
    engine["image"] = settings.kubernetes.k8s_inference_image
    for var, value in launch.env.items():
        if var != "VLLM_API_KEY":
            _set_env(engine, var, value)
    _set_env(engine, "VLLM_API_KEY", secret=(name, SECRET_KEY))
    _set_env(engine, "HONE_ENDPOINT_ENGINE", spec.key)
    if endpoint_of(spec.key):
        _set_env(engine, "HONE_ENDPOINT_ID", endpoint_of(spec.key))
    resources = engine.setdefault("resources", {})
    gpus = engine_gpus(settings, spec)
    if gpus > 0:
        for part in ("requests", "limits"):
            resources.setdefault(part, {})["nvidia.com/gpu"] = str(gpus)
    fetcher = _container(pod["spec"], FETCHER_CONTAINER)
    fetcher["image"] = settings.kubernetes.k8s_inference_image
    _set_env(fetcher, "HONE_FETCHER_API_KEY", secret=(name, SECRET_KEY))
    for source in fetcher.get("envFrom", []):
        if "secretRef" in source:
            source["secretRef"]["name"] = settings.kubernetes.k8s_secret_name
    if settings.kubernetes.k8s_node_selector:
        pod["spec"]["nodeSelector"] = {**pod["spec"].get("nodeSelector", {}), **settings.kubernetes.k8s_node_selector}
    if settings.kubernetes.k8s_tolerations:
        pod["spec"]["tolerations"] = [*pod["spec"].get("tolerations", []), *settings.kubernetes.k8s_tolerations]

    digest = _spec_hash(
        spec,
        {
            "image": settings.kubernetes.k8s_inference_image,
            "template": pod,
            "gpus": gpus,
        },
    )
    labels = {ENGINE_LABEL: name}
    annotations = {KEY_ANNOTATION: spec.key, SPEC_ANNOTATION: digest}
    for obj in (deployment, service):
        meta = obj.setdefault("metadata", {})
        meta["name"], meta["namespace"] = name, settings.kubernetes.k8s_namespace
        meta["labels"] = {**meta.get("labels", {}), **labels}
        meta["annotations"] = {**meta.get("annotations", {}), **annotations}
    # each pod an engine of its own with every adapter loaded into it; the Service spreads requests over them
    deployment["spec"]["replicas"] = spec.replicas
    deployment["spec"]["selector"] = {
        "matchLabels": {**deployment["spec"]["selector"].get("matchLabels", {}), **labels}
    }
    pod.setdefault("metadata", {})["labels"] = {**pod["metadata"].get("labels", {}), **labels}
    pod["metadata"]["annotations"] = {**pod["metadata"].get("annotations", {}), KEY_ANNOTATION: spec.key}
    service["spec"]["selector"] = {**service["spec"].get("selector", {}), **labels}
    return deployment, service, digest


def _is_loopback(ip: str | None) -> bool:
    try:
        return ip is not None and ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def service_url(service, port_name: str) -> str:
    """The URL of a Service's named port (a V1Service from the API)."""
    port = next((p.port for p in service.spec.ports if p.name == port_name), service.spec.ports[0].port)
    ip = service.spec.cluster_ip
    if _is_loopback(ip):
        return f"http://{ip}:{port}"
    return f"http://{service.metadata.name}.{service.metadata.namespace}.svc.cluster.local:{port}"
