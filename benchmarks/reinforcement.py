"""Reinforcement fine-tuning on hone-tiny, measured through the served endpoint, over several seeds.

    .venv/bin/python benchmarks/reinforcement.py              # 3 seeds (~15 min on 2 cores)
    .venv/bin/python benchmarks/reinforcement.py --seeds 1

Starts the real server (tests.support.HoneServer: SQLite, local folder, the built-in engine, one shared engine for
all adapters) and, per seed, does what a user does with the openai SDK:

1. supervised fine-tuning of hone-tiny on the 40 labelled tickets of examples/tasks.py `small` (hyperparameters on
   "auto"): a model that labels about half the held-out tickets right;
2. reinforcement fine-tuning of that model (`model: ft:...`) on the 288 tickets of `tickets` as prompts only, each
   with its label as a field the grader reads, graded by a string_check of `{{sample.output_text}}` against
   `{{item.label}}`; hyperparameters on "auto";
3. each model's endpoint asked the 72 held-out tickets through `/v1/chat/completions` (temperature 0); accuracy is
   the share of exact labels.

Per RFT step it prints the time and the share spent generating, grading and updating (from the job's metrics
events), and compares generation inside training with the served engine answering the same number of prompts
concurrently. Goal (PASS/MISS, never a non-zero exit): RFT raises held-out accuracy by at least 15 points on every
seed.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.revision import git_revision  # noqa: E402
from examples.tasks import small, tickets  # noqa: E402
from tests.support import HoneServer, ProjectKey  # noqa: E402

GOAL_POINTS = 15.0
TIMEOUT_S = 1800
GRADER = {
    "type": "string_check",
    "name": "label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def as_prompt(row: dict) -> dict:
    """A labelled chat line as a reinforcement prompt: the conversation without its answer, the answer a field."""
    return {"messages": row["messages"][:-1], "label": row["messages"][-1]["content"]}


class Bench:
    def __init__(self, project: ProjectKey):
        self.client = openai.OpenAI(
            base_url=project.server.base_url + "/v1", api_key=project.api_key, timeout=120, max_retries=3
        )
        self.http = project.http()

    def upload(self, rows: list[dict], name: str) -> str:
        return self.client.files.create(file=(name, io.BytesIO(_jsonl(rows))), purpose="fine-tune").id

    def finish(self, job_id: str):
        deadline = time.monotonic() + TIMEOUT_S
        while (job := self.client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job.status} after {TIMEOUT_S}s")
            time.sleep(1)
        if job.status != "succeeded":
            raise RuntimeError(f"job {job_id} {job.status}: {job.error}")
        return job

    def endpoint(self, model: str) -> str:
        deadline = time.monotonic() + 300
        while True:
            listed = self.http.get("/v1/endpoints", params={"model": model}).json()["data"]
            found = [ep for ep in listed if ep["state"] not in ("stopped", "deleting")]
            if found and found[0]["state"] == "ready":
                return found[0]["id"]
            if found and found[0]["state"] == "failed":
                raise RuntimeError(f"endpoint for {model} failed: {found[0].get('error')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no ready endpoint for {model}")
            time.sleep(0.5)

    def accuracy(self, model: str, held_out: list[dict]) -> float:
        right = 0
        for row in held_out:
            reply = self.client.chat.completions.create(
                model=model, messages=row["messages"][:-1], temperature=0, max_tokens=24
            )
            right += (reply.choices[0].message.content or "") == row["messages"][-1]["content"]
        return right / len(held_out)

    def engine_answers_per_s(self, model: str, prompts: list[dict], n: int, max_tokens: int) -> float:
        """The served engine answering `n` samples of each prompt, all requests at once: its batched speed."""
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(prompts) * n) as pool:
            list(
                pool.map(
                    lambda p: self.client.chat.completions.create(
                        model=model, messages=p["messages"], temperature=1.0, max_tokens=max_tokens
                    ),
                    [p for p in prompts for _ in range(n)],
                )
            )
        return len(prompts) * n / (time.perf_counter() - started)

    def steps(self, job_id: str) -> list[dict]:
        events = self.client.fine_tuning.jobs.list_events(job_id, limit=1000).data
        return sorted((e.data for e in events if e.type == "metrics"), key=lambda d: d["step"])


def run_seed(bench: Bench, seed: int, sft_file: str, rl_file: str, held_out: list[dict]) -> dict:
    sft = bench.client.fine_tuning.jobs.create(model="hone-tiny", training_file=sft_file, seed=seed)
    sft = bench.finish(sft.id)
    started = time.monotonic()
    rl = bench.client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model,
        training_file=rl_file,
        seed=seed,
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER}},
    )
    rl = bench.finish(rl.id)
    rl_s = time.monotonic() - started
    sft_endpoint, rl_endpoint = bench.endpoint(sft.fine_tuned_model), bench.endpoint(rl.fine_tuned_model)
    before, after = bench.accuracy(sft.fine_tuned_model, held_out), bench.accuracy(rl.fine_tuned_model, held_out)
    steps = bench.steps(rl.id)
    hp = rl.method.to_dict()["reinforcement"]["hyperparameters"]
    phases = {p: statistics.mean(s[f"{p}_seconds"] for s in steps) for p in ("generation", "grading", "update")}
    answers_per_step = hp["batch_size"] * max(2, min(64, round(8 * hp["compute_multiplier"])))
    sample_prompts = [{"messages": row["messages"][:-1]} for row in held_out[: hp["batch_size"]]]
    engine = bench.engine_answers_per_s(
        rl.fine_tuned_model, sample_prompts, answers_per_step // hp["batch_size"], hp["max_completion_tokens"]
    )
    for endpoint in (sft_endpoint, rl_endpoint):
        bench.http.delete(f"/v1/endpoints/{endpoint}")
    return {
        "seed": seed,
        "sft": before,
        "rft": after,
        "gain_points": round(100 * (after - before), 1),
        "rft_s": round(rl_s, 1),
        "steps": len(steps),
        "step_s": round(sum(phases.values()), 3),
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
        "train_reward_first_last": (steps[0]["train_reward_mean"], steps[-1]["train_reward_mean"]),
        "training_answers_per_s": round(answers_per_step / phases["generation"], 1),
        "engine_answers_per_s": round(engine, 1),
        "hyperparameters": hp,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    seeds = list(range(1, args.seeds + 1))
    print(f"reinforcement benchmark, {git_revision()}, {platform.node()}, {seeds=}", flush=True)
    labelled, _ = small()
    all_tickets, held_out = tickets()
    runs = []
    with tempfile.TemporaryDirectory(prefix="hone-bench-rft-") as tmp:
        server = HoneServer(
            Path(tmp),
            env={"HONE_AUTO_DEPLOY": "true", "HONE_SHARED_ENGINES": "true", "HONE_PARITY_SAMPLES": "2"},
        )
        try:
            bench = Bench(server.new_project("reinforcement"))
            sft_file = bench.upload(labelled, "labelled-40.jsonl")
            rl_file = bench.upload([as_prompt(row) for row in all_tickets], "prompts-288.jsonl")
            for seed in seeds:
                run = run_seed(bench, seed, sft_file, rl_file, held_out)
                runs.append(run)
                phases = run["phases_s"]
                share = {k: f"{100 * v / run['step_s']:.0f}%" for k, v in phases.items()}
                print(
                    f"seed {seed}: SFT {run['sft']:.1%} -> RFT {run['rft']:.1%} ({run['gain_points']:+.1f} points); "
                    f"{run['steps']} steps in {run['rft_s']}s, {run['step_s']}s/step (generation {share['generation']}, "
                    f"grading {share['grading']}, update {share['update']}); answers/s: training "
                    f"{run['training_answers_per_s']}, engine {run['engine_answers_per_s']}",
                    flush=True,
                )
        finally:
            server.stop()
    gains = [r["gain_points"] for r in runs]
    verdict = "PASS" if min(gains) >= GOAL_POINTS else "MISS"
    print(
        f"{verdict}: gains {gains} points (goal: >= {GOAL_POINTS:g} on every seed); mean "
        f"SFT {statistics.mean(r['sft'] for r in runs):.1%} -> RFT {statistics.mean(r['rft'] for r in runs):.1%}"
    )
    print("hyperparameters (auto):", json.dumps(runs[0]["hyperparameters"]))
    if args.json:
        args.json.write_text(json.dumps({"revision": git_revision(), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
