"""Direct preference optimisation: the policy is the adapted model, the reference the same model with
the adapter switched off, so no second copy of the weights is held."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.batches import micro_batches
from trainer.data import Example
from trainer.modeling import sequence_logprobs

Pair = tuple[Example, Example]


def _logprobs(model, examples: list[Example], token_budget: int, pad_id: int) -> torch.Tensor:
    # Unpacked rows, one example each, in order: row i of the result is examples[i].
    mbs = micro_batches(examples, packing=False, token_budget=token_budget, pad_id=pad_id)
    return torch.cat([sequence_logprobs(model, mb) for mb in mbs])


def _margins(model, pairs: list[Pair], beta: float, token_budget: int, pad_id: int) -> torch.Tensor:
    examples = [p[0] for p in pairs] + [p[1] for p in pairs]
    policy = _logprobs(model, examples, token_budget, pad_id)
    with torch.no_grad(), model.disable_adapter():
        reference = _logprobs(model, examples, token_budget, pad_id)
    n = len(pairs)
    return beta * ((policy[:n] - reference[:n]) - (policy[n:] - reference[n:]))


def train_step(model, pairs: list[Pair], beta: float, token_budget: int, pad_id: int) -> dict:
    margins = _margins(model, pairs, beta, token_budget, pad_id)
    loss = -F.logsigmoid(margins).mean()
    loss.backward()
    return {"train_loss": float(loss.detach()), "train_mean_token_accuracy": float((margins > 0).float().mean()),
            "train_reward_margin": float(margins.detach().mean())}


@torch.no_grad()
def evaluate(model, pairs: list[Pair], beta: float, token_budget: int, pad_id: int) -> tuple[float, float]:
    """(DPO loss, share of pairs where the preferred answer gains more than the other)."""
    margins = torch.cat([_margins(model, pairs[i:i + 32], beta, token_budget, pad_id)
                         for i in range(0, len(pairs), 32)])
    return float(-F.logsigmoid(margins).mean()), float((margins > 0).float().mean())
