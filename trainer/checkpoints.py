"""Checkpoints in storage: weights plus optimizer, scheduler, RNG and data position, committed by a marker file.

`jobs/{id}/checkpoints/step-{n}/` holds the adapter (or full weights), `trainer_state.pt`, and `COMPLETE`,
uploaded last: a checkpoint without it was cut off mid-upload and is ignored."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.blobs import Blobs

MARKER = "COMPLETE"
STATE = "trainer_state.pt"
_STEP = re.compile(r"checkpoints/step-(\d+)/" + MARKER + "$")


@dataclass
class Saved:
    step: int
    local: Path
    prefix: str


def latest_step(blobs: Blobs, output_prefix: str) -> int | None:
    steps = [int(m.group(1)) for key in blobs.list(output_prefix + "checkpoints/") if (m := _STEP.search(key))]
    return max(steps) if steps else None


def save(
    blobs: Blobs,
    output_prefix: str,
    workdir: Path,
    step: int,
    model,
    state: dict,
    *,
    tokenizer=None,
    extra_files: dict[str, str] | None = None,
    weights: dict | None = None,
) -> Saved:
    """The tokenizer and serving files make a checkpoint servable on its own, like the final adapter. `weights`:
    the model's, gathered whole, when the model itself holds only a shard of them (trainer/distributed.py)."""
    import torch  # here, not at the top: the layout (latest_step, load) stays importable without torch

    local = workdir / f"step-{step}"
    shutil.rmtree(local, ignore_errors=True)
    if weights is None:
        model.save_pretrained(local, safe_serialization=True)
    else:
        model.save_pretrained(local, safe_serialization=True, state_dict=weights)
    if tokenizer is not None:
        from trainer.modeling import save_inputs  # modeling imports this module

        save_inputs(tokenizer, local)
    for name, text in (extra_files or {}).items():
        (local / name).write_text(text)
    torch.save(state, local / STATE)
    (local / MARKER).write_text(str(step))
    prefix = f"{output_prefix}checkpoints/step-{step}/"
    blobs.upload_dir(local, prefix, last=MARKER)
    return Saved(step, local, prefix)


def load(blobs: Blobs, output_prefix: str, workdir: Path, step: int) -> Path:
    local = workdir / f"restore-step-{step}"
    shutil.rmtree(local, ignore_errors=True)
    blobs.download_prefix(f"{output_prefix}checkpoints/step-{step}/", local)
    return local


def download_weights(blobs: Blobs, prefix: str, local: Path) -> Path:
    """Only the weights of a published model or checkpoint under `prefix`: a parent's optimizer state and
    tokenizer are not what a job continuing it starts from."""
    shutil.rmtree(local, ignore_errors=True)
    for key in blobs.list(prefix):
        name = key[len(prefix) :]
        if name.endswith(".safetensors") or name in ("adapter_config.json", "config.json"):
            target = local / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blobs.read_bytes(key))
    return local


def full_weights(folder: Path) -> dict:
    """A full-weights checkpoint's tensors, by name."""
    from safetensors.torch import load_file

    state: dict = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    if not state:
        raise FileNotFoundError(f"no weights (*.safetensors) in {folder}")
    return state


def load_weights(model, folder: Path, tuning_mode: str) -> None:
    from safetensors.torch import load_file

    if tuning_mode == "full":
        state = full_weights(folder)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(f"checkpoint has weights the model lacks: {unexpected[:5]}")
        return
    from peft import set_peft_model_state_dict

    # torch's _IncompatibleKeys (peft annotates the result as `namedtuple`, the function)
    loaded: Any = set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
    # An adapter of another shape would otherwise load partly and train on silently.
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    if loaded.unexpected_keys or missing:
        raise RuntimeError(
            f"adapter does not fit the model: unexpected {loaded.unexpected_keys[:3]}, missing {missing[:3]}"
        )
