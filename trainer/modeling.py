"""Loading the base model and tokenizer, wrapping it for LoRA, QLoRA or full tuning, and the loss over target
tokens."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from hone_kernel import tiny_model
from hone_kernel.trainer_contract import Hyperparameters
from trainer import checkpoints, quantization
from trainer.batches import IGNORE, MicroBatch
from trainer.blobs import Blobs


class ModelLoadError(RuntimeError):
    pass


def resolve_model_dir(name: str, source: str, cache_dir: str) -> str:
    """A local folder holding the base model (built first for built-in models), or the Hugging Face id."""
    if source.startswith("builtin:"):
        builtin = source.split(":", 1)[1]
        if builtin != tiny_model.TINY_MODEL:
            raise ModelLoadError(f"Base model {name!r}: unknown built-in model {builtin!r}.")
        return str(tiny_model.build(Path(cache_dir) / builtin))
    return source


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_base(name: str, source: str, cache_dir: str, hp: Hyperparameters | None = None):
    """The base model and its tokenizer; for a QLoRA job (`hp.tuning_mode == "qlora"`), loaded in 4 bits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(name, source, cache_dir)
    dtype = torch.bfloat16 if device().type == "cuda" else torch.float32
    quantized = hp is not None and hp.tuning_mode == "qlora"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if quantized:
            assert hp is not None
            model = quantization.load_4bit(path, hp, device())
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Base model {name!r} could not be loaded from {source!r}: {exc}".strip()) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantized:
        return model, tokenizer  # placed by device_map: a 4-bit model refuses .to()
    return model.to(device()), tokenizer


def tunable(base, hp: Hyperparameters, blobs: Blobs, init_prefix: str | None, workdir: Path):
    """The base wrapped for tuning; for a job continuing a tuned model, with that model's weights loaded (its
    adapter, trainable, or its full weights). The job's own checkpoints, if any, are loaded over this later."""
    model = wrap_for_tuning(base, hp)
    if init_prefix:
        try:
            checkpoints.load_weights(
                model, checkpoints.download_weights(blobs, init_prefix, workdir / "parent"), hp.tuning_mode
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"The weights to continue from ({init_prefix}) could not be loaded: {exc}") from exc
    return model


def wrap_for_tuning(model, hp: Hyperparameters):
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
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, config)


def _target_hidden(model, mb: MicroBatch):
    dev = device()
    hidden = model.get_decoder()(
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
