"""Checking an imported adapter against its base model (POST /v1/models/import, service/model_import.py), once
its archive has been read (service/import_archive.py). Each problem is a 400 naming the file and the field or tensor
(`param` is `file:<name>`, `base_model`, `adapter_config.json`, `adapter_config.json:<field>` or
`adapter_model.safetensors:<tensor>`):

1. the adapter's files (`invalid_adapter`): adapter_config.json and adapter_model.safetensors at its top; pickled
   weights (adapter_model.bin, .pt, ...) are refused, since unpickling runs whatever code the file carries;
2. adapter_config.json: a LoRA (`peft_type` LORA) of a causal language model, with a positive integer `r`, a positive
   `lora_alpha` and `target_modules` as a list of names; nothing that the serving path or a continuing job would not
   reproduce (DoRA, rsLoRA, rank or alpha patterns, a subset of layers, biases); the fleet's rules for serving
   (service/serve_compat.py `check_lora_servable`, as jobs are checked: `unservable_adapter`) and the engine's
   (inference/adapters.py `config_problems`). `base_model_name_or_path` is informational only;
3. adapter_model.safetensors' header (read with struct and json: no torch here): exactly a `lora_A` of [r, in] and a
   `lora_B` of [out, r] for every layer of the base model that `target_modules` names, in float dtypes, whose byte
   ranges fill the file. The base model's layers are hone-tiny's from its architecture, or a local folder's from its
   safetensors headers; a base whose layers cannot be read here is refused."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hone_kernel import tiny_model
from inference.adapters import config_problems
from service.base_models import BaseModel
from service.context import AppContext
from service.errors import NAME_CHARS, ErrorCode, InvalidRequest, excerpt
from service.import_archive import CONFIG, KEPT, WEIGHTS, Archive
from service.serve_compat import LoraFields, check_lora_servable, local_tensor_shapes, safetensors_header

# Weights saved with torch.save (pickle): loading them runs code the file carries
PICKLED = re.compile(r"^(adapter_model|pytorch_model)[^/]*\.(bin|pt|pth|pkl|pickle|ckpt)$")
MAX_CONFIG_BYTES = 1024 * 1024
FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
PREFIX = "base_model.model."  # what PEFT puts before a module's name in the adapter's tensors


def check_adapter(ctx: AppContext, archive: Archive, base: BaseModel) -> dict[str, Any]:
    """The adapter's files, its config and its tensors checked, in that order; its config, as read."""
    _check_files(archive)
    config = _check_config(ctx, archive)
    _check_tensors(archive, base, config)
    return config


def _adapter_error(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=ErrorCode.INVALID_ADAPTER)


# --- the adapter's files -----------------------------------------------------------------------------


def _check_files(archive: Archive) -> None:
    pickled = sorted(name for name in archive.files if PICKLED.match(name))  # the adapter's own (files in
    # subfolders, a trainer's checkpoints among them, are neither read nor kept)
    if pickled:
        raise _adapter_error(
            f"{pickled[0]} holds pickled weights, which Hone does not load: unpickling runs whatever code the file "
            f"carries. Save the adapter as {WEIGHTS} (peft's save_pretrained does by default, safe_serialization="
            "True), or convert it with safetensors.torch.save_file on a machine you trust, and leave the .bin out.",
            param=f"file:{pickled[0]}",
        )
    for name in KEPT:
        if name not in archive.files:
            elsewhere = sorted(n for n in archive.files if n.rsplit("/", 1)[-1] == name)
            where = f" (found at {elsewhere[0]}: the adapter's folder must be the archive's top)" if elsewhere else ""
            raise _adapter_error(
                f"The archive has no {name}{where}: a PEFT LoRA adapter's folder holds {CONFIG} and {WEIGHTS}, as "
                "save_pretrained writes them.",
                param=f"file:{name}",
            )


# --- adapter_config.json -----------------------------------------------------------------------------


def _param(name: str) -> str:
    return f"{CONFIG}:{name}"


# Fields of a LoRA config the serving path and a continuing job (trainer/modeling.py: r, lora_alpha and
# target_modules over every layer) would not reproduce, and what each means when it is set.
_NOT_REPRODUCED = {
    "use_dora": "DoRA (weight-decomposed) adapters",
    "use_rslora": "rank-stabilised LoRA (alpha / sqrt(r)), which a job continuing it would scale as alpha / r",
    "rank_pattern": "ranks that differ by layer",
    "alpha_pattern": "alphas that differ by layer",
    "layers_to_transform": "adapters of some layers only",
    "layers_pattern": "adapters of some layers only",
    "lora_bias": "LoRA biases",
    "fan_in_fan_out": "fan_in_fan_out weights (GPT-2's Conv1D layers)",
    "trainable_token_indices": "trained token embeddings (new vocabulary)",
    "target_parameters": "adapters of parameters rather than layers",
}


def _check_config(ctx: AppContext, archive: Archive) -> dict[str, Any]:
    member = archive.files[CONFIG]
    if member.size > MAX_CONFIG_BYTES:
        raise _adapter_error(f"{CONFIG} is {member.size} bytes; a LoRA config is a few hundred.", param=CONFIG)
    try:
        config = json.loads(archive.read(CONFIG))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _adapter_error(f"{CONFIG} is not valid JSON: {excerpt(exc, 200)}.", param=CONFIG) from None
    if not isinstance(config, dict):
        raise _adapter_error(f"{CONFIG} must hold a JSON object.", param=CONFIG)
    if config.get("peft_type") != "LORA":
        raise _adapter_error(
            f"{CONFIG} says peft_type {excerpt(config.get('peft_type'))!r}: only LoRA adapters (peft_type 'LORA') "
            "are imported, the kind Hone's engines hot-load.",
            param=_param("peft_type"),
        )
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise _adapter_error(
            f"{CONFIG} says task_type {excerpt(config['task_type'])!r}: Hone serves causal language models "
            "(task_type 'CAUSAL_LM').",
            param=_param("task_type"),
        )
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise _adapter_error(f"{CONFIG}: r must be a positive integer, not {excerpt(rank)!r}.", param=_param("r"))
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise _adapter_error(
            f"{CONFIG}: lora_alpha must be a positive number, not {excerpt(alpha)!r}.", param=_param("lora_alpha")
        )
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise _adapter_error(
            f'{CONFIG}: target_modules must be a list of module names (e.g. ["q_proj", "v_proj"]), not '
            f"{excerpt(targets)!r}; a pattern is not read here, so save the adapter with the names it adapts.",
            param=_param("target_modules"),
        )
    for key, what in _NOT_REPRODUCED.items():
        if config.get(key):
            raise _adapter_error(
                f"{CONFIG} sets {key}: {what} cannot be imported; Hone serves and continues plain LoRA adapters "
                "(r, lora_alpha and target_modules over every layer).",
                param=_param(key),
            )
    if config.get("bias", "none") != "none":
        raise _adapter_error(
            f"{CONFIG} sets bias {excerpt(config['bias'])!r}: only bias 'none' is served.", param=_param("bias")
        )
    saved = config.get("modules_to_save") or []
    fields = LoraFields(_param("r"), _param("target_modules"), _param("modules_to_save"))
    check_lora_servable(
        rank, targets, ctx.settings.serving.max_lora_rank, fields, saved if isinstance(saved, list) else [saved]
    )
    try:
        problems = config_problems(config, ctx.settings.serving.max_lora_rank)  # the engines' own rules, last
    except (TypeError, ValueError) as exc:
        problems = [f"it cannot be read as a LoRA config ({excerpt(exc, 200)})."]
    if problems:
        raise InvalidRequest(f"{CONFIG}: {' '.join(problems)}", param=CONFIG, code=ErrorCode.UNSERVABLE_ADAPTER)
    return config


# --- the base model's layers and adapter_model.safetensors -----------------------------------------------


def llama_linear_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) features of every projection of a Llama model's layers, by module name, from its config."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    layer = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inner, hidden),
        "mlp.up_proj": (inner, hidden),
        "mlp.down_proj": (hidden, inner),
    }
    return {f"model.layers.{i}.{m}": shape for i in range(config["num_hidden_layers"]) for m, shape in layer.items()}


def base_linear_shapes(base: BaseModel) -> dict[str, tuple[int, int]]:
    """(out, in) of each 2-D weight of the base model, by module name: hone-tiny's from its architecture, a model
    in a local folder's from its safetensors headers (serve_compat.local_tensor_shapes). A base whose layers
    cannot be read here is a 400: an adapter for it could not be checked."""
    if base.vision:
        raise InvalidRequest(
            f"Adapters for image-text base models ('{base.name}') cannot be imported yet: their checkpoints name "
            "their layers otherwise than the loaded model does, so the adapter's tensors cannot be checked here.",
            param="base_model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    if base.source == f"builtin:{tiny_model.TINY_MODEL}":
        return llama_linear_shapes(tiny_model.ARCHITECTURE)
    shapes = None if base.source.startswith("builtin:") else local_tensor_shapes(base.source)
    if not shapes:
        raise InvalidRequest(
            f"The layers of base model '{base.name}' cannot be read here: its source {excerpt(base.source)!r} is "
            "not a folder of safetensors on this server (a Hugging Face id is only downloaded by trainers and "
            "engines), so an adapter for it cannot be checked. Register it from a local folder to import adapters.",
            param="base_model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    return {
        name[: -len(".weight")]: (s[0], s[1]) for name, s in shapes.items() if name.endswith(".weight") and len(s) == 2
    }


def _tensor_error(name: str, message: str) -> InvalidRequest:
    return _adapter_error(f"{WEIGHTS}: tensor '{excerpt(name, NAME_CHARS)}' {message}", param=f"{WEIGHTS}:{name}")


def _check_tensors(archive: Archive, base: BaseModel, config: dict[str, Any]) -> None:
    member = archive.files[WEIGHTS]
    content = archive.tar.extractfile(member)
    assert content is not None  # a regular file
    try:
        header = safetensors_header(content, member.size)  # type: ignore[arg-type]  # a binary file object
        data_bytes = member.size - content.tell()
    except ValueError as exc:
        raise _adapter_error(f"{WEIGHTS} is not a safetensors file: {exc}.", param=WEIGHTS) from None
    rank, targets = config["r"], set(config["target_modules"])
    layers = base_linear_shapes(base)
    expected = {module: shape for module, shape in layers.items() if module.rsplit(".", 1)[-1] in targets}
    if not expected:
        raise _adapter_error(
            f"{CONFIG}: target_modules {sorted(targets)} name no layer of base model '{base.name}'.",
            param=_param("target_modules"),
        )
    seen: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for name in sorted(header):  # the same tensor named first, whatever order the file has them in
        if name == "__metadata__":
            continue
        entry = header[name]
        module, _, kind = name.removesuffix(".weight").rpartition(".")
        module = module.removeprefix(PREFIX)
        if not name.endswith(".weight") or kind not in ("lora_A", "lora_B"):
            if "lora_embedding" in name or "trainable_tokens" in name:
                raise _tensor_error(name, "adapts the vocabulary, which vLLM cannot hot-load with a LoRA adapter.")
            if "lora_magnitude" in name:
                raise _tensor_error(name, "is a DoRA magnitude, which Hone does not serve.")
            raise _tensor_error(
                name,
                "is not a LoRA weight (lora_A or lora_B of a layer): whole layers saved beside the adapter "
                "(modules_to_save) are not served.",
            )
        if module not in layers:
            raise _tensor_error(
                name, f"adapts '{excerpt(module, NAME_CHARS)}', a layer base model '{base.name}' does not have."
            )
        if module not in expected:
            raise _tensor_error(name, f"adapts '{module}', which target_modules {sorted(targets)} does not name.")
        out_features, in_features = layers[module]
        want = [rank, in_features] if kind == "lora_A" else [out_features, rank]
        if not isinstance(entry, dict):
            raise _tensor_error(name, "has no dtype, shape and data_offsets in the header.")
        shape, dtype, offsets = entry.get("shape"), entry.get("dtype"), entry.get("data_offsets")
        if shape != want:
            raise _tensor_error(
                name,
                f"has shape {excerpt(shape)}, but base model '{base.name}' has {module} of {out_features} x "
                f"{in_features} (out x in), so at r {rank} it must be {want}: the adapter was trained for another "
                "base model, or its config's r is not its weights'.",
            )
        if dtype not in FLOAT_BYTES:
            raise _tensor_error(name, f"is {excerpt(dtype)!r}; LoRA weights are one of {', '.join(FLOAT_BYTES)}.")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise _tensor_error(name, "has no [start, end] data_offsets in the header.")
        start, end = offsets
        if end - start != math.prod(want) * FLOAT_BYTES[dtype]:
            raise _tensor_error(
                name, f"takes {end - start} bytes, but {want} {dtype} takes {math.prod(want) * FLOAT_BYTES[dtype]}."
            )
        spans.append((start, end, name))
        seen.add(name.removesuffix(".weight").removeprefix(PREFIX))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise _tensor_error(name, f"starts at byte {start} of the data, not {position}: the file is damaged.")
        position = end
    if position != data_bytes:
        raise _adapter_error(
            f"{WEIGHTS}: its tensors take {position} bytes, but the file holds {data_bytes} after the header: it is "
            "truncated or damaged.",
            param=WEIGHTS,
        )
    for module in sorted(expected):
        for kind in ("lora_A", "lora_B"):
            if f"{module}.{kind}" not in seen:
                raise _tensor_error(
                    f"{PREFIX}{module}.{kind}.weight",
                    f"is missing: target_modules {sorted(targets)} names {module} of base model '{base.name}', and "
                    "a job continuing this adapter adapts every layer it names.",
                )
