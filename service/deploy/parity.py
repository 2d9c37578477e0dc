"""The parity gate: before an endpoint is ready, training rows rendered through the serving path must
tokenize exactly as training tokenized them, and a smoke generation must stop on the pinned stop token.

The trainer publishes the rows and their token ids beside the weights (parity_samples.json); the gate
replays them through the engine's `/tokenize` and a greedy chat or completion request."""

from __future__ import annotations

import json
from pathlib import Path

from inference.client import EngineClient

SMOKE_MAX_TOKENS = 64


class ParityFailure(Exception):
    pass


def _first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def check(client: EngineClient, model: str, weights_dir: Path, max_samples: int) -> None:
    """Raises ParityFailure with a reason a user can act on."""
    path = weights_dir / "parity_samples.json"
    if not path.exists():
        raise ParityFailure(
            "The weights carry no parity_samples.json, so train/serve parity cannot be checked; "
            "retrain the model with this version of Hone."
        )
    recorded = json.loads(path.read_text())
    pinned = (
        json.loads((weights_dir / "hone_serving.json").read_text())
        if (weights_dir / "hone_serving.json").exists()
        else {}
    )
    for number, sample in enumerate(recorded["samples"][: 2 * max_samples], start=1):
        served = client.tokenize(model, **sample["tokenize"])
        trained = sample["token_ids"]
        if served != trained:
            at = _first_difference(served, trained)
            raise ParityFailure(
                f"Parity check failed: sample {number} tokenizes differently when served than in training "
                f"(first difference at token {at}: training {trained[at : at + 5]}, serving {served[at : at + 5]}). "
                "The served chat template or tokenizer does not match the one the model was trained with."
            )
    smoke = recorded.get("smoke")
    if not smoke:
        return
    if "messages" in smoke:
        extra = {"tools": smoke["tools"]} if smoke.get("tools") else {}
        reply = client.chat(model, smoke["messages"], temperature=0, max_tokens=SMOKE_MAX_TOKENS, **extra)
    else:
        reply = client.complete(model, smoke["prompt"], temperature=0, max_tokens=SMOKE_MAX_TOKENS)
    choice = reply["choices"][0]
    stops = set(pinned.get("stop_token_ids") or [])
    if choice.get("finish_reason") != "stop" or choice.get("stop_reason") not in ({None} | stops):
        raise ParityFailure(
            f"Parity check failed: a greedy smoke generation did not stop on the pinned stop token "
            f"{pinned.get('stop_tokens')} within {SMOKE_MAX_TOKENS} tokens (finish_reason="
            f"{choice.get('finish_reason')!r}). The model may need more training, or the served stop tokens differ "
            "from training."
        )
