"""Which examples make each optimizer step, and how they are laid out as tensors.

The order is a pure function of (seed, epoch), so a resumed run only needs the global step to find
its place. Packing puts several examples in one row with position ids restarting at each example;
transformers turns that into a block-diagonal causal mask, so no token attends across examples."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.data import Example

IGNORE = -100


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def step_indices(n_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices for global step `step` (0-based)."""
    per_epoch = steps_per_epoch(n_examples, batch_size)
    epoch, within = divmod(step, per_epoch)
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[within * batch_size : (within + 1) * batch_size]


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    labels: torch.Tensor  # IGNORE where no loss; labels[t] is the target for position t
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # only for unpacked (padded) rows
    tokens: int  # real tokens (not padding)
    # A vision model's images, in the order of their token runs row by row (each run's features replace it)
    pixel_values: torch.Tensor | None = None

    @property
    def targets(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def _labels(example: Example) -> list[int]:
    labels = [tok if keep else IGNORE for tok, keep in zip(example.input_ids, example.loss_mask)]
    labels[0] = IGNORE  # nothing before it in its own sequence, so it is never a target
    return labels


def _rows_packed(examples: list[Example], capacity: int) -> list[list[Example]]:
    """First-fit decreasing into rows of at most `capacity` tokens."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda e: -len(e.input_ids)):
        size = len(ex.input_ids)
        for i, free in enumerate(room):
            if size <= free:
                rows[i].append(ex)
                room[i] -= size
                break
        else:
            rows.append([ex])
            room.append(max(capacity, size) - size)
    return rows


# A vision model's pixels of a list of images (data URLs): hone_kernel.vision, as the engine makes them
Pixels = Callable[[list[str]], torch.Tensor]


def _tensorize(rows: list[list[Example]], pad_id: int, packed: bool, pixels: Pixels | None = None) -> MicroBatch:
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids, labels, positions, mask = [], [], [], []
    tokens = 0
    for row in rows:
        r_ids: list[int] = []
        r_labels: list[int] = []
        r_pos: list[int] = []
        for ex in row:
            r_ids += ex.input_ids
            r_labels += _labels(ex)
            r_pos += range(len(ex.input_ids))
        used = len(r_ids)
        tokens += used
        pad = width - used
        ids.append(r_ids + [pad_id] * pad)
        labels.append(r_labels + [IGNORE] * pad)
        positions.append(r_pos + list(range(pad)))  # padding is its own "sequence": it attends to nothing real
        mask.append([1] * used + [0] * pad)
    as_long = lambda rows_: torch.tensor(rows_, dtype=torch.long)  # noqa: E731
    images = [url for row in rows for ex in row for url in ex.images]
    if images and pixels is None:
        raise ValueError("examples with images need the model's image processor")
    return MicroBatch(
        as_long(ids),
        as_long(labels),
        as_long(positions),
        None if packed else as_long(mask),
        tokens,
        pixels(images) if images and pixels is not None else None,
    )


def micro_batches(
    examples: list[Example], *, packing: bool, token_budget: int, pad_id: int, pixels: Pixels | None = None
) -> list[MicroBatch]:
    """Lays out one optimizer step as micro-batches of at most ~token_budget (padded) tokens each.

    Packed rows hold at most as many tokens as the step's longest example: padding mostly disappears,
    while no row costs more attention than that example alone would (SDPA on a block-diagonal mask
    still computes the whole square)."""
    longest = max(len(ex.input_ids) for ex in examples)
    rows = _rows_packed(examples, longest) if packing else [[ex] for ex in examples]
    out: list[MicroBatch] = []
    current: list[list[Example]] = []
    for row in rows:
        candidate = current + [row]
        width = max(sum(len(e.input_ids) for e in r) for r in candidate)
        if current and width * len(candidate) > token_budget:
            out.append(_tensorize(current, pad_id, packing, pixels))
            candidate = [row]
        current = candidate
    if current:
        out.append(_tensorize(current, pad_id, packing, pixels))
    return out
