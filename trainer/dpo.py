"""Direct preference optimisation. The reference model is the model the policy starts from: the base for a new
adapter, the parent's weights for a job continuing a tuned model (DPO on an SFT model). Its log-probabilities
are computed once, before the first step, so no second copy of the weights is held and no reference forward
pass runs per step; they depend only on the starting weights, so a resumed run computes the same values. The step
itself (the loss over a rank's pairs, DDP across ranks) is trainer/distributed.py's PreferenceStep."""

from __future__ import annotations

import hashlib
from array import array

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


def _key(ex: Example) -> bytes:
    # By content, so the table needs no bookkeeping of where an example sits (training or validation file).
    return hashlib.blake2b(array("q", ex.input_ids).tobytes() + bytes(ex.loss_mask), digest_size=16).digest()


class Reference:
    """Each example's summed target log-probability under the starting weights."""

    def __init__(self, logps: dict[bytes, float]):
        self.logps = logps

    @classmethod
    @torch.no_grad()
    def of(cls, model, pairs: list[Pair], token_budget: int, pad_id: int) -> Reference:
        model.eval()
        unique = list({_key(ex): ex for pair in pairs for ex in pair}.items())
        logps: dict[bytes, float] = {}
        for start in range(0, len(unique), 64):
            chunk = unique[start : start + 64]
            values = _logprobs(model, [ex for _, ex in chunk], token_budget, pad_id).tolist()
            logps.update((key, value) for (key, _), value in zip(chunk, values))
        return cls(logps)

    def __call__(self, examples: list[Example], device: torch.device) -> torch.Tensor:
        return torch.tensor([self.logps[_key(ex)] for ex in examples], device=device)


def margins(
    model, pairs: list[Pair], beta: float, token_budget: int, pad_id: int, reference: Reference
) -> torch.Tensor:
    examples = [p[0] for p in pairs] + [p[1] for p in pairs]
    policy = _logprobs(model, examples, token_budget, pad_id)
    ref = reference(examples, policy.device)
    n = len(pairs)
    return beta * ((policy[:n] - ref[:n]) - (policy[n:] - ref[n:]))


@torch.no_grad()
def evaluate(
    model, pairs: list[Pair], beta: float, token_budget: int, pad_id: int, reference: Reference
) -> tuple[float, float]:
    """(DPO loss, share of pairs where the preferred answer gains more than the other)."""
    every = torch.cat(
        [margins(model, pairs[i : i + 32], beta, token_budget, pad_id, reference) for i in range(0, len(pairs), 32)]
    )
    return float(-F.logsigmoid(every).mean()), float((every > 0).float().mean())
