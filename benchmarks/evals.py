"""Eval run throughput on the built-in engine: is a run bounded by the engine's generation, or by Hone?

Starts `python -m service` on loopback (tests.support.HoneServer, SQLite), deploys hone-tiny on the built-in
engine, then, with the same --rows prompts (support tickets, greedy, --max-tokens):

1. baseline: the prompts sent through `POST /v1/chat/completions` by --concurrency clients (as many as the eval
   runner's HONE_EVAL_CONCURRENCY), i.e. what the engine generates per second when kept busy;
2. an eval run (`completions` source, a string_check criterion) over the same rows, timed from its creation to
   `completed`.

Prints rows/s of both and their ratio. Goal (issue 19): the run at >= 0.8x the baseline's rate.

    .venv/bin/python benchmarks/evals.py               # 1,000 rows (~2-4 min on 2 cores)
    .venv/bin/python benchmarks/evals.py --rows 200
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.api_latency import calibrate  # noqa: E402
from benchmarks.revision import git_revision  # noqa: E402
from examples.support_tickets import make  # noqa: E402
from tests.support import HoneServer, wait_endpoint  # noqa: E402

GOAL_RATIO = 0.8


async def baseline(base_url: str, key: str, prompts: list[list[dict]], concurrency: int, max_tokens: int) -> float:
    queue: asyncio.Queue = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    headers = {"Authorization": f"Bearer {key}"}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
            while not queue.empty():
                prompt = queue.get_nowait()
                body = {"model": "hone-tiny", "messages": prompt, "temperature": 0, "max_tokens": max_tokens, "seed": 1}
                reply = await http.post("/v1/chat/completions", json=body)
                reply.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


def eval_run(http: httpx.Client, prompts: list[list[dict]], labels: list[str], max_tokens: int) -> tuple[float, dict]:
    ev = http.post(
        "/v1/evals",
        json={
            "name": "bench",
            "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
            "testing_criteria": [
                {
                    "type": "string_check",
                    "name": "label",
                    "input": "{{ sample.output_text }}",
                    "reference": "{{ item.label }}",
                    "operation": "eq",
                }
            ],
        },
    ).json()
    content = [{"item": {"messages": p, "label": label}} for p, label in zip(prompts, labels)]
    source = {
        "type": "completions",
        "model": "hone-tiny",
        "source": {"type": "file_content", "content": content},
        "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
        "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens, "seed": 1},
    }
    started = time.perf_counter()
    run = http.post(f"/v1/evals/{ev['id']}/runs", json={"data_source": source}).json()
    while run["status"] not in ("completed", "failed", "canceled"):
        time.sleep(0.2)
        run = http.get(f"/v1/evals/{ev['id']}/runs/{run['id']}").json()
    return time.perf_counter() - started, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    print(f"Hone eval throughput benchmark, revision {git_revision()}; calibration {calibrate():.1f} ms")
    train, held_out = make(count=args.rows, seed=11)
    rows = (train + held_out)[: args.rows]
    prompts = [r["messages"][:-1] for r in rows]
    labels = [r["messages"][-1]["content"] for r in rows]
    env = {"HONE_LOCAL_SLOTS": "0", "HONE_EVAL_CONCURRENCY": str(args.concurrency)}
    with tempfile.TemporaryDirectory(prefix="hone-bench-evals-") as folder:
        server = HoneServer(Path(folder) / "data", env)
        try:
            project = server.new_project("evals")
            with project.http() as http:
                http.post("/v1/endpoints", json={"model": "hone-tiny"}).raise_for_status()
                assert wait_endpoint(http, "hone-tiny", timeout=300)["state"] == "ready"
                asyncio.run(baseline(server.base_url, project.api_key, prompts[:20], args.concurrency, args.max_tokens))
                print(f"Baseline: {args.rows} chat completions, {args.concurrency} clients ...", flush=True)
                direct_s = asyncio.run(
                    baseline(server.base_url, project.api_key, prompts, args.concurrency, args.max_tokens)
                )
                print(f"Eval run: {args.rows} rows, HONE_EVAL_CONCURRENCY={args.concurrency} ...", flush=True)
                run_s, run = eval_run(http, prompts, labels, args.max_tokens)
        finally:
            server.stop()
    counts = run["result_counts"]
    assert counts["total"] == len(rows), counts
    direct_rate, run_rate = len(rows) / direct_s, len(rows) / run_s
    print(f"\n{'':<36}{'seconds':>9}{'rows/s':>9}")
    print(f"{'chat completions (baseline)':<36}{direct_s:>9.1f}{direct_rate:>9.1f}")
    print(f"{'eval run (sample + grade + store)':<36}{run_s:>9.1f}{run_rate:>9.1f}")
    print(f"run status {run['status']}, counts {counts}")
    ratio = run_rate / direct_rate
    verdict = "PASS" if ratio >= GOAL_RATIO and run["status"] == "completed" else "MISS"
    print(f"\nGoal: the run at >= {GOAL_RATIO}x the engine-bound baseline: {ratio:.2f}x {verdict}")


if __name__ == "__main__":
    main()
