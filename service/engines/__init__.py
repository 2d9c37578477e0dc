"""Engine backends run inference engines (vLLM or the built-in one): one small Protocol, chosen from settings.

The endpoint deployer decides which engines should exist and what they serve; a backend only starts,
finds and stops them. Adapters are hot-loaded over HTTP by the deployer, the same way on every backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from service.settings import Settings


@dataclass(frozen=True)
class EngineSpec:
    key: str  # "base:<name>" for a shared engine, else the endpoint id
    engine: str  # "vllm" | "builtin"
    model_path: str  # local folder of the base model (or of fully tuned weights)
    served_name: str  # the name requests for the base weights use
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    chat_template: str | None = None  # a file; vLLM serves every adapter with one template (the built-in
    # engine reads each adapter's own from hone_serving.json)
    # Where engines that cannot see model_path (Kubernetes pods) get the weights: "builtin:<model>" (built
    # there) or "storage:<prefix>" (copied from blob storage); None: model_path is a Hugging Face id or a folder
    # every engine sees.
    model_source: str | None = None
    # vLLM splits the model over tp x pp devices (the base model's registry entry); the built-in engine cannot
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    images_per_prompt: int = 0  # a vision model's: images a request may hold (0: the model reads text only)
    tool_call_parser: str | None = None  # the base model family's (vLLM's parser names); None: no "auto" tool choice
    replicas: int = 1  # identical engines under this key (an endpoint's `replicas`), each with its own devices

    @property
    def devices(self) -> int:
        """GPUs one replica holds."""
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass(frozen=True)
class Replica:
    """One running engine process or pod of a key: adapters are loaded into each."""

    url: str
    fetch_url: str | None = None  # its own adapter fetcher (Kubernetes pods); None: the backend's default


@dataclass(frozen=True)
class EngineHandle:
    key: str
    url: str  # e.g. http://127.0.0.1:41234 (the first replica, or a Service in front of them all)
    api_key: str  # the engine answers /v1 routes only with it (every replica the same)
    spec: EngineSpec
    # Where requests go, the gateway spreading them: each local replica; a Kubernetes Service spreads by itself,
    # so there it is the Service alone. Empty: (url,).
    urls: tuple[str, ...] = ()
    replicas: tuple[Replica, ...] = ()  # the ready replicas, to load adapters into; empty: (Replica(url),)

    @property
    def request_urls(self) -> tuple[str, ...]:
        return self.urls or (self.url,)

    @property
    def ready(self) -> tuple[Replica, ...]:
        return self.replicas or (Replica(self.url),)


class EngineStartError(RuntimeError):
    pass


class EngineBackend(Protocol):
    def ensure(self, spec: EngineSpec) -> EngineHandle: ...  # start unless running; returns once healthy
    def get(self, key: str) -> EngineHandle | None: ...  # the running engine, or None if it is gone
    def stop(self, key: str) -> None: ...
    # Scale to zero: free what the engine holds (its GPU) but keep what makes it quick to bring back; ensure()
    # brings it back. Kubernetes: the Deployment at zero replicas, its Service and API key kept. Idempotent.
    def suspend(self, key: str) -> None: ...
    def keys(self) -> list[str]: ...  # engines this backend runs
    def close(self) -> None: ...  # stop everything (control-plane shutdown)
    # The adapter's path on the engine's filesystem: the deployer's local copy where engines see this disk;
    # else the backend copies it from storage_prefix (Kubernetes: the pod's fetcher sidecar).
    def stage_weights(
        self, handle: EngineHandle, name: str, storage_prefix: str, local_copy: Path, replica: Replica | None = None
    ) -> str: ...


def open_engine_backend(settings: Settings) -> EngineBackend:
    if settings.serving.endpoint_backend == "local":
        from service.engines.local import LocalEngines

        return LocalEngines(settings)
    if settings.serving.endpoint_backend == "kubernetes":
        from service.engines.kubernetes import KubernetesEngines

        return KubernetesEngines(settings)
    if settings.serving.endpoint_backend == "static":
        from service.engines.static import StaticEngines

        return StaticEngines(settings)
    raise ValueError(
        f"unknown endpoint backend {settings.serving.endpoint_backend!r} "
        "(HONE_ENDPOINT_BACKEND: local, kubernetes, static)"
    )


def engine_api_keys(settings: Settings) -> Callable[[str], str | None]:
    """engine key -> its API key, for any server process (the gateway), not only the one running the engines."""
    if settings.serving.endpoint_backend == "local":
        from service.engines.local import api_key_from_state

        return lambda key: api_key_from_state(settings.server.data_dir, key) if key else None
    if settings.serving.endpoint_backend == "kubernetes":
        from service.engines.k8s_keys import api_key_reader

        return api_key_reader(settings)
    if settings.serving.endpoint_backend == "static":
        return lambda key: settings.serving.static_engine_api_key
    raise ValueError(
        f"unknown endpoint backend {settings.serving.endpoint_backend!r} "
        "(HONE_ENDPOINT_BACKEND: local, kubernetes, static)"
    )
