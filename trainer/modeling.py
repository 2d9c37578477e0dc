"""Loading the base model and tokenizer, wrapping it for LoRA, QLoRA or full tuning, and the loss over target
tokens."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from hone_kernel import builtin_models
from hone_kernel.images import OPENAI_LIMITS
from hone_kernel.trainer_contract import Hyperparameters
from hone_kernel.vision import VisionInputs, is_vision_model, load_image
from trainer import checkpoints, quantization
from trainer.batches import IGNORE, MicroBatch, Pixels
from trainer.blobs import Blobs
from trainer.data import vision_of


class ModelLoadError(RuntimeError):
    pass


def resolve_model_dir(name: str, source: str, cache_dir: str) -> str:
    """A local folder holding the base model (built first for built-in models), or the Hugging Face id."""
    if source.startswith("builtin:"):
        builtin = source.split(":", 1)[1]
        try:
            return str(builtin_models.build(builtin, Path(cache_dir) / builtin))
        except builtin_models.UnknownBuiltin as exc:
            raise ModelLoadError(f"Base model {name!r}: {exc}.") from exc
    return source


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_base(name: str, source: str, cache_dir: str, hp: Hyperparameters | None = None):
    """The base model and its tokenizer; for a QLoRA job (`hp.tuning_mode == "qlora"`), loaded in 4 bits. A vision
    model's tokenizer carries its image processor (`hone_vision`: trainer.data.vision_of)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    path = resolve_model_dir(name, source, cache_dir)
    dtype = torch.bfloat16 if device().type == "cuda" else torch.float32
    quantized = hp is not None and hp.tuning_mode == "qlora"
    vision = is_vision_model(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if quantized:
            assert hp is not None
            if vision:
                raise ModelLoadError(f"Base model {name!r} reads images, and QLoRA trains text models only.")
            model = quantization.load_4bit(path, hp, device())
        else:
            loader = AutoModelForImageTextToText if vision else AutoModelForCausalLM
            model = loader.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        if vision:
            tokenizer.hone_vision = VisionInputs(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Base model {name!r} could not be loaded from {source!r}: {exc}".strip()) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantized:
        return model, tokenizer  # placed by device_map: a 4-bit model refuses .to()
    return model.to(device()), tokenizer


def tunable(
    base, hp: Hyperparameters, blobs: Blobs, init_prefix: str | None, workdir: Path, *, lora_vision_tower: bool = False
):
    """The base wrapped for tuning; for a job continuing a tuned model, with that model's weights loaded (its
    adapter, trainable, or its full weights). The job's own checkpoints, if any, are loaded over this later."""
    model = wrap_for_tuning(base, hp, lora_vision_tower=lora_vision_tower)
    if init_prefix:
        try:
            checkpoints.load_weights(
                model, checkpoints.download_weights(blobs, init_prefix, workdir / "parent"), hp.tuning_mode
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"The weights to continue from ({init_prefix}) could not be loaded: {exc}") from exc
    return model


# A vision model's parts LoRA leaves alone unless asked (TrainSpec.lora_vision_tower): vLLM adapts the language model
VISION_PARTS = r".*(vision_tower|vision_model|multi_modal_projector|visual)\..*"


def wrap_for_tuning(model, hp: Hyperparameters, *, lora_vision_tower: bool = False):
    if hp.tuning_mode == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    if hp.tuning_mode == "qlora":
        model = quantization.prepare(model)

    # peft annotates lora_alpha as int; it is only ever divided (alpha / r), and Hone's may be fractional
    config = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=hp.lora_dropout,
        target_modules=list(hp.lora_target_modules),
        exclude_modules=VISION_PARTS if is_multimodal(model) and not lora_vision_tower else None,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, config)


def pixels_of(tokenizer) -> Pixels | None:
    """A vision model's pixels of a micro-batch's images (hone_kernel.vision, as the engine makes them), or None."""
    vision = vision_of(tokenizer)
    if vision is None:
        return None
    return lambda urls: vision.pixels([load_image(url, OPENAI_LIMITS) for url in urls])


def save_inputs(tokenizer, folder: Path) -> None:
    """The tokenizer beside weights; a vision model's whole processor (its image settings and the tokenizer)."""
    vision = vision_of(tokenizer)
    if vision is not None:
        vision.processor.save_pretrained(folder)
    else:
        tokenizer.save_pretrained(folder)


def is_multimodal(model) -> bool:
    return getattr(model.config, "vision_config", None) is not None


def _body(model, mb: MicroBatch):
    """The module that maps input ids to the last hidden states: the decoder, or for images the multimodal body
    (vision tower, projector and decoder: each image's features replace its run of image tokens)."""
    if mb.pixel_values is None:
        return model.get_decoder(), {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, {"pixel_values": mb.pixel_values.to(device(), dtype=base.dtype)}


def _target_hidden(model, mb: MicroBatch):
    dev = device()
    body, extra = _body(model, mb)
    hidden = body(
        **extra,
        input_ids=mb.input_ids.to(dev),
        position_ids=mb.position_ids.to(dev),
        attention_mask=None if mb.attention_mask is None else mb.attention_mask.to(dev),
        use_cache=False,  # with a cache transformers ignores packed position ids and lets examples see each other
    ).last_hidden_state
    labels = mb.labels[:, 1:].to(dev)
    keep = labels != IGNORE
    return hidden[:, :-1][keep], labels[keep], keep


def token_logprobs(model, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each target token, the row it is in), in row order (rows: one example each)."""
    hidden, targets, keep = _target_hidden(model, mb)
    logps = torch.log_softmax(model.get_output_embeddings()(hidden).float(), -1)
    picked = logps.gather(-1, targets[:, None]).squeeze(-1)
    rows = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]
    return picked, rows


def sequence_logprobs(model, mb: MicroBatch) -> torch.Tensor:
    """Summed log-probability of each row's targets (rows must hold one example each: unpacked)."""
    picked, rows = token_logprobs(model, mb)
    return torch.zeros(mb.input_ids.shape[0], device=picked.device).index_add(0, rows, picked)


def loss_sums(model, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy, number of correct argmax predictions) over the micro-batch's targets.

    The output head only runs on target positions: prompts, padding and packed neighbours cost no logits."""
    hidden, targets, _ = _target_hidden(model, mb)
    logits = model.get_output_embeddings()(hidden).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.argmax(-1) == targets).sum()
    return loss, correct
