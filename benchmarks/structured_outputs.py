"""What constrained decoding (`response_format`, hone_kernel/structured.py) costs the built-in engine.

    .venv/bin/python benchmarks/structured_outputs.py              # ~1 min on 2 cores
    .venv/bin/python benchmarks/structured_outputs.py --requests 40

Starts the built-in engine on hone-tiny (`python -m inference`, the launcher's command line) and sends the same chat
request, interleaved pair by pair (the order alternates), as free text (the baseline) and with a `json_schema`
response_format whose one field is a string of at least 400 characters, so that both answers run to max_tokens (free
text with `ignore_eos`). Each side's decode speed is
completion tokens over wall time, per request; the first request of each kind (the grammar's compilation and the
xgrammar import) is reported apart. A third row is a schema of several constrained fields (an enum, bounded
integers, an array), whose answers end early: its tokens per second.

Goal (printed PASS/MISS; a miss does not make the script exit non-zero): the schema costs at most 10% of the free
text's tokens per second (median of the per-pair ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx

from hone_kernel.tiny_model import build
from inference.launcher import engine_command
from tests.support import MODEL_CACHE, free_port, start_python, wait_http

GOAL_COST = 0.10
LONG = {
    "type": "json_schema",
    "json_schema": {
        "name": "note",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"text": {"type": "string", "minLength": 400}},  # longer than any answer here
            "required": ["text"],
            "additionalProperties": False,
        },
    },
}
TICKET = {
    "type": "json_schema",
    "json_schema": {
        "name": "ticket",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": ["Billing", "Account", "Sales"]},
                "priority": {"type": "integer", "minimum": 1, "maximum": 3},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
            },
            "required": ["label", "priority", "tags"],
            "additionalProperties": False,
        },
    },
}
MESSAGES = [{"role": "user", "content": "My invoice shows the wrong amount, please help."}]


def timed(client: httpx.Client, body: dict) -> tuple[float, int]:
    """(seconds, completion tokens) of one non-streamed request."""
    start = time.perf_counter()
    reply = client.post("/v1/chat/completions", json=body)
    seconds = time.perf_counter() - start
    reply.raise_for_status()
    return seconds, reply.json()["usage"]["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24, help="pairs of requests (default 24)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    model = build(MODEL_CACHE / "hone-tiny")
    port = free_port()
    launch = engine_command(
        "builtin",
        str(model),
        "hone-tiny",
        host="127.0.0.1",
        port=port,
        max_loras=1,
        max_cpu_loras=1,
        max_lora_rank=16,
        max_model_len=512,
    )
    log = Path(tempfile.mkdtemp(prefix="hone-bench-structured-")) / "engine.log"
    env = {**os.environ, **launch.env, "OMP_NUM_THREADS": "1"}
    engine = start_python(launch.argv, env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=engine)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            base = {"model": "hone-tiny", "messages": MESSAGES, "max_tokens": args.max_tokens, "temperature": 0}
            free_body = {**base, "ignore_eos": True}
            long_body = {**base, "response_format": LONG}
            first_s, first_tokens = timed(client, long_body)  # the import and the grammar's compilation
            timed(client, free_body)
            rates: dict[str, list[float]] = {"free": [], "schema": []}
            ratios = []
            for i in range(args.requests):
                order = [("free", free_body), ("schema", long_body)]
                pair = {}
                for name, body in order if i % 2 == 0 else reversed(order):
                    seconds, tokens = timed(client, body)
                    pair[name] = tokens / seconds
                    rates[name].append(pair[name])
                ratios.append(pair["schema"] / pair["free"])
            ticket = []
            for seed in range(args.requests):
                seconds, tokens = timed(client, {**base, "temperature": 1.0, "seed": seed, "response_format": TICKET})
                ticket.append(tokens / seconds)
    finally:
        engine.terminate()
        engine.wait(30)

    free, schema = statistics.median(rates["free"]), statistics.median(rates["schema"])
    cost = 1 - statistics.median(ratios)
    print(f"built-in engine, hone-tiny, {args.requests} interleaved pairs of {args.max_tokens}-token answers")
    print(f"  free text (baseline)            {free:8.1f} tokens/s (median)")
    print(f"  json_schema, one long string    {schema:8.1f} tokens/s (median)")
    print(f"  json_schema, ticket (5 fields)  {statistics.median(ticket):8.1f} tokens/s (median, answers end early)")
    print(f"  first schema request: {first_s * 1000:.0f} ms for {first_tokens} tokens (xgrammar import + compile)")
    verdict = "PASS" if cost <= GOAL_COST else "MISS"
    print(json.dumps({"cost_of_tokens_per_second": round(cost, 4), "goal": GOAL_COST, "verdict": verdict}))
    print(f"{verdict}: the grammar costs {cost:.1%} of tokens/s (goal <= {GOAL_COST:.0%})")


if __name__ == "__main__":
    main()
