"""Engine API keys on Kubernetes, for every control-plane worker (the gateway's hop to an engine): each engine's
Secret, made by kubernetes.py's `ensure`, read here and cached for a few seconds."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable

from service.engines.k8s_engine_objects import SECRET_KEY, object_name
from service.k8s import api_client
from service.settings import Settings


def api_key_reader(settings: Settings, ttl_s: float = 5.0) -> Callable[[str], str | None]:
    """engine key -> API key, read from the engine's Secret (any worker), cached for a few seconds."""
    state: dict = {"core": None}
    cache: dict[str, tuple[float, str | None]] = {}
    lock = threading.Lock()

    def read(key: str) -> str | None:
        if not key:
            return None
        now = time.monotonic()
        hit = cache.get(key)
        if hit is not None and now - hit[0] < ttl_s:
            return hit[1]
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with lock:
            if state["core"] is None:
                state["core"] = client.CoreV1Api(api_client(settings))
        try:
            secret = state["core"].read_namespaced_secret(object_name(key), settings.kubernetes.k8s_namespace)
            value = base64.b64decode(secret.data[SECRET_KEY]).decode() if secret.data else None
        except ApiException as exc:
            if exc.status != 404:
                raise
            value = None
        cache[key] = (now, value)
        return value

    return read
