"""Placement: which engine serves an endpoint, and how that engine is started.

An engine is named by its EngineKey, the key the engine backends, the endpoints' `engine_key` column and the
gateway share:
- an endpoint's own engine: the endpoint id (one engine per endpoint, the default; fully tuned weights always);
- `base:{model}`: one engine per base model serving all its adapters (HONE_SHARED_ENGINES, multi-LoRA);
- `spare:{model}`: an engine kept warm while a job on that base model trains, claimed by its endpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from inference.tool_parsers import BUILTIN_PARSERS
from service.base_models import builtin_cannot_split
from service.context import AppContext
from service.db.tables import Endpoint
from service.deploy import DeployError
from service.endpoint_states import EndpointState
from service.engines import EngineSpec
from service.errors import ErrorCode


class EngineKey(str):
    """An engine's name (a str, as stored and as the backends take it), made and read only here."""

    @classmethod
    def own(cls, endpoint_id: str) -> EngineKey:
        return cls(endpoint_id)

    @classmethod
    def shared(cls, base_model: str) -> EngineKey:
        return cls(f"base:{base_model}")

    @classmethod
    def spare(cls, base_model: str) -> EngineKey:
        return cls(f"spare:{base_model}")

    @property
    def kind(self) -> str:
        """ "own", "shared" or "spare"."""
        prefix = self.split(":", 1)[0]
        return {"base": "shared", "spare": "spare"}.get(prefix, "own") if ":" in self else "own"


class Placement:
    def __init__(self, ctx: AppContext, engine: str):
        self.ctx, self.engine = ctx, engine

    def warm_key(self, base_model: str) -> EngineKey:
        """The engine kept warm for a job training on `base_model`."""
        return EngineKey.shared(base_model) if self.ctx.settings.serving.shared_engines else EngineKey.spare(base_model)

    def endpoint_spec(self, ep: Endpoint, weights: Path | None) -> EngineSpec:
        replicas = ep.replicas or 1  # (a shared engine's endpoints are refused more than one at creation)
        if ep.kind == "full":  # fully tuned weights are their own base: an engine of their own
            spec = self._spec(EngineKey.own(ep.id), str(weights), ep.model, f"storage:{ep.weights_prefix}")
            return dataclasses.replace(self._parallel(spec, ep.base_model), replicas=replicas)
        if self.ctx.settings.serving.shared_engines:
            return self.base_spec(ep.base_model, EngineKey.shared(ep.base_model))
        spec = dataclasses.replace(self.base_spec(ep.base_model, EngineKey.own(ep.id)), replicas=replicas)
        if self.engine == "vllm" and weights is not None:
            # vLLM ignores templates stored beside adapters: an engine of its own gets the pinned one.
            pinned_file = weights / "hone_serving.json"
            pinned = json.loads(pinned_file.read_text()).get("chat_template") if pinned_file.exists() else None
            if pinned:
                (weights / "hone_chat_template.jinja").write_text(pinned)
                spec = dataclasses.replace(spec, chat_template=str(weights / "hone_chat_template.jinja"))
        return spec

    def base_spec(self, base: str, key: EngineKey) -> EngineSpec:
        registered = self.ctx.base_models.get(base)
        source = registered.source if registered is not None and registered.source.startswith("builtin:") else None
        return self._parallel(self._spec(key, self._base_model_path(base), base, source), base)

    def _parallel(self, spec: EngineSpec, base: str) -> EngineSpec:
        """The base model's tensor/pipeline parallel sizes; refused (for good, not retried) on the built-in engine,
        which cannot split a model: endpoint creation refuses it too, this catches deploys of finished jobs."""
        registered = self.ctx.base_models.get(base)
        if registered is None:
            raise DeployError(ErrorCode.MODEL_NOT_FOUND, f"Base model {base!r} is no longer registered.", retry=False)
        if registered.serving_devices > 1 and self.engine == "builtin":
            raise DeployError(ErrorCode.ENGINE_START_FAILED, builtin_cannot_split(registered), retry=False)
        return dataclasses.replace(
            spec,
            tensor_parallel_size=registered.tensor_parallel_size,
            pipeline_parallel_size=registered.pipeline_parallel_size,
            images_per_prompt=self.ctx.settings.serving.max_images_per_request if registered.vision else 0,
            # the built-in engine reads the formats it implements; for another, "auto" tool choice answers 400 there
            tool_call_parser=registered.tool_call_parser
            if self.engine == "vllm" or registered.tool_call_parser in BUILTIN_PARSERS
            else None,
        )

    def _spec(self, key: EngineKey, model_path: str, served_name: str, model_source: str | None) -> EngineSpec:
        s = self.ctx.settings.serving
        return EngineSpec(
            key,
            self.engine,
            model_path,
            served_name,
            max_loras=s.max_loras,
            max_cpu_loras=s.resolved_max_cpu_loras,
            max_lora_rank=s.max_lora_rank,
            model_source=model_source,
        )

    def _base_model_path(self, name: str) -> str:
        base = self.ctx.base_models.get(name)
        if base is None:
            raise DeployError(ErrorCode.MODEL_NOT_FOUND, f"Base model {name!r} is no longer registered.", retry=False)
        if not base.source.startswith("builtin:"):
            return base.source
        # Built-in models are built where the engine runs (the spec's model_source says how): here on first
        # use by the local backend, in the pod by the Kubernetes one.
        return str(self.ctx.settings.resolved_model_cache_dir / base.source.split(":", 1)[1])

    def needed(self, live: Iterable[Endpoint], retiring: Iterable[Endpoint], warm: set[str]) -> set[str]:
        """Engine keys something still needs: the warm ones, live endpoints' engines, and those of endpoints
        stopped since this tick began (retired, their adapter unloaded, on the next one)."""
        live = list(live)
        needed = warm | {ep.engine_key for ep in live if ep.engine_key} | {ep.id for ep in live}
        needed |= {ep.engine_key for ep in retiring if ep.engine_key}
        # a deploying endpoint is about to claim the spare its job kept warm
        needed |= {EngineKey.spare(ep.base_model) for ep in live if ep.state == EndpointState.DEPLOYING.value}
        if self.ctx.settings.serving.shared_engines:
            needed |= {EngineKey.shared(ep.base_model) for ep in live}
        return needed
