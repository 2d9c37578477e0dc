"""The registry of base models that jobs may tune: a name mapped to a local folder or a Hugging Face id.

Three sources, in order: `hone-tiny` (always; built by the trainer on first use), HONE_BASE_MODELS
(settings), and models an admin registered through /v1/organization/base_models (stored in the database)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sqlalchemy import select

from inference.tool_parsers import VLLM_PARSERS
from service.db import Database
from service.db.tables import RegisteredBaseModel
from service.errors import NAME_CHARS, ErrorCode, InvalidRequest, NotFound, PermissionDenied, excerpt

TINY_MODEL = "hone-tiny"
TINY_VISION_MODEL = "hone-tiny-vision"
# Fixed so that /v1/models answers the same on every start.
_REGISTERED_AT = 1767225600  # 2026-01-01
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")


@dataclass(frozen=True)
class TrainingDefaults:
    """What "auto" hyperparameters resolve to for one base model (service/training_plan.py applies them to a
    dataset). The generic values suit pretrained models of 1-70B parameters with LoRA, as the common recipes
    (and OpenAI's resolved values) do; a model that trains differently gets its own (see hone-tiny below)."""

    lora_learning_rate: float = 2e-4  # times learning_rate_multiplier
    full_learning_rate: float = 1e-5
    # DPO pushes the policy away from its reference with every step: at SFT's rate it wrecks a tuned model
    # (hone-tiny answered "BBBB" after DPO at SFT's multiplier), so "auto" multiplies the rate by this for DPO.
    dpo_learning_rate_multiplier: float = 0.1
    # Reinforcement fine-tuning moves a model that already answers: at SFT's rate its answers fall apart before
    # the rewards can steer them.
    rl_learning_rate_multiplier: float = 0.1
    # Reinforcement: each sampled answer's length at most, and prompts per step, when "auto"
    rl_max_completion_tokens: int = 512
    rl_prompts_per_step: int = 8
    rl_epochs: int = 2
    rl_temperature: float = 1.0  # of the answers sampled in training
    lora_rank: int = 16
    lora_alpha_per_rank: float = 2.0  # alpha = rank * this
    max_length: int = 2048  # tokens per example (HONE_TRAIN_MAX_LENGTH caps it)
    # Batch size: about this many tokens per optimizer step, from the dataset's mean example length...
    tokens_per_step: int = 16384
    # ...but never so large that an epoch has fewer steps than this (small sets still take several steps).
    min_steps_per_epoch: int = 8
    # Epochs: `epochs`, or more for small sets until the model has seen `min_examples_seen` examples
    # (at most `max_epochs`), or fewer for huge sets beyond `max_examples_seen` (OpenAI's 100 / 25000).
    epochs: int = 3
    min_examples_seen: int = 100
    max_examples_seen: int = 25000
    max_epochs: int = 25
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # The control plane has no tokenizer: a file's tokens are estimated from its bytes (JSON keys included).
    bytes_per_token: float = 4.5
    # ...and each image as this many tokens (a vision model's run per image: LLaVA-1.5's 576 at 336 pixels)
    image_tokens: int = 576

    @classmethod
    def with_overrides(cls, values: dict[str, Any] | None, base: TrainingDefaults | None = None) -> TrainingDefaults:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ValueError(f"unknown training default(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(base or cls(), **(values or {}))


# hone-tiny starts from random weights: it has to learn the task's words from scratch, so it takes larger
# steps and sees every small set many more times than a pretrained model would. Measured by
# benchmarks/auto_hyperparameters.py over three task shapes and five seeds (figures in the README).
TINY_DEFAULTS = TrainingDefaults(
    lora_learning_rate=1e-3,
    full_learning_rate=1e-3,
    dpo_learning_rate_multiplier=0.04,
    rl_learning_rate_multiplier=0.3,
    rl_max_completion_tokens=16,  # its answers are labels and short phrases; a longer one is babble
    # Trained from scratch on a few hundred examples, it needs passes over the prompts as supervised training does
    # (2 epochs: +0 to +11 points on the tickets benchmark; 6: +26 to +32), and at temperature 1 most of its samples
    # are misspelt labels (59%), so the rewards taught spelling, which greedy answers already had, instead of
    # which label: at 0.7, 3% are (benchmarks/reinforcement.py, README).
    rl_epochs=6,
    rl_temperature=0.7,
    tokens_per_step=256,
    min_steps_per_epoch=8,
    epochs=3,
    min_examples_seen=4800,
    max_epochs=50,
    bytes_per_token=3.8,
)


# hone-tiny-vision's language model is hone-tiny's, and learns from scratch as it does; each example carries 16
# image tokens more. Measured by tests/test_vision.py's task (coloured shapes): see the README's Vision section.
TINY_VISION_DEFAULTS = replace(TINY_DEFAULTS, image_tokens=16)


@dataclass(frozen=True)
class BaseModel:
    name: str
    source: str  # local folder, Hugging Face id, or "builtin:" for models Hone builds itself
    created: int = _REGISTERED_AT
    origin: str = "settings"  # builtin | settings | admin
    training: TrainingDefaults = field(default_factory=TrainingDefaults)
    # Serving a model too big for one GPU: vLLM splits it over tensor_parallel_size x pipeline_parallel_size
    # devices, which every engine of it then holds (local: that many of HONE_ENGINE_DEVICES; Kubernetes: that
    # many nvidia.com/gpu). The built-in engine runs on one CPU process and cannot: endpoints refuse it there.
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # Reads images (an image-text model: training data and requests may hold image parts), and whether its LoRA
    # adapts the vision tower and projector too (by default the language model only, as vLLM serves adapters)
    vision: bool = False
    lora_vision_tower: bool = False
    # How the family writes tool calls (a vLLM --tool-call-parser name): engines read tool_choice "auto" answers with
    # it. None: the model has no tool-call format, and "auto" is refused (named and "required" still work).
    tool_call_parser: str | None = None

    @property
    def serving_devices(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def builtin_cannot_split(base: BaseModel) -> str:
    return (
        f"Base model '{base.name}' is registered with tensor_parallel_size {base.tensor_parallel_size} and "
        f"pipeline_parallel_size {base.pipeline_parallel_size}, but this server serves with the built-in engine, "
        "which runs a model whole in one CPU process. Serve it with vLLM (HONE_INFERENCE_ENGINE=vllm on GPUs), or "
        "register it with parallel sizes of 1."
    )


_PARALLEL = ("tensor_parallel_size", "pipeline_parallel_size")
_FLAGS = ("vision", "lora_vision_tower")
_ENTRY_KEYS = {"source", "training", "tool_call_parser", *_PARALLEL, *_FLAGS}
# A family's tool-call format, told from its name or source when the entry names none (the formats vLLM documents
# for each family's chat template). hone-tiny's template writes Llama 3's JSON calls.
_FAMILY_PARSERS = (
    (re.compile(r"llama[-_.]?3", re.I), "llama3_json"),
    (re.compile(r"llama[-_.]?4", re.I), "llama4_pythonic"),
    (re.compile(r"qwen[-_.]?3[-_.]?coder", re.I), "qwen3_coder"),
    (re.compile(r"qwen|hermes", re.I), "hermes"),
    (re.compile(r"mistral|mixtral", re.I), "mistral"),
    (re.compile(r"granite", re.I), "granite"),
    (re.compile(r"^hone-tiny|^builtin:hone-tiny"), "llama3_json"),
)


def family_tool_parser(*names: str) -> str | None:
    for pattern, parser in _FAMILY_PARSERS:
        if any(pattern.search(name) for name in names):
            return parser
    return None


def _tool_parser(name: str, entry: dict) -> str | None:
    if "tool_call_parser" not in entry:
        return family_tool_parser(name, entry["source"])
    value = entry["tool_call_parser"]
    if value is not None and value not in VLLM_PARSERS:
        raise ValueError(
            f"HONE_BASE_MODELS[{name!r}].tool_call_parser must be one of vLLM's parsers ({', '.join(sorted(VLLM_PARSERS))}) "
            f"or null, got {value!r}"
        )
    return value


def _flags(name: str, entry: dict) -> tuple[bool, bool]:
    """(vision, lora_vision_tower) of an entry, checked."""
    flags = {key: entry.get(key, False) for key in _FLAGS}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"HONE_BASE_MODELS[{name!r}].{key} must be true or false, got {value!r}")
    if flags["lora_vision_tower"] and not flags["vision"]:
        raise ValueError(f"HONE_BASE_MODELS[{name!r}].lora_vision_tower needs vision: true")
    return flags["vision"], flags["lora_vision_tower"]


def _parallel(name: str, entry: dict) -> tuple[int, int]:
    """An entry's parallel sizes, checked: positive integers (a typo'd key is refused, never ignored)."""
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ValueError(
            f"HONE_BASE_MODELS[{name!r}] has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_ENTRY_KEYS))}"
        )
    sizes = {}
    for key in _PARALLEL:
        value = entry.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"HONE_BASE_MODELS[{name!r}].{key} must be a positive integer, got {value!r}")
        sizes[key] = value
    return sizes["tensor_parallel_size"], sizes["pipeline_parallel_size"]


class BaseModelRegistry:
    def __init__(self, configured: dict[str, str | dict], db: Database | None = None):
        self._static = {
            TINY_MODEL: BaseModel(
                TINY_MODEL,
                "builtin:hone-tiny",
                origin="builtin",
                training=TINY_DEFAULTS,
                tool_call_parser="llama3_json",
            ),
            TINY_VISION_MODEL: BaseModel(
                TINY_VISION_MODEL,
                "builtin:hone-tiny-vision",
                origin="builtin",
                training=TINY_VISION_DEFAULTS,
                vision=True,
                tool_call_parser="llama3_json",
            ),
        }
        for name, entry in configured.items():
            # "name": "source", or "name": {"source": ..., "training": {<TrainingDefaults field>: value},
            # "tensor_parallel_size": n, "pipeline_parallel_size": m}
            if isinstance(entry, dict):
                if not isinstance(entry.get("source"), str):
                    raise ValueError(f"HONE_BASE_MODELS[{name!r}] needs a 'source' (a folder or Hugging Face id)")
                training = TrainingDefaults.with_overrides(entry.get("training"))
                tp, pp = _parallel(name, entry)
                vision, tower = _flags(name, entry)
                self._static[name] = BaseModel(
                    name,
                    entry["source"],
                    training=training,
                    tensor_parallel_size=tp,
                    pipeline_parallel_size=pp,
                    vision=vision,
                    lora_vision_tower=tower,
                    tool_call_parser=_tool_parser(name, entry),
                )
            else:
                self._static[name] = BaseModel(name, entry, tool_call_parser=family_tool_parser(name, entry))
        self._db = db

    def _registered(self, name: str | None = None) -> list[BaseModel]:
        if self._db is None:
            return []
        with self._db.read() as session:
            stmt = select(RegisteredBaseModel)
            if name is not None:
                stmt = stmt.where(RegisteredBaseModel.name == name)
            rows = session.execute(stmt).scalars().all()
        return [
            BaseModel(r.name, r.source, r.created_at, "admin", tool_call_parser=family_tool_parser(r.name, r.source))
            for r in rows
        ]

    def get(self, name: str) -> BaseModel | None:
        if name in self._static:
            return self._static[name]
        if name.startswith("ft:") or not _NAME.match(name):
            return None
        found = self._registered(name)
        return found[0] if found else None

    def all(self) -> list[BaseModel]:
        models = {m.name: m for m in self._registered()} | self._static
        return sorted(models.values(), key=lambda m: m.name)

    # --- admin -------------------------------------------------------------------------

    def register(self, name: str, source: str) -> BaseModel:
        if not _NAME.match(name) or name.startswith("ft:"):
            raise InvalidRequest(
                f"Invalid base model name '{excerpt(name, NAME_CHARS)}': use letters, digits, '.', '_', '-' and '/'.",
                param="name",
                code=ErrorCode.INVALID_VALUE,
            )
        if name in self._static:
            raise PermissionDenied(
                f"Base model {name!r} is configured in settings or built in; it cannot be changed through the API.",
                param="name",
                code=ErrorCode.BASE_MODEL_NOT_EDITABLE,
            )
        now = int(time.time())
        assert self._db is not None  # the API's registry has a database
        with self._db.write() as session:
            row = session.get(RegisteredBaseModel, name)
            if row is None:
                session.add(RegisteredBaseModel(name=name, source=source, created_at=now))
            else:
                row.source = source
        model = self.get(name)
        assert model is not None  # just written
        return model

    def unregister(self, name: str) -> None:
        if name in self._static:
            raise PermissionDenied(
                f"Base model {name!r} is configured in settings or built in; it cannot be deleted through the API.",
                param="name",
                code=ErrorCode.BASE_MODEL_NOT_EDITABLE,
            )
        assert self._db is not None  # the API's registry has a database
        with self._db.write() as session:
            row = session.get(RegisteredBaseModel, name)
            if row is None:
                raise NotFound(
                    f"No such base model: {excerpt(name, NAME_CHARS)}", param="name", code=ErrorCode.NOT_FOUND
                )
            session.delete(row)

    @staticmethod
    def as_api(model: BaseModel) -> dict:
        return {"id": model.name, "object": "model", "created": model.created, "owned_by": "hone"}

    @staticmethod
    def as_admin_api(model: BaseModel) -> dict:
        return {
            "id": model.name,
            "object": "base_model",
            "created": model.created,
            "source": model.source,
            "origin": model.origin,
            "tensor_parallel_size": model.tensor_parallel_size,
            "pipeline_parallel_size": model.pipeline_parallel_size,
            "vision": model.vision,
            "lora_vision_tower": model.lora_vision_tower,
            "tool_call_parser": model.tool_call_parser,
        }
