"""The GPUs the local backend hands to engines: each vLLM replica gets tensor_parallel_size x
pipeline_parallel_size of them, its own (CUDA_VISIBLE_DEVICES), until it stops.

The pool is HONE_ENGINE_DEVICES, else the control plane's CUDA_VISIBLE_DEVICES. An empty pool (no GPU named
anywhere) assigns nothing: engines see the machine as they did before devices were counted, which is also what
the built-in (CPU) engine always gets."""

from __future__ import annotations

import threading

from service.engines import EngineStartError
from service.settings import Settings


def device_pool(settings: Settings) -> list[str]:
    named = settings.serving.engine_devices
    if named is not None:
        return [d.strip() for d in named.split(",") if d.strip()]
    return settings.training.gpu_devices


class EngineDevices:
    def __init__(self, devices: list[str]):
        self.devices = list(devices)
        self._held: dict[str, tuple[str, ...]] = {}  # owner (an engine replica's spawn key) -> its devices
        self._lock = threading.Lock()

    def take(self, owner: str, count: int) -> tuple[str, ...]:
        """`count` free devices for `owner`, or () when there is no pool to count."""
        if not self.devices:
            return ()
        with self._lock:
            busy = {d for held in self._held.values() for d in held}
            free = [d for d in self.devices if d not in busy]
            if len(free) < count:
                raise EngineStartError(
                    f"engine {owner} needs {count} GPU(s) (tensor_parallel_size x pipeline_parallel_size); "
                    f"{len(free)} of the {len(self.devices)} in HONE_ENGINE_DEVICES/CUDA_VISIBLE_DEVICES are free"
                )
            self._held[owner] = tuple(free[:count])
            return self._held[owner]

    def release(self, owner: str) -> None:
        with self._lock:
            self._held.pop(owner, None)

    def held(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return dict(self._held)
