"""A chat request's images on the built-in engine: found in the messages, checked and decoded as training data is,
and rendered by the model's processor into the prompt's token runs and pixels (hone_kernel.vision, the trainer's
code). Without torch: the engine's `vision` does the rendering."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hone_kernel.images import OPENAI_LIMITS, ImageError, request_image_problem
from hone_kernel.vision import load_image
from inference.errors import bad_request

if TYPE_CHECKING:
    from inference.engine import Engine


def request_images(engine: Engine, messages: list[dict]) -> list:
    """The image parts of a chat request, decoded; 400 naming the part for a text-only model, more images than
    --limit-mm-per-prompt allows, or an image that is not a data URL of a JPEG, PNG, WEBP or GIF within its size."""
    found = [
        (f"messages[{i}].content[{j}].image_url", part.get("image_url"))
        for i, message in enumerate(messages)
        if isinstance(message.get("content"), list)
        for j, part in enumerate(message["content"])
        if isinstance(part, dict) and part.get("type") == "image_url"
    ]
    if not found:
        return []
    if engine.vision is None:
        raise bad_request("This model reads text only; it cannot take image_url content parts.", found[0][0])
    if len(found) > engine.images_per_prompt:
        raise bad_request(f"At most {engine.images_per_prompt} image(s) may be provided in one prompt.", found[-1][0])
    images = []
    for where, spec in found:
        url = spec.get("url") if isinstance(spec, dict) else spec
        try:
            problem = request_image_problem(url) if isinstance(url, str) else None
            if problem:
                raise ImageError("unsupported_image_source", problem)
            images.append(load_image(url, OPENAI_LIMITS))
        except ImageError as e:
            raise bad_request(f"{where}.url: {e}", f"{where}.url") from e
    return images


def chat_prompt(engine: Engine, ids: list[int], messages: list[dict]) -> tuple[list[int], Any]:
    """A rendered chat's token ids with each image's token expanded to its run, and the images' pixels (None
    without images): what the engine prefills, and what /tokenize counts (as vLLM's does)."""
    images = request_images(engine, messages)
    if engine.vision is None:
        return ids, None
    try:
        rendered = engine.vision.render(ids, images)
    except ImageError as e:
        raise bad_request(str(e), "messages") from e
    return rendered.input_ids, rendered.pixel_values


def pixel_digest(pixels: Any) -> str | None:
    """The digest of a prompt's pixels (None without images), as the trainer records it for the parity gate."""
    if pixels is None:
        return None
    from hone_kernel.vision import VisionInputs

    return VisionInputs.pixel_digest(pixels)
