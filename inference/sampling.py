"""Turning a step's logits into a token and tokens into text: the engine's sampler and its incremental
detokenizer (vLLM's methods)."""

from __future__ import annotations

import torch

from inference.generation import SamplingParams, TokenLogprob

# vLLM seeds incremental detokenisation with the prompt's last tokens so that the first output token
# decodes with its leading space (SentencePiece drops it otherwise).
_DETOKENIZE_CONTEXT = 5


class IncrementalDetokenizer:
    """Text deltas that never end inside a multi-byte character (vLLM's prefix/read-offset method)."""

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-_DETOKENIZE_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from one row of logits, as vLLM samples: greedy below GREEDY_EPSILON, else temperature, top-k,
    top-p."""
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = torch.cumsum(probs, dim=-1) - probs > params.top_p  # keep the smallest set reaching top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, ordered)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class Penalties:
    """vLLM's presence, frequency and repetition penalties over one sequence: presence and frequency count the
    tokens generated so far (logits -= frequency * count + presence * [count > 0]); repetition divides a positive
    logit (multiplies a negative one) of any token seen in the prompt or the output."""

    def __init__(self, params: SamplingParams, prompt: list[int]):
        self.params = params
        self.prompt = prompt
        self.counts: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.counts is None:
            self.counts = torch.zeros(logits.shape[-1], device=logits.device)
            self.seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            self.seen[torch.tensor(self.prompt, device=logits.device, dtype=torch.long)] = True
        logits = logits.float()
        if p.repetition_penalty != 1.0:
            assert self.seen is not None  # made with counts
            seen = self.seen | (self.counts > 0)
            scaled = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(seen, scaled, logits)
        return logits - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0).float()

    def add(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1


def token_logprob(raw_logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The chosen token's log-probability and the `top` likeliest, from the model's raw logits (vLLM's default
    logprobs mode: before penalties, temperature and the grammar)."""
    logprobs = torch.log_softmax(raw_logits.float(), dim=-1)
    alternatives: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = torch.topk(logprobs, min(top, logprobs.numel()))
        alternatives = tuple(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token, float(logprobs[token]), alternatives)
