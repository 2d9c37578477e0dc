"""Shared Kubernetes helpers for the executor (service/executors/kubernetes.py) and the endpoint backend
(service/engines/kubernetes.py): the API client built from settings, and the object templates.

The templates are the files of deploy/kubernetes/base/templates/: the kustomize base ships them to the control
plane in the hone-templates ConfigMap, mounted where HONE_K8S_TEMPLATES_DIR points
(settings.kubernetes.resolved_templates_dir), so the objects the backends create are built from what is deployed."""

from __future__ import annotations

import copy
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from service.settings import Settings

_cache: dict[Path, tuple[float, dict]] = {}
_cache_lock = threading.Lock()


def api_client(settings: Settings) -> ApiClient:
    """HONE_K8S_KUBECONFIG when set, else the pod's service account (in-cluster), else the client's own lookup
    (KUBECONFIG, ~/.kube/config)."""
    from kubernetes import client, config

    if settings.kubernetes.k8s_kubeconfig:
        return config.new_client_from_config(config_file=str(settings.kubernetes.k8s_kubeconfig))
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def template_path(settings: Settings, name: str) -> Path:
    return Path(settings.kubernetes.resolved_templates_dir) / name


def load_template(settings: Settings, name: str) -> dict:
    """A fresh copy of the template `name` (e.g. "trainer-job.yaml") as a dict; re-read when the file changes
    (a ConfigMap update replaces the mounted file)."""
    path = template_path(settings, name)
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise FileNotFoundError(f"Kubernetes template {path} is missing (HONE_K8S_TEMPLATES_DIR): {exc}") from exc
    with _cache_lock:
        cached = _cache.get(path)
        if cached is None or cached[0] != mtime:
            loaded = yaml.safe_load(path.read_text())
            if not isinstance(loaded, dict) or "kind" not in loaded:
                raise ValueError(f"Kubernetes template {path} is not one object with a kind")
            cached = _cache[path] = (mtime, loaded)
        return copy.deepcopy(cached[1])


_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def label_value(text: str) -> str:
    """`text` made a valid label value (<= 63 characters of [-A-Za-z0-9_.], alphanumeric at both ends)."""
    value = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:63].strip("-_.")
    assert _LABEL_VALUE.match(value)
    return value


def dns_label(text: str, max_length: int = 63) -> str:
    """`text` lowercased to a DNS-1123 label fragment (letters, digits, '-'), at most `max_length` long."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower()))[:max_length].strip("-")
