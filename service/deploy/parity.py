"""The parity gate: before an endpoint is ready, training rows rendered through the serving path must
tokenize exactly as training tokenized them, and a smoke generation must stop on the pinned stop token.

The trainer publishes the rows and their token ids beside the weights (parity_samples.json); the gate
replays them through the engine's `/tokenize` and a greedy chat or completion request.

A QLoRA adapter is trained over the base quantized to 4 bits and served over the full-precision base, so the
served model is not the trained one: it differs by the base's quantization error. Its parity rows carry the
trained model's greedy answers (`greedy`, trainer/quantization.py), and the gate asks the engine the same prompts
greedily: the answers must agree, on average, to at least QLORA_MIN_AGREEMENT (see `agreement`). What the two
paths measure on the tickets task, and the base without the adapter for contrast, is benchmarks/qlora.py's (README,
Benchmarks). A LoRA or full job's served model computes what training computed, and its rows carry no such answers,
unless it reads images: then they carry the trained model's answers to its image prompts (reason "images",
trainer/vision_parity.py), which only match when the engine's image processor makes the pixels training made.

An adapter imported from elsewhere (POST /v1/models/import, marked by hone_import.json) has no such rows: Hone
trained nothing it could replay. Its tensors were checked against the base model's layers when it was imported,
and the engine loading it is its gate."""

from __future__ import annotations

import json
import os
from pathlib import Path

from inference.client import EngineClient
from service.model_import import IMPORT_FILE

SMOKE_MAX_TOKENS = 64
# The mean agreement of a QLoRA model's served greedy answers with its trained ones, at least: one of the four
# answers checked (HONE_PARITY_SAMPLES) may differ entirely, which a near tie flipped by the quantization error
# can do to a long answer; two may not.
QLORA_MIN_AGREEMENT = 0.75


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
    if not path.exists() and (weights_dir / IMPORT_FILE).exists():
        return  # an adapter imported from elsewhere: Hone trained nothing whose rows it could replay
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
        pixels = sample.get("pixel_digest")
        answer = client.tokenize_full(model, **sample["tokenize"], return_pixel_digest=pixels is not None)
        served, trained = answer["tokens"], sample["token_ids"]
        # Hone's engine says what pixels its processor made; vLLM does not, and its greedy answers speak for them
        if pixels is not None and answer.get("pixel_digest") not in (None, pixels):
            raise ParityFailure(
                f"Parity check failed: sample {number}'s images are not the pixels training made (the engine's image "
                "processor resizes, crops or normalises otherwise than the trainer's)."
            )
        if served != trained:
            at = _first_difference(served, trained)
            raise ParityFailure(
                f"Parity check failed: sample {number} tokenizes differently when served than in training "
                f"(first difference at token {at}: training {trained[at : at + 5]}, serving {served[at : at + 5]}). "
                "The served chat template or tokenizer does not match the one the model was trained with."
            )
    if recorded.get("greedy"):
        _check_greedy(client, model, recorded["greedy"], max_samples)
    smoke = recorded.get("smoke")
    if not smoke:
        return
    if "messages" in smoke:
        reply = client.chat(model, smoke["messages"], temperature=0, max_tokens=SMOKE_MAX_TOKENS, **_tools(smoke))
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


def agreement(trained: str, served: str) -> float:
    """How far two greedy answers agree: the share of the longer one that both start with (1.0: the same
    answer, 0.0: different from the first character). Greedy decoding follows a flipped near tie with a
    different continuation, so what counts is how far the answers go together, not what follows."""
    if trained == served:
        return 1.0
    return len(os.path.commonprefix([trained, served])) / max(len(trained), len(served))


def _tools(request: dict) -> dict:
    """A sample's tools, rendered into the prompt as in training, with tool_choice "none": the answer comes back as
    the text the model wrote (a call included), which is what training's greedy answer and stop token are."""
    return {"tools": request["tools"], "tool_choice": "none"} if request.get("tools") else {}


def _greedy_reply(client: EngineClient, model: str, request: dict) -> str:
    if "messages" in request:
        reply = client.chat(model, request["messages"], temperature=0, max_tokens=SMOKE_MAX_TOKENS, **_tools(request))
        return reply["choices"][0]["message"].get("content") or ""
    reply = client.complete(model, request["prompt"], temperature=0, max_tokens=SMOKE_MAX_TOKENS)
    return reply["choices"][0]["text"]


def _check_greedy(client: EngineClient, model: str, greedy: dict, max_samples: int) -> None:
    answers = greedy["answers"][:max_samples]
    if not answers:
        return
    scores = [agreement(a["text"], _greedy_reply(client, model, a["tokenize"])) for a in answers]
    mean = sum(scores) / len(scores)
    if greedy.get("reason") == "images" and mean < QLORA_MIN_AGREEMENT:
        worst = min(range(len(scores)), key=scores.__getitem__)
        raise ParityFailure(
            f"Parity check failed: the served model answers this model's training images differently than the "
            f"trained model did (agreement {mean:.2f} on average, below {QLORA_MIN_AGREEMENT}; image prompt "
            f"{worst + 1}: trained {answers[worst]['text'][:80]!r}). The engine's image processor (resize, crop, "
            "normalisation) does not make the pixels training made, or it serves another base model."
        )
    if mean < QLORA_MIN_AGREEMENT:
        worst = min(range(len(scores)), key=scores.__getitem__)
        raise ParityFailure(
            f"Parity check failed: this {greedy.get('tuning_mode', 'qlora')} model was trained over the base "
            f"quantized to 4 bits and is served over the full-precision base, and its served greedy answers agree "
            f"with the trained ones at {mean:.2f} on average, below the {QLORA_MIN_AGREEMENT} allowed (answer "
            f"{worst + 1} agrees at {scores[worst]:.2f}: trained {answers[worst]['text'][:80]!r}). The engine may "
            "serve another base model than the one trained on; else retrain with tuning_mode 'lora'."
        )
