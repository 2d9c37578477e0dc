"""Tool calling after tuning: held-out accuracy of hone-tiny tuned on examples/tool_use.py's calls, on "auto"
hyperparameters and on the setting tests/test_tool_training.py uses, over seeds, next to its base.

    .venv/bin/python benchmarks/tool_use.py            # auto x 3 seeds + the test's setting x 2 (~12 min on 2 cores)
    .venv/bin/python benchmarks/tool_use.py --quick    # auto x 1

The real server (tests.support.HoneServer: SQLite, local folder, the built-in engine), as a user does it: upload the
training lines through the openai SDK, create a job on `hone-tiny`, wait for its endpoint, ask every held-out
sentence (72, never seen in training) with the three tools and tool_choice "auto" through `/v1/chat/completions`
(temperature 0); the base model is asked the same. A right answer is one call, to the function the sentence asks
for, with arguments that validate (`function`), and naming its city (`city`). Goals (PASS/MISS, never a non-zero
exit): every tuned run >= 90% right function, the base <= 10%."""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.revision import git_revision  # noqa: E402
from examples import tool_use  # noqa: E402
from tests.support import HoneServer, jsonl, wait_endpoint, wait_job  # noqa: E402

TEST_SETTING = {"n_epochs": 15, "batch_size": 8, "learning_rate_multiplier": 2}


def _rates(client, model: str, rows) -> tuple[float, float]:
    scores = []
    for prompt, function, city in rows:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            tools=tool_use.TOOLS,
            temperature=0,
            max_tokens=32,
        )
        scores.append(tool_use.score(reply.choices[0].message, function, city))
    return sum(v for v, _ in scores) / len(scores), sum(c for _, c in scores) / len(scores)


def run(setting: dict | None, seed: int, with_base: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        server = HoneServer(Path(tmp), {"HONE_AUTO_DEPLOY": "true", "HONE_LOCAL_SLOTS": "1"})
        try:
            project = server.new_project("bench")
            client = project.openai()
            uploaded = client.files.create(file=("t.jsonl", jsonl(tool_use.training_lines())), purpose="fine-tune")
            started = time.monotonic()
            extra = {"hyperparameters": setting} if setting else {}
            job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=uploaded.id, seed=seed, **extra)
            job = wait_job(client, job.id, lambda j: j.status in ("succeeded", "failed"), timeout=3600)
            if job.status != "succeeded":
                return {"seed": seed, "setting": setting, "error": str(job.error)}
            job_s = time.monotonic() - started
            with project.http() as http:
                wait_endpoint(http, job.fine_tuned_model)
            _, held_out = tool_use.prompts()
            row = {
                "seed": seed,
                "setting": setting or "auto",
                "n_epochs": job.hyperparameters.n_epochs,
                "batch_size": job.hyperparameters.batch_size,
                "job_s": round(job_s),
                "tuned": _rates(client, job.fine_tuned_model, held_out),
            }
            if with_base:
                row["base"] = _rates(client, "hone-tiny", held_out)
            return row
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"revision {git_revision()} · {platform.processor() or platform.machine()} · {time.strftime('%Y-%m-%d')}")
    plan = [(None, 1)] if args.quick else [(None, 1), (None, 2), (None, 3), (TEST_SETTING, 1), (TEST_SETTING, 2)]
    rows = []
    for i, (setting, seed) in enumerate(plan):
        rows.append(run(setting, seed, with_base=i == 0))
        print(rows[-1], flush=True)  # as each job ends: a run is minutes on 2 cores
    print("\n| hyperparameters | seed | n_epochs | batch_size | job (s) | right function | right city |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['setting']} | {r['seed']} | failed: {r['error']} | | | | |")
            continue
        print(
            f"| {r['setting']} | {r['seed']} | {r['n_epochs']} | {r['batch_size']} | {r['job_s']} "
            f"| {r['tuned'][0]:.0%} | {r['tuned'][1]:.0%} |"
        )
    done = [r for r in rows if "error" not in r]
    worst = min((r["tuned"][0] for r in done), default=0.0)
    base = rows[0].get("base", (1.0, 1.0))
    print(
        f"\nworst tuned {worst:.0%} right function (goal >= 90%: {'PASS' if worst >= 0.9 else 'MISS'}); "
        f"base {base[0]:.0%} (goal <= 10%: {'PASS' if base[0] <= 0.1 else 'MISS'})"
    )


if __name__ == "__main__":
    main()
