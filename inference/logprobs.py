"""Log-probabilities and penalties as requested and as answered, in vLLM's (and OpenAI's) shapes: chat's
`logprobs` + `top_logprobs` -> `{"content": [{token, logprob, bytes, top_logprobs}]}`, completions' `logprobs: n`
-> `{text_offset, token_logprobs, tokens, top_logprobs}`. The engine computes them (inference/sampling.py)."""

from __future__ import annotations

from typing import Any

from inference.errors import bad_request
from inference.generation import TokenLogprob

MAX_LOGPROBS = 20  # vLLM's --max-logprobs default


def requested(body: Any, chat: bool) -> int | None:
    """How many alternatives each token's logprobs carry (0: the chosen token's alone), or None: no logprobs."""
    if chat:
        top = body.top_logprobs
        if top is not None and top < 0:
            raise bad_request("`top_logprobs` must be a positive value.", "top_logprobs")
        if top and not body.logprobs:
            raise bad_request("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
        count = (top or 0) if body.logprobs else None
        param = "top_logprobs"
    else:
        count, param = body.logprobs, "logprobs"
        if count is not None and count < 0:
            raise bad_request("`logprobs` must be a positive value.", "logprobs")
    if count is not None and count > MAX_LOGPROBS:
        raise bad_request(
            f"Requested sample logprobs of {count}, which is greater than max allowed: {MAX_LOGPROBS}", param
        )
    return count


def penalties(body: Any, defaults: dict) -> tuple[float, float, float]:
    """(presence, frequency, repetition) penalties, checked as vLLM's SamplingParams checks them; omitted ones from
    the model's generation config."""
    presence = body.presence_penalty if body.presence_penalty is not None else 0.0
    frequency = body.frequency_penalty if body.frequency_penalty is not None else 0.0
    repetition = body.repetition_penalty
    if repetition is None:
        repetition = defaults.get("repetition_penalty", 1.0)
    for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
        if not -2.0 <= value <= 2.0:
            raise bad_request(f"{name} must be in [-2, 2], got {value}.", name)
    if repetition <= 0:
        raise bad_request(f"repetition_penalty must be greater than zero, got {repetition}.", "repetition_penalty")
    return float(presence), float(frequency), float(repetition)


def _token(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _entry(tokenizer, token_id: int, logprob: float) -> dict:
    token = _token(tokenizer, token_id)
    return {"token": token, "logprob": max(logprob, -9999.0), "bytes": list(token.encode("utf-8"))}


def chat_content(tokenizer, entries: list[TokenLogprob]) -> dict:
    """A choice's (or a chunk's) chat `logprobs`. `refusal` (null: Hone's models do not refuse) is OpenAI's, which
    its schema requires and vLLM leaves out."""
    return {
        "content": [
            {
                **_entry(tokenizer, e.token_id, e.logprob),
                "top_logprobs": [_entry(tokenizer, t, lp) for t, lp in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(tokenizer, entries: list[TokenLogprob], offset: int = 0) -> dict:
    """A choice's (or a chunk's) completions `logprobs`; `offset`: the text already sent before these tokens."""
    tokens = [_token(tokenizer, e.token_id) for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "text_offset": offsets,
        "token_logprobs": [max(e.logprob, -9999.0) for e in entries],
        "tokens": tokens,
        "top_logprobs": [{_token(tokenizer, t): max(lp, -9999.0) for t, lp in e.top} or None for e in entries],
    }
