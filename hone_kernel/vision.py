"""A vision model's inputs, the one code path training and serving share: image parts of OpenAI chat messages
(and Gemini parts, converted to them) decoded (hone_kernel.images), turned into pixels by the model's own processor,
and each image's `<image>` token in the rendered prompt expanded to the run of tokens its features replace.

The trainer (trainer/data.py) and the built-in engine (inference/handlers.py) both call `VisionInputs`, so a tuned
model is served the same pixels and token ids it was trained on; the parity gate checks it against the engine
(service/deploy/parity.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone_kernel.images import ImageError, Limits, check_bytes, decode, parse_data_url


def is_vision_model(path: str | Path) -> bool:
    """Whether the model folder holds an image-text model (a config with a vision tower)."""
    config = Path(path) / "config.json"
    try:
        return "vision_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def image_urls(messages: list[dict]) -> list[Any]:
    """The URLs of the image parts of `messages`, in the order the chat template renders their tokens."""
    urls = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    spec = part.get("image_url")
                    urls.append(spec.get("url") if isinstance(spec, dict) else spec)
    return urls


def load_image(url: Any, limits: Limits) -> Any:
    """A data URL's image as an RGB PIL image, checked as training data is (format, size); ImageError otherwise."""
    if not isinstance(url, str):
        raise ImageError("invalid_image_url", "image_url.url must be a string")
    declared, data = parse_data_url(url)
    check_bytes(data, declared, limits)
    return decode(data)


@dataclass
class Rendered:
    input_ids: list[int]
    pixel_values: Any  # a tensor of the images in order (None without images)


class VisionInputs:
    """The model's processor, loaded from its folder."""

    def __init__(self, path: str | Path):
        from transformers import AutoConfig, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(str(path))
        config = AutoConfig.from_pretrained(str(path))
        self.image_token_id: int = config.image_token_index

    def pixels(self, images: list) -> Any:
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def tokens_per_image(self, images: list) -> list[int]:
        sizes = [(image.height, image.width) for image in images]
        return list(self.processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens)

    def expand(self, ids: list[int], counts: list[int], mask: list[bool] | None = None) -> tuple[list, list]:
        """`ids` with the k-th image token repeated counts[k] times (and `mask` with False for each copy)."""
        found = ids.count(self.image_token_id)
        if found != len(counts):
            raise ImageError(
                "image_token_mismatch",
                f"the prompt renders {found} image token(s) for {len(counts)} image(s); the chat template must render "
                "one per image part",
            )
        out_ids: list[int] = []
        out_mask: list[bool] = []
        runs = iter(counts)
        for i, token in enumerate(ids):
            repeat = next(runs) if token == self.image_token_id else 1
            out_ids += [token] * repeat
            out_mask += [False] * repeat if token == self.image_token_id else [bool(mask[i]) if mask else False]
        return out_ids, out_mask

    @staticmethod
    def pixel_digest(pixels: Any) -> str:
        """A digest of a prompt's pixels as the model receives them (float32, shape included): what the parity gate
        compares between the trainer's processor and the engine's."""
        import hashlib

        values = pixels.detach().float().cpu().contiguous()
        return hashlib.sha256(str(tuple(values.shape)).encode() + values.numpy().tobytes()).hexdigest()

    def render(self, ids: list[int], images: list) -> Rendered:
        """A prompt's token ids expanded for its images, and their pixels."""
        counts = self.tokens_per_image(images)
        expanded, _ = self.expand(ids, counts)
        return Rendered(expanded, self.pixels(images) if images else None)
