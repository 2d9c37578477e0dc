"""Served names and the runtime LoRA registry: vLLM 0.33's `OpenAIServingModels`, statuses and messages
of reference §1.2/§1.3, model cards of §1.6, and request → model resolution of §1.7."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference.adapters import AdapterNotFound, ServingProfile, profile_from
from inference.errors import APIError, internal, invalid_user_input, not_found
from inference.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from inference.tool_parsers import ToolParser

if TYPE_CHECKING:  # the engine imports torch; the registry only drives it
    from inference.engine import Engine

log = logging.getLogger("inference.models")


@dataclass
class LoraEntry:
    name: str
    path: str  # as the caller gave it; reported as the card's `root`
    int_id: int
    profile: ServingProfile

    @property
    def key(self) -> str:
        # peft adapter names may not hold '.', served names may: weights live under the numeric id.
        return f"lora{self.int_id}"


class ServingModels:
    def __init__(self, engine: Engine, served_model_name: str, model_path: str, tool_parser: ToolParser | None = None):
        self.engine = engine
        self.tool_parser = tool_parser  # --tool-call-parser with --enable-auto-tool-choice: what reads "auto" calls
        self.base_names = [served_model_name]
        self.model_path = model_path
        self.loras: dict[str, LoraEntry] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._ids = itertools.count(1)  # vLLM's lora_int_id counter: 1, 2, 3, ...

    # --- request routing ------------------------------------------------------------------------------

    def resolve(self, model: str | None) -> LoraEntry | None:
        """The adapter a request names; None for the base model; 404 for anything else."""
        if not model or model in self.base_names:
            return None
        entry = self.loras.get(model)
        if entry is None:
            raise APIError(
                404,
                "NotFoundError",
                f"The model `{model}` does not exist. Valid aliases: {', '.join(self.base_names)}.",
                "model",
            )
        return entry

    def profile(self, entry: LoraEntry | None) -> ServingProfile:
        return entry.profile if entry else self.engine.base_profile

    # --- /v1/models ---------------------------------------------------------------------------------

    @staticmethod
    def _permission(created: int) -> list[dict]:
        return [
            {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ]

    def cards(self) -> list[dict]:
        created = int(time.time())
        cards = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.model_path,
                "parent": None,
                "max_model_len": self.engine.max_model_len,
                "permission": self._permission(created),
            }
            for name in self.base_names
        ]
        cards += [
            {
                "id": e.name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": e.path,
                "parent": self.base_names[0],
                "max_model_len": None,
                "permission": self._permission(created),
            }
            for e in self.loras.values()
        ]
        return cards

    # --- runtime LoRA updates -------------------------------------------------------------------------

    def _check_load(self, body: LoadLoRAAdapterRequest) -> None:
        if not body.lora_name or not body.lora_path:
            raise invalid_user_input("Both 'lora_name' and 'lora_path' must be provided.")
        if not self.engine.enable_lora:
            raise invalid_user_input("LoRA is not enabled: start the engine with --enable-lora to load adapters.")
        if body.lora_name in self.base_names:
            raise invalid_user_input(f"The lora adapter '{body.lora_name}' conflicts with a served base model.")
        if body.lora_name in self.loras and not body.load_inplace:
            raise invalid_user_input(
                f"The lora adapter '{body.lora_name}' has already been loaded. If you want to "
                "load the adapter in place, set 'load_inplace' to True."
            )

    async def load(self, body: LoadLoRAAdapterRequest) -> str:
        self._check_load(body)
        name = body.lora_name
        async with self._locks[name]:
            self._check_load(body)  # again: a concurrent load of the same name may have won
            existing = self.loras.get(name)
            int_id = existing.int_id if existing else next(self._ids)  # in place keeps the id
            key = f"lora{int_id}"
            started = time.perf_counter()
            try:
                # Eager: validated and in memory before the name becomes routable (vLLM PR #11727).
                files = await self.engine.call(lambda: self.engine.load_adapter(key, body.lora_path, name))
            except AdapterNotFound as e:
                log.warning("LoRA adapter not found", extra={"adapter": name, "lora_path": body.lora_path})
                raise not_found(f"Loading lora {name} failed: {e}") from e
            except Exception as e:  # invalid adapter or engine error: 0.33 answers 500 with the text
                log.warning(
                    "LoRA adapter load failed", extra={"adapter": name, "lora_path": body.lora_path, "error": str(e)}
                )
                raise internal(str(e)) from e
            self.loras[name] = LoraEntry(
                name, body.lora_path, int_id, profile_from(files.serving, self.engine.base_profile)
            )
            log.info(
                "LoRA adapter loaded",
                extra={
                    "adapter": name,
                    "adapter_key": key,
                    "lora_path": body.lora_path,
                    "inplace": existing is not None,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        return f"Success: LoRA adapter '{name}' added successfully."

    async def unload(self, body: UnloadLoRAAdapterRequest) -> str:
        name = body.lora_name
        if not name:
            raise invalid_user_input("'lora_name' needs to be provided to unload a LoRA adapter.")
        async with self._locks[name]:
            entry = self.loras.get(name)
            if entry is None:
                raise not_found(f"The lora adapter '{name}' cannot be found.")
            del self.loras[name]
            # Unlike vLLM 0.33 (which keeps the weights until LRU-evicted) the memory is freed too; queued
            # requests for the name run first, the worker being FIFO.
            await self.engine.call(lambda: self.engine.unload_adapter(entry.key))
        log.info("LoRA adapter unloaded", extra={"adapter": name, "adapter_key": entry.key})
        return f"Success: LoRA adapter '{name}' removed successfully."
