"""Dataset lines -> token ids with a loss mask, for every supervised format Hone accepts.

Chat-like formats go through the base model's chat template; the loss covers assistant turns
(minus `weight: 0` ones). Prompt/completion trains on the completion, raw text on everything."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hone_kernel.dataset_images import inline_lines
from hone_kernel.dataset_messages import clean_message, to_messages
from hone_kernel.dataset_prompts import prompt_messages
from hone_kernel.images import OPENAI_LIMITS, ImageError
from hone_kernel.trainer_contract import FileRef
from hone_kernel.vision import image_urls, load_image

if TYPE_CHECKING:
    from hone_kernel.vision import VisionInputs
    from trainer.blobs import Blobs

CHAT_FORMATS = {"openai_chat", "vertex_gemini", "vertex_legacy", "pairs"}
SUPERVISED_FORMATS = CHAT_FORMATS | {"prompt_completion", "raw_text"}
# Lines whose answers training does not read (a prompts file of distillation is trained as its teacher's answers)
PROMPT_FORMATS = {"openai_preference", "openai_reinforcement", "vertex_prompts"}


@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[bool]  # True where the token is a training target
    # A vision model's example: its images' data URLs, in the order of their token runs (each image's tokens are
    # in input_ids, expanded: hone_kernel.vision), decoded again when a micro-batch is laid out
    images: list[str] = field(default_factory=list)
    image_spans: list[tuple[int, int]] = field(default_factory=list)  # each image's run: (first token, tokens)

    @property
    def target_tokens(self) -> int:
        return sum(self.loss_mask[1:])  # the first token is never predicted


@dataclass
class Tokenized:
    examples: list[Example]
    truncated: int  # examples cut to max_length
    dropped: int  # examples with nothing left to learn after truncation


class DataError(ValueError):
    """A line the trainer cannot turn into an example (the control plane validated it, so this is rare)."""


def _chat_spans(tokenizer, messages: list[dict], trained: list[bool], tools) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of trained assistant turns.

    Each turn's span is what rendering through it adds after the generation prompt, so whatever the
    template puts around a turn (its end token included) is learned exactly as the template writes it."""
    kwargs = {"tokenize": False}
    if tools:
        kwargs["tools"] = tools
    full = tokenizer.apply_chat_template(messages, **kwargs)
    spans = []
    for i, is_trained in enumerate(trained):
        if not is_trained:
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, **kwargs) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], **kwargs)
        if not full.startswith(through) or not through.startswith(before):
            raise DataError("the chat template does not render conversations prefix by prefix")
        spans.append((len(before), len(through)))
    return full, spans


def _encode(tokenizer, text: str, spans: list[tuple[int, int]], *, add_special_tokens: bool) -> Example:
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    mask: list[bool] = []
    for start, end in enc["offset_mapping"]:
        if start == end == 0 and mask:  # special token added by the tokenizer itself (e.g. BOS)
            mask.append(False)
            continue
        mask.append(any(s <= start < e for s, e in spans))
    return Example(list(enc["input_ids"]), mask)


def vision_of(tokenizer) -> VisionInputs | None:
    """A vision model's inputs, which trainer.modeling.load_base hangs on its tokenizer (every data path is handed
    the tokenizer, as transformers' processors hold theirs)."""
    return getattr(tokenizer, "hone_vision", None)


def with_images(tokenizer, example: Example, messages: list[dict]) -> Example:
    """The example with its images' token runs expanded (a vision model), or refused (a text model)."""
    urls = image_urls(messages)
    if not urls:
        return example
    vision = vision_of(tokenizer)
    if vision is None:
        raise DataError("the line holds images, and this base model reads text only")
    try:
        images = [load_image(url, OPENAI_LIMITS) for url in urls]
        counts = vision.tokens_per_image(images)
        ids, mask = vision.expand(example.input_ids, counts, example.loss_mask)
    except ImageError as exc:
        raise DataError(str(exc)) from exc
    starts, shift = [], 0
    for i in (i for i, token in enumerate(example.input_ids) if token == vision.image_token_id):
        starts.append(i + shift)
        shift += counts[len(starts) - 1] - 1
    return Example(ids, mask, urls, list(zip(starts, counts)))


def encode_row(tokenizer, row: dict, fmt: str) -> Example:
    if fmt in CHAT_FORMATS:
        messages, trained, tools = to_messages(row, fmt)
        text, spans = _chat_spans(tokenizer, messages, trained, tools)
        return with_images(tokenizer, _encode(tokenizer, text, spans, add_special_tokens=False), messages)
    eos = tokenizer.eos_token or ""
    if fmt == "prompt_completion":
        prompt = row["prompt"]
        text = prompt + row["completion"] + eos
        return _encode(tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True)
    if fmt == "raw_text":
        text = row["text"] + eos
        return _encode(tokenizer, text, [(0, len(text))], add_special_tokens=True)
    raise DataError(f"format {fmt!r} is not trained by the supervised trainer")


PREFERENCE_KEYS = (("preferred_output", "preferred_completion"), ("non_preferred_output", "non_preferred_completion"))


def encode_preference(tokenizer, row: dict) -> tuple[Example, Example]:
    """(preferred, non-preferred): the shared prompt plus each answer, trained on the answer only."""
    prompt = [clean_message(m) for m in row["input"]["messages"]]
    tools = row["input"].get("tools")
    encoded = []
    for spellings in PREFERENCE_KEYS:
        answer = [clean_message(m) for m in next(row[k] for k in spellings if k in row)]
        trained = [False] * len(prompt) + [m["role"] == "assistant" for m in answer]
        text, spans = _chat_spans(tokenizer, prompt + answer, trained, tools)
        encoded.append(_encode(tokenizer, text, spans, add_special_tokens=False))
    return encoded[0], encoded[1]


def _truncate(example: Example, max_length: int) -> tuple[Example, bool]:
    if len(example.input_ids) <= max_length:  # truncated from the end, like OpenAI
        return example, False
    cut, kept = max_length, 0
    for start, count in example.image_spans:  # an image's run is kept whole or not at all: its features fill it
        if start + count > max_length:
            cut = start
            break
        kept += 1
    ids, mask = example.input_ids[:cut], example.loss_mask[:cut]
    return Example(ids, mask, example.images[:kept], example.image_spans[:kept]), True


def tokenize_preferences(
    tokenizer, lines: Iterable[bytes], max_length: int
) -> tuple[list[tuple[Example, Example]], int, int]:
    """Preference pairs for DPO, with the counts of truncated and dropped pairs."""
    pairs, truncated, dropped = [], 0, 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            chosen, rejected = encode_preference(tokenizer, json.loads(raw))
        except (KeyError, TypeError, ValueError, StopIteration) as exc:
            raise DataError(f"line {number}: {exc!r}") from exc
        (chosen, cut_a), (rejected, cut_b) = _truncate(chosen, max_length), _truncate(rejected, max_length)
        truncated += cut_a or cut_b
        if chosen.target_tokens == 0 or rejected.target_tokens == 0:
            dropped += 1
            continue
        pairs.append((chosen, rejected))
    return pairs, truncated, dropped


def tokenize_lines(tokenizer, lines: Iterable[bytes], fmt: str, max_length: int) -> Tokenized:
    examples, truncated, dropped = [], 0, 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            example = encode_row(tokenizer, json.loads(raw), fmt)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"line {number}: {exc}") from exc
        example, cut = _truncate(example, max_length)
        truncated += cut
        if example.target_tokens == 0:
            dropped += 1
            continue
        examples.append(example)
    return Tokenized(examples, truncated, dropped)


def chat_ids(tokenizer, messages: list[dict], tools, *, generation_prompt: bool) -> list[int]:
    """A conversation's token ids as the engine's /tokenize gives them (a vision model's image runs expanded)."""
    kwargs = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return with_images(tokenizer, Example(ids, [False] * len(ids)), messages).input_ids


def _pixels(tokenizer, messages: list[dict]) -> dict:
    """A parity row's `pixel_digest`: its images as the trainer's processor made them (none without images)."""
    urls, vision = image_urls(messages), vision_of(tokenizer)
    if not urls or vision is None:
        return {}
    return {"pixel_digest": vision.pixel_digest(vision.pixels([load_image(url, OPENAI_LIMITS) for url in urls]))}


def parity_samples(tokenizer, lines: Iterable[bytes], fmt: str, count: int) -> dict:
    """Training rows as the serving path must see them: `/tokenize` requests with the token ids training used,
    and one prompt for a smoke generation. The control plane replays them against an endpoint before it is ready."""
    samples: list[dict] = []
    smoke: dict | None = None
    rows = 0
    for raw in lines:
        if rows >= count:
            break
        if not raw.strip():
            continue
        row, rows = json.loads(raw), rows + 1
        if fmt in CHAT_FORMATS or fmt in PROMPT_FORMATS:
            if fmt == "openai_preference":
                messages, tools = [clean_message(m) for m in row["input"]["messages"]], row["input"].get("tools")
                trained = [False] * len(messages)
            elif fmt == "openai_reinforcement":  # the prompt as generation in training renders it (trainer/rft.py)
                messages, tools = prompt_messages(row), row.get("tools")
                trained = [False] * len(messages)
            else:
                messages, trained, tools = to_messages(row, fmt)
            extra = {"tools": tools} if tools else {}
            if fmt not in PROMPT_FORMATS:
                samples.append(
                    {
                        "tokenize": {"messages": messages, "add_generation_prompt": False, **extra},
                        "token_ids": chat_ids(tokenizer, messages, tools, generation_prompt=False),
                        **_pixels(tokenizer, messages),
                    }
                )
            last = max((i for i, t in enumerate(trained) if t), default=len(messages))
            prompt = messages[:last]
            samples.append(
                {
                    "tokenize": {"messages": prompt, "add_generation_prompt": True, **extra},
                    "token_ids": chat_ids(tokenizer, prompt, tools, generation_prompt=True),
                    **_pixels(tokenizer, prompt),
                }
            )
            smoke = smoke or {"messages": prompt, **extra}
        elif fmt in ("prompt_completion", "raw_text"):
            text = row["prompt"] if fmt == "prompt_completion" else row["text"]
            samples.append(
                {
                    "tokenize": {"prompt": text, "add_special_tokens": True},
                    "token_ids": list(tokenizer(text, add_special_tokens=True)["input_ids"]),
                }
            )
            if fmt == "prompt_completion":  # raw text teaches no stopping point, so it gets no smoke test
                smoke = smoke or {"prompt": text}
    return {"format": fmt, "samples": samples, "smoke": smoke}


def held_out(lines: Iterable[bytes], exclude: list[int]) -> Iterator[bytes]:
    """The lines with the excluded examples (0-based among non-blank lines) blanked: they are not trained on, and
    the other lines keep their numbers in error messages."""
    skip, ordinal = set(exclude), -1
    for line in lines:
        if line.strip():
            ordinal += 1
            if ordinal in skip:
                yield b""
                continue
        yield line


def lines_of(blobs: Blobs, ref: FileRef) -> Iterator[bytes]:
    """A file's lines, with the images they name by reference put back as data URLs of the copies the server
    checked at upload (`ref.images`)."""
    return inline_lines(blobs.iter_lines(ref.key), ref.images, blobs.read_bytes)
