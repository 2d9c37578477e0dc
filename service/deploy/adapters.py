"""Getting a tuned model's weights to its engine: a complete local copy fetched from storage (engines reload
evicted adapters from it), staged where the engine can read it, hot-loaded (vLLM's `/v1/load_lora_adapter`),
and unloaded and removed when the endpoint goes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from inference.client import EngineClient, EngineUnavailable
from service import metrics
from service.context import AppContext
from service.db.tables import Endpoint
from service.deploy import DeployError
from service.engines import EngineBackend, EngineHandle, Replica
from service.errors import ErrorCode
from service.storage import BlobNotFound

# Trainer bookkeeping that checkpoints carry but engines do not need.
NOT_SERVED = ("trainer_state.pt", "COMPLETE")


class AdapterLoader:
    def __init__(self, ctx: AppContext, backend: EngineBackend):
        self.ctx, self.backend = ctx, backend
        self.cache = ctx.settings.resolved_adapter_cache_dir

    def fetch(self, ep: Endpoint) -> Path:
        """A complete local copy of the endpoint's weights, made atomically by renaming."""
        target = self.cache / ep.id
        if (target / ".complete").exists():
            return target
        storage, prefix = self.ctx.storage, ep.weights_prefix
        assert prefix is not None  # fetched only for endpoints with weights
        work = self.cache / f".{ep.id}.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            keys = [k for k in storage.list(prefix) if k.rsplit("/", 1)[-1] not in NOT_SERVED]
            if not keys:
                raise DeployError(ErrorCode.WEIGHTS_NOT_FOUND, f"No weights under {prefix} in storage.", retry=False)
            for key in keys:
                path = work / key[len(prefix) :]
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as out:
                    for chunk in storage.iter_chunks(key):
                        out.write(chunk)
            (work / ".complete").write_text(prefix)
            shutil.rmtree(target, ignore_errors=True)
            work.rename(target)
        except BlobNotFound as exc:
            raise DeployError(
                ErrorCode.WEIGHTS_NOT_FOUND, f"Weights vanished from storage while fetching: {exc}", retry=False
            ) from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def load(self, handle: EngineHandle, ep: Endpoint, weights: Path, replica: Replica) -> None:
        """Hot-loads the adapter into one replica where it sees it: the local copy, unless the backend's engines
        cannot see this disk (Kubernetes: the pod's fetcher copies it from storage and answers its own path)."""
        started = time.perf_counter()
        assert ep.weights_prefix is not None  # an adapter endpoint has its weights' folder
        path = self.backend.stage_weights(handle, ep.id, ep.weights_prefix, weights, replica)
        with EngineClient(replica.url, api_key=handle.api_key) as client:
            client.load_adapter(ep.model, path)
        metrics.ADAPTER_LOAD.labels(metrics.model_name_label(ep.base_model)).observe(time.perf_counter() - started)

    def load_everywhere(self, handle: EngineHandle, ep: Endpoint, weights: Path | None, loaded: set[str]) -> set[str]:
        """Loads the adapter into each ready replica not in `loaded` (urls); returns the urls that have it now.
        Every replica serves requests, so each needs it: one without would answer 404 for the model."""
        ready = {replica.url: replica for replica in handle.ready}
        if ep.kind != "adapter":
            return set(ready)
        assert weights is not None  # an adapter endpoint's weights were fetched
        for url, replica in ready.items():
            if url not in loaded:
                self.load(handle, ep, weights, replica)
        return set(ready)

    def unload(self, handle: EngineHandle, ep: Endpoint) -> None:
        if ep.kind != "adapter":
            return
        for replica in handle.ready:
            try:
                with EngineClient(replica.url, api_key=handle.api_key) as client:
                    client.unload_adapter(ep.model)
            except EngineUnavailable:
                pass

    def local_copies(self) -> list[str]:
        """Endpoint ids with a local copy (partial downloads excluded)."""
        if not self.cache.exists():
            return []
        return [p.name for p in self.cache.iterdir() if not p.name.startswith(".")]

    def remove(self, endpoint_id: str) -> None:
        shutil.rmtree(self.cache / endpoint_id, ignore_errors=True)
