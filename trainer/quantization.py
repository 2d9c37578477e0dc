"""QLoRA: the frozen base loaded in 4 bits through bitsandbytes, LoRA trained over it in `compute_dtype`.

Only the base is quantized; the adapter stays in float32 and is saved as a normal PEFT adapter over the base's
module names (`...q_proj.lora_A.weight`), so it loads onto the full-precision base to be served like any other.
The served model therefore differs from the trained one by the quantization error of the base: the parity gate
(service/deploy/parity.py) checks the greedy answers recorded here against the engine's within a stated bound."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from hone_kernel.trainer_contract import Hyperparameters, TrainSpec

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Greedy answers recorded for the parity gate, and their length (the gate's SMOKE_MAX_TOKENS)
PARITY_ANSWERS = 8
PARITY_MAX_TOKENS = 64


def _not_the_hub_kernel(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


# On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional faster kernel from the Hugging Face hub when it
# is first imported (by peft or transformers, whichever comes first) and logs a warning when it cannot (no `kernels`
# package, no network, an untrusted repository); its own kernels are used then, so the line would only mislead a
# reader of the job's log. The filter is on the logger by name, in place before anything imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_the_hub_kernel)


def config(hp: Hyperparameters):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=hp.quant_type,
        bnb_4bit_use_double_quant=hp.double_quant,
        bnb_4bit_compute_dtype=DTYPES[hp.compute_dtype],
    )


def _device_index(device: torch.device) -> int | str:
    # the GPU this process trains on (a data-parallel rank has set its own), as accelerate's device_map names it
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return device.type


def load_4bit(path: str, hp: Hyperparameters, device: torch.device):
    """The base with every linear layer but the output head in 4 bits (bitsandbytes' Linear4bit); embeddings,
    norms and the head in `compute_dtype`."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path,
        quantization_config=config(hp),
        dtype=DTYPES[hp.compute_dtype],
        attn_implementation="sdpa",
        # quantized as it is placed: a 4-bit model cannot be moved with .to() afterwards
        device_map={"": _device_index(device)},
    )
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # On CPUs with AVX512-BF16 a Linear4bit repacks its weight the first time it runs without gradients
            # (validation, the parity answers) into a bf16 inference layout, and training continues on that: the
            # losses after it would differ from a resumed run's, which repacks at other steps. One layout always.
            module.support_avx512bf16_for_cpu = False
    if device.type == "cpu":
        # The unquantized tensors (embeddings, norms) are views of the memory-mapped checkpoint, which keeps the
        # whole file mapped and the pages quantizing read resident: RSS a float32 copy of the base larger (966 MiB
        # on the 227M benchmark model). Copies of the few that stay release it.
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if getattr(tensor, "quant_state", None) is None:
                    tensor.data = tensor.data.clone()
    return model


def prepare(model):
    """The 4-bit base made ready for an adapter: frozen, everything else as loaded (in `compute_dtype`).

    What peft's prepare_model_for_kbit_training does, less two things it adds. Gradient checkpointing (its default)
    recomputes every layer's forward in the backward pass, about a third more time a step, to save activations,
    which Hone's LoRA path keeps too. And it casts every unquantized weight to float32: the norms (small) but also
    the embeddings and the output head, 4 bytes for each of vocabulary x hidden weights (4.2 GB on Llama 3 8B, more
    than its 4-bit body), which would undo most of what quantizing saves; bf16 norms train as Hone's LoRA trains.
    With compute_dtype float32 (CPU trainers) it is the same model either way."""
    model.requires_grad_(False)
    return model


def parameter_count(model) -> int:
    """Parameters as the unquantized model has them: a 4-bit tensor packs two weights a byte, and its
    quant_state keeps the shape it stands for."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += int(torch.Size(state.shape).numel()) if state is not None else p.numel()
    return total


def base_weight_bytes(model) -> int:
    """Bytes the frozen base's weights take: its parameters and buffers (4-bit ones as packed bytes) plus the
    quantization state each Linear4bit keeps (absmax, nested constants, codebook), adapters excluded."""
    total = 0
    seen: set[int] = set()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if "lora_" in name or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            total += _quant_state_bytes(state)
    return total


def _quant_state_bytes(state: Any) -> int:
    total = 0
    for part in ("absmax", "code", "offset"):
        value = getattr(state, part, None)
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    nested = getattr(state, "state2", None)
    return total + (_quant_state_bytes(nested) if nested is not None else 0)


@torch.no_grad()
def greedy_answers(model, tokenizer, parity: dict, stop_ids: list[int], count: int = PARITY_ANSWERS) -> list[dict]:
    """The trained (quantized) model's greedy answers to the parity rows' prompts, as the gate asks the engine:
    each `{"tokenize": <the prompt's /tokenize request>, "text": <answer>}`."""
    # chat prompts and prompt/completion prompts: raw text teaches no answer (nor where one stops) to compare
    completion = parity.get("format") == "prompt_completion"
    prompts = [s for s in parity["samples"] if s["tokenize"].get("add_generation_prompt") or completion]
    if not prompts:
        return []
    rows = [sample["token_ids"] for sample in prompts[:count]]
    training = model.training
    model.eval()
    dev = next(p for p in model.parameters() if p.requires_grad).device
    # One left-padded batch: each decode step dequantizes the 4-bit weights once for every prompt, not once per
    # prompt (8 prompts one at a time made a QLoRA checkpoint on CPU take ~8x as long).
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=dev)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=dev)
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=PARITY_MAX_TOKENS,
            eos_token_id=stop_ids,
            pad_token_id=pad,
        )[:, width:].tolist()
    finally:
        model.train(training)
    answers = []
    stops = set(stop_ids)
    for sample, generated in zip(prompts, out):
        # a row that stopped early is padded after its stop id: the answer ends at the first one
        end = next((i for i, token in enumerate(generated) if token in stops), len(generated))
        # decoded as the engine decodes (inference/engine.py), so the texts compare as the user would read them
        text = tokenizer.decode(generated[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        answers.append({"tokenize": sample["tokenize"], "text": text})
    return answers


def serving_files(spec: TrainSpec, model, tokenizer, files: dict[str, str]) -> dict[str, str]:
    """The serving files to publish beside weights: for a QLoRA run, parity_samples.json with the greedy answers
    the gate compares the full-precision serving path against (`greedy`), else `files` as they are."""
    if spec.hyperparameters.tuning_mode != "qlora":
        return files
    parity = json.loads(files["parity_samples.json"])
    stop_ids = list(json.loads(files["hone_serving.json"])["stop_token_ids"])
    parity["greedy"] = {"tuning_mode": "qlora", "answers": greedy_answers(model, tokenizer, parity, stop_ids)}
    return {**files, "parity_samples.json": json.dumps(parity)}
