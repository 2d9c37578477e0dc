"""Graders throughput: `POST /v1/fine_tuning/alpha/graders/run` at --concurrency clients (default 32), against
`GET /healthz` measured in the same run as the baseline.

Starts `python -m service` on loopback (tests.support.HoneServer, SQLite, the product's poll intervals, no
trainer), creates a project, and measures with the raw asyncio client of benchmarks/api_latency.py:

    GET /healthz (baseline), graders/run of a string_check, of a multi (string_check + rouge_1 text_similarity),
    and of a python grader (one sandbox process per grade).

Goal (issue 19): a string_check at >= 500 grades/s. Prints requests/s, p50/p99 and the server's CPU per request.

    .venv/bin/python benchmarks/graders.py                # 3,000 requests per operation (300 for python)
    .venv/bin/python benchmarks/graders.py --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.api_latency import _POLLS, Clients, Op, calibrate, measure  # noqa: E402
from benchmarks.revision import git_revision  # noqa: E402
from service.settings import FIELDS  # noqa: E402
from tests.support import HoneServer  # noqa: E402

GOAL_STRING_CHECK_PER_S = 500
TICKET = {
    "type": "string_check",
    "name": "label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}
MULTI = {
    "type": "multi",
    "name": "label and words",
    "graders": {
        "exact": TICKET,
        "words": {
            "type": "text_similarity",
            "name": "words",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.answer }}",
            "evaluation_metric": "rouge_1",
        },
    },
    "calculate_output": "0.5 * exact + 0.5 * words",
}
PYTHON = {
    "type": "python",
    "name": "py",
    "source": "def grade(sample, item):\n    return float(sample['output_text'] == item['label'])\n",
}
ITEM = {"label": "Billing", "answer": "the invoice was charged twice this month"}


def body(grader: dict) -> bytes:
    return json.dumps({"grader": grader, "model_sample": "Billing", "item": ITEM}).encode()


async def bench(server: HoneServer, api_key: str, args: argparse.Namespace) -> dict:
    run = "/v1/fine_tuning/alpha/graders/run"
    ops = [
        (Op("GET /healthz (baseline)", "healthz", "GET", lambda i: "/healthz"), args.requests),
        (
            Op("graders/run string_check", "string", "POST", lambda i: run, body(TICKET), "application/json"),
            args.requests,
        ),
        (Op("graders/run multi", "multi", "POST", lambda i: run, body(MULTI), "application/json"), args.requests),
        (
            Op("graders/run python", "python", "POST", lambda i: run, body(PYTHON), "application/json"),
            args.python_requests,
        ),
    ]
    clients = Clients("raw", server.base_url, api_key, args.concurrency)
    results = {}
    try:
        for op, total in ops:
            print(f"Measuring {op.label}: {total:,} requests, {args.concurrency} clients ...", flush=True)
            results[op.tag] = await measure(clients, op, op.tag, total, args.concurrency, 50, server.proc.pid)
    finally:
        await clients.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--python-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"Hone graders benchmark, revision {git_revision()}")
    print(f"Calibration, a fixed pure-Python loop: {calibrate():.1f} ms")
    polls = {f"HONE_{name.upper()}": str(FIELDS[name].default) for name in _POLLS}
    with tempfile.TemporaryDirectory(prefix="hone-bench-graders-") as folder:
        server = HoneServer(Path(folder) / "data", {"HONE_LOCAL_SLOTS": "0", **polls})
        try:
            results = asyncio.run(bench(server, server.new_project("graders").api_key, args))
        finally:
            server.stop()
    print(f"\n{'operation':<28}{'n':>7}{'err':>5}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'srv cpu ms/req':>16}")
    for result in results.values():
        done = max(1, result.n + result.errors)
        print(
            f"{result.label:<28}{result.n:>7}{result.errors:>5}{result.rps:>8.0f}{result.pct(50):>9.2f}"
            f"{result.pct(99):>9.2f}{result.server_cpu_s * 1000 / done:>16.2f}"
        )
        if result.errors:
            print(f"  ! {result.errors} failed; first: {result.first_error}")
    string = results["string"]
    verdict = "PASS" if string.rps >= GOAL_STRING_CHECK_PER_S and not string.errors else "MISS"
    print(
        f"\nGoal: string_check >= {GOAL_STRING_CHECK_PER_S} grades/s: {string.rps:.0f}/s {verdict} "
        f"({string.rps / results['healthz'].rps:.0%} of /healthz's rate in the same run)"
    )


if __name__ == "__main__":
    main()
