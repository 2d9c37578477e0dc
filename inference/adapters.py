"""LoRA adapter folders checked the way vLLM checks them (reference §1.8), the pinned serving profile
(`hone_serving.json`), and the LRU set of adapters resident in memory (§1.9)."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "adapter_config.json"
TENSOR_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
REQUIRED_KEYS = ("r", "lora_alpha", "target_modules")
SERVING_FILE = "hone_serving.json"
# Allowed values of --max-lora-rank in vLLM 0.33.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# PEFT initialisations whose saved weights are not plain LoRA deltas over the base model.
_REJECTED_INITS = ("pissa", "olora", "corda", "loftq")
_LORA_MARKERS = (".lora_A", ".lora_B", ".lora_embedding_A", ".lora_embedding_B")


class AdapterNotFound(Exception):
    """No adapter at the path (vLLM answers 404)."""


class AdapterInvalid(ValueError):
    """An adapter vLLM would refuse to load (vLLM 0.33 answers 500 with this text)."""


@dataclass(frozen=True)
class ServingProfile:
    """What a request is rendered and stopped with. `chat_template` None means "no template at all"."""

    chat_template: str | None
    stop_token_ids: tuple[int, ...]


def read_serving_file(folder: Path) -> dict[str, Any] | None:
    """`hone_serving.json` written by Hone's trainer beside a model or adapter, if any."""
    path = Path(folder) / SERVING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AdapterInvalid(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise AdapterInvalid(f"{path} must hold a JSON object")
    return data


def profile_from(serving: dict[str, Any] | None, fallback: ServingProfile) -> ServingProfile:
    """The pinned template and stop ids where the serving file gives them, the fallback's otherwise."""
    if not serving:
        return fallback
    template = serving.get("chat_template") or fallback.chat_template
    stops = serving.get("stop_token_ids")
    if isinstance(stops, int):
        stops = [stops]
    ids = tuple(int(t) for t in stops) if stops else fallback.stop_token_ids
    return ServingProfile(template, ids)


def resolve_lora_path(lora_path: str) -> Path | None:
    """vLLM's resolution: `~` expanded, absolute or existing relative paths used as folders; anything else
    would be a Hugging Face Hub id, which this engine (offline) never downloads, so it is "not found"."""
    expanded = Path(os.path.expanduser(lora_path))
    if not (expanded.is_absolute() or expanded.exists()):
        return None
    folder = expanded.absolute()
    return folder if (folder / CONFIG_FILE).is_file() else None


@dataclass
class AdapterFiles:
    folder: Path
    config: dict[str, Any]
    tensors: Path
    rank: int
    serving: dict[str, Any] | None = field(default=None)


def config_problems(config: dict[str, Any], max_rank: int) -> list[str]:
    problems = []
    if config.get("use_dora"):
        problems.append("vLLM does not yet support DoRA.")
    if config.get("lora_bias"):
        problems.append("vLLM does not support LoRA bias (lora_bias).")
    bias = config.get("bias", "none")
    if bias != "none":
        problems.append(f"Adapter bias '{bias}' is not supported; only bias 'none' is.")
    modules_to_save = config.get("modules_to_save")
    if modules_to_save and not set(modules_to_save) <= {"classifier", "score"}:
        problems.append(f"vLLM only supports modules_to_save being None (or classifier/score), got {modules_to_save}.")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_REJECTED_INITS):
        problems.append(f"vLLM does not support init_lora_weights='{init}'.")
    for key, what in (
        ("alora_invocation_tokens", "aLoRA"),
        ("layer_replication", "layer_replication"),
        ("use_bdlora", "BD-LoRA"),
        ("use_qalora", "QALoRA"),
    ):
        if config.get(key):
            problems.append(f"vLLM does not support {what} adapters.")
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    rank = max(int(r) for r in ranks)
    if rank > max_rank:
        problems.append(f"LoRA rank {rank} is greater than max_lora_rank {max_rank}.")
    return problems


def _tensor_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:  # names only: no torch needed to list them
            return list(f.keys())
    import torch

    return list(torch.load(path, map_location="cpu", weights_only=True).keys())


def _module_of(key: str) -> str | None:
    for marker in _LORA_MARKERS:
        at = key.find(marker)
        if at >= 0:
            return key[:at].removeprefix("base_model.model.")
    return None


def inspect_adapter(lora_path: str, *, max_rank: int, supported_modules: set[str]) -> AdapterFiles:
    """Everything vLLM checks before an adapter may be registered; raises AdapterNotFound or AdapterInvalid."""
    folder = resolve_lora_path(lora_path)
    if folder is None:
        raise AdapterNotFound(f"No adapter found for {lora_path}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise AdapterInvalid(f"Invalid {CONFIG_FILE} in {folder}: {e}") from e
    if not isinstance(config, dict):
        raise AdapterInvalid(f"Invalid {CONFIG_FILE} in {folder}: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise AdapterInvalid(f"Missing required configuration fields: {', '.join(missing)}")
    try:
        problems = config_problems(config, max_rank)
    except (TypeError, ValueError) as e:
        raise AdapterInvalid(f"Invalid {CONFIG_FILE} in {folder}: {e}") from e
    if problems:
        raise AdapterInvalid(" ".join(problems))
    tensors = next((folder / name for name in TENSOR_FILES if (folder / name).is_file()), None)
    if tensors is None:
        raise AdapterInvalid(f"{folder} doesn't contain tensors")
    try:
        keys = _tensor_keys(tensors)
    except Exception as e:  # a truncated or foreign file
        raise AdapterInvalid(f"Cannot read {tensors}: {e}") from e
    allowed_extra = set(config.get("modules_to_save") or ())
    unexpected = []
    for key in keys:
        module = _module_of(key)
        if module is None:
            if key.removeprefix("base_model.model.").split(".")[0] not in allowed_extra:
                unexpected.append(key)
        elif module.rsplit(".", 1)[-1] not in supported_modules:
            unexpected.append(module)
    if unexpected:
        raise AdapterInvalid(
            f"While loading {folder}, expected target modules in {sorted(supported_modules)} "
            f"but received {sorted(set(unexpected))}. Please verify that the loaded LoRA module "
            "is correct"
        )
    serving = read_serving_file(folder)
    rank = max(int(r) for r in [config["r"], *(config.get("rank_pattern") or {}).values()])
    return AdapterFiles(folder, config, tensors, rank, serving)


class ResidentSet:
    """Least-recently-used order of the adapters whose weights are in memory; `capacity` of them at most
    (vLLM's CPU tier, `max(max_loras, max_cpu_loras)`)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._order: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def keys(self) -> list[str]:
        return list(self._order)

    def touch(self, key: str) -> None:
        self._order.move_to_end(key)

    def add(self, key: str) -> list[str]:
        """Marks `key` resident and most recent; returns the keys to evict to stay within capacity."""
        self._order[key] = None
        self._order.move_to_end(key)
        evict = []
        while len(self._order) > self.capacity:
            oldest = next(iter(self._order))
            del self._order[oldest]
            evict.append(oldest)
        return evict

    def discard(self, key: str) -> None:
        self._order.pop(key, None)
