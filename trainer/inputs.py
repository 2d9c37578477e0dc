"""What a run trains on: one file's examples (supervised), preference pairs (dpo) or prompts (reinforcement),
tokenized, with what truncation cost reported as an event, and a file with nothing to train on failed."""

from __future__ import annotations

from hone_kernel.trainer_contract import FileRef, TrainSpec
from trainer import rft
from trainer.blobs import Blobs
from trainer.data import SUPERVISED_FORMATS, DataError, held_out, lines_of, tokenize_lines, tokenize_preferences
from trainer.failures import FatalError


def items_of(spec: TrainSpec, tokenizer, blobs: Blobs, reporter, ref: FileRef, what: str) -> list:
    """Examples (supervised), preference pairs (dpo) or prompts (reinforcement) of one file."""
    dpo_method = spec.method == "dpo"
    if spec.method == "reinforcement":
        return rft.load_prompts(spec, tokenizer, blobs, reporter, ref, what)
    if (ref.format == "openai_preference") != dpo_method or (not dpo_method and ref.format not in SUPERVISED_FORMATS):
        raise FatalError(
            "unsupported_method",
            f"The {what} is in the {ref.format} format, which the {spec.method} method does not train on.",
        )
    lines, limit = held_out(lines_of(blobs, ref), ref.exclude_examples), spec.max_length
    items: list  # examples, or preference pairs (dpo)
    try:
        if dpo_method:
            items, truncated, dropped = tokenize_preferences(tokenizer, lines, limit)
        else:
            data = tokenize_lines(tokenizer, lines, ref.format, limit)
            items, truncated, dropped = data.examples, data.truncated, data.dropped
    except DataError as exc:
        raise FatalError(f"invalid_{what.replace(' ', '_')}", f"The {what} could not be tokenized: {exc}") from exc
    if truncated or dropped:
        msg = f"{truncated} {what} example(s) were longer than {limit} tokens and were truncated"
        if dropped:
            msg += f"; {dropped} had no trained tokens left and were skipped"
        reporter.event(
            msg + ".", level="warn", key=f"truncated:{what}", data={"truncated": truncated, "dropped": dropped}
        )
    if not items:
        raise FatalError(f"invalid_{what.replace(' ', '_')}", f"The {what} has no example with trained tokens.")
    return items
