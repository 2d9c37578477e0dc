"""`hone-tiny-vision`: a tiny LLaVA-style image-text model (a CLIP vision tower, a two-layer projector, hone-tiny's
Llama language model and tokenizer plus an `<image>` token), built locally and deterministically like hone-tiny.

LLaVA because vLLM serves it with LoRA on its language model, and because its image tokens are a fixed run per
image in an ordinary 1-D sequence, so packing, truncation and the KV cache work as for text. Each image is resized
and centre-cropped to IMAGE_SIZE pixels and becomes (IMAGE_SIZE / PATCH_SIZE)^2 = 16 tokens.

The weights are random (nothing is downloaded): the tower's features are a fixed random function of the pixels, so
a task is learnt by the adapter on the language model, reading those features (tests/test_vision.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hone_kernel import tiny_model

TINY_VISION_MODEL = "hone-tiny-vision"
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
BUILD_VERSION = "vision-3"
VISION_ARCHITECTURE: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    projection_dim=64,
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# hone-tiny's ChatML, with each image part (OpenAI's image_url, or transformers' and vLLM's {"type": "image"})
# rendered as one <image> token, which the processor expands to the image's IMAGE_TOKENS.
CHAT_TEMPLATE = tiny_model.CHAT_TEMPLATE.replace(
    "{%- for part in message['content'] -%}{{ part['text'] }}{%- endfor -%}",
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- else -%}" + IMAGE_TOKEN + "{%- endif -%}"
    "{%- endfor -%}",
)
assert CHAT_TEMPLATE != tiny_model.CHAT_TEMPLATE  # the replaced loop is hone-tiny's


def build_processor():
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = tiny_model.build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = CHAT_TEMPLATE
    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, which the "default" strategy drops
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def build(target: Path, seed: int = tiny_model.SEED) -> Path:
    """Writes hone-tiny-vision into `target` (atomically, as hone-tiny)."""
    if tiny_model._current(Path(target), BUILD_VERSION):
        return Path(target)

    def make(work: Path) -> None:
        import torch
        from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

        processor = build_processor()
        tokenizer = processor.tokenizer
        text = tiny_model.text_config(tokenizer)
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(**VISION_ARCHITECTURE),
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            image_seq_length=IMAGE_TOKENS,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            tie_word_embeddings=True,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlavaForConditionalGeneration(config)
            tiny_model.spread_embeddings(model)
        model.generation_config = tiny_model.generation_config(text)
        model.save_pretrained(work, safe_serialization=True)
        processor.save_pretrained(work)

    return tiny_model.publish(target, BUILD_VERSION, make)
