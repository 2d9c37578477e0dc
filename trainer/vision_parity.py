"""The parity gate's evidence for a vision model: the trained model's greedy answers to the parity rows' image
prompts, which the gate asks the engine again (service/deploy/parity.py). The token ids already match by /tokenize;
the answers can only match if the engine's processor made the same pixels as training's (a different resize, crop
or normalisation changes what the adapter reads), so this compares processor output between training and serving
through the only view of it both engines give, vLLM's included."""

from __future__ import annotations

import json

import torch

from hone_kernel.images import OPENAI_LIMITS
from hone_kernel.trainer_contract import TrainSpec
from hone_kernel.vision import image_urls, load_image
from trainer import quantization
from trainer.data import vision_of

IMAGE_ANSWERS = 4  # image prompts answered (the gate checks HONE_PARITY_SAMPLES of them)


@torch.no_grad()
def image_answers(model, tokenizer, parity: dict, stop_ids: list[int], count: int = IMAGE_ANSWERS) -> list[dict]:
    vision = vision_of(tokenizer)
    assert vision is not None  # called for vision models only
    prompts = [
        s
        for s in parity["samples"]
        if s["tokenize"].get("add_generation_prompt") and image_urls(s["tokenize"].get("messages") or [])
    ][:count]
    training, answers = model.training, []
    model.eval()
    dev = next(p for p in model.parameters() if p.requires_grad).device
    try:
        for sample in prompts:
            images = [load_image(url, OPENAI_LIMITS) for url in image_urls(sample["tokenize"]["messages"])]
            pixels = vision.pixels(images).to(dev, next(model.parameters()).dtype)
            out = model.generate(
                input_ids=torch.tensor([sample["token_ids"]], device=dev),
                pixel_values=pixels,
                do_sample=False,
                max_new_tokens=quantization.PARITY_MAX_TOKENS,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(sample["token_ids"]) :].tolist()
            end = next((i for i, token in enumerate(out) if token in stop_ids), len(out))
            text = tokenizer.decode(out[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            answers.append({"tokenize": sample["tokenize"], "text": text})
    finally:
        model.train(training)
    return answers


def serving_files(spec: TrainSpec, model, tokenizer, files: dict[str, str]) -> dict[str, str]:
    """The serving files to publish beside weights: quantization.serving_files', and for a vision model the greedy
    answers to its image prompts (`greedy`, reason "images")."""
    files = quantization.serving_files(spec, model, tokenizer, files)
    if vision_of(tokenizer) is None:
        return files
    parity = json.loads(files["parity_samples.json"])
    stop_ids = list(json.loads(files["hone_serving.json"])["stop_token_ids"])
    answers = image_answers(model, tokenizer, parity, stop_ids)
    if answers and "greedy" not in parity:  # a QLoRA run's answers cover its image prompts already
        parity["greedy"] = {"tuning_mode": spec.hyperparameters.tuning_mode, "reason": "images", "answers": answers}
    return {**files, "parity_samples.json": json.dumps(parity)}
