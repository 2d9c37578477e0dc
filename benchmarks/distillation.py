"""Distillation on hone-tiny, measured through the served endpoints: a teacher's answers train a student that never
sees a label.

    .venv/bin/python benchmarks/distillation.py              # 1 teacher, 3 student seeds (~12 min on 2 cores)
    .venv/bin/python benchmarks/distillation.py --seeds 1

Starts the real server (as benchmarks/reinforcement.py) and, with the openai SDK and plain HTTP:

1. the teacher: hone-tiny fine-tuned (supervised, "auto") on the 288 labelled tickets of examples/tasks.py
   `tickets`, served;
2. per seed, a student: a `distillation` job on hone-tiny whose training file is the same 288 tickets as prompts
   only (no label anywhere), `teacher` the teacher's model, hyperparameters on "auto": the teacher answers every
   prompt through the trainer contract's MODEL_CHAT route, and the student trains on those answers;
3. teacher and students asked the 72 held-out tickets (temperature 0); accuracy is the share of exact labels.

It also prints how long the teacher took to answer (from the job's events) and the time to train the student.
Goal (PASS/MISS, never a non-zero exit): the teacher >= 95%, every student >= 90%.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.reinforcement import Bench  # noqa: E402
from benchmarks.revision import git_revision  # noqa: E402
from examples.tasks import tickets  # noqa: E402
from tests.support import HoneServer  # noqa: E402

TEACHER_GOAL, STUDENT_GOAL = 0.95, 0.90


def student(bench: Bench, teacher: str, prompts_file: str, seed: int, held_out: list[dict]) -> dict:
    started = time.monotonic()
    body = {
        "model": "hone-tiny",
        "training_file": prompts_file,
        "seed": seed,
        "method": {"type": "distillation", "distillation": {"teacher": teacher}},
    }
    job_id = bench.http.post("/v1/fine_tuning/jobs", json=body).raise_for_status().json()["id"]
    bench.finish(job_id)  # (the openai SDK reads a distillation job loosely; its shape is read over HTTP below)
    job = bench.http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    total_s = time.monotonic() - started
    events = bench.http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    answered = [e for e in events if e["message"].startswith("Teacher ")]
    first_step = [e for e in events if e["type"] == "metrics"]
    teacher_s = min(e["created_at"] for e in first_step) - min(e["created_at"] for e in answered) if answered else None
    endpoint = bench.endpoint(job["fine_tuned_model"])
    accuracy = bench.accuracy(job["fine_tuned_model"], held_out)
    bench.http.delete(f"/v1/endpoints/{endpoint}")
    return {
        "seed": seed,
        "accuracy": accuracy,
        "job_s": round(total_s, 1),
        "teacher_answers_s": teacher_s,
        "hyperparameters": job["method"]["distillation"]["hyperparameters"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    seeds = list(range(1, args.seeds + 1))
    print(f"distillation benchmark, {git_revision()}, {platform.node()}, {seeds=}", flush=True)
    labelled, held_out = tickets()
    with tempfile.TemporaryDirectory(prefix="hone-bench-distill-") as tmp:
        server = HoneServer(
            Path(tmp),
            env={"HONE_AUTO_DEPLOY": "true", "HONE_SHARED_ENGINES": "true", "HONE_PARITY_SAMPLES": "2"},
        )
        try:
            bench = Bench(server.new_project("distillation"))
            teacher_job = bench.client.fine_tuning.jobs.create(
                model="hone-tiny", training_file=bench.upload(labelled, "labelled-288.jsonl"), seed=1
            )
            teacher = bench.finish(teacher_job.id).fine_tuned_model
            bench.endpoint(teacher)
            teacher_accuracy = bench.accuracy(teacher, held_out)
            print(f"teacher {teacher}: {teacher_accuracy:.1%} held out", flush=True)
            prompts_file = bench.upload([{"messages": row["messages"][:-1]} for row in labelled], "prompts-288.jsonl")
            runs = []
            for seed in seeds:
                run = student(bench, teacher, prompts_file, seed, held_out)
                runs.append(run)
                print(
                    f"student seed {seed}: {run['accuracy']:.1%} held out; job {run['job_s']}s, of which the teacher "
                    f"answered 288 prompts in {run['teacher_answers_s']}s",
                    flush=True,
                )
        finally:
            server.stop()
    students = [r["accuracy"] for r in runs]
    verdict = "PASS" if teacher_accuracy >= TEACHER_GOAL and min(students) >= STUDENT_GOAL else "MISS"
    print(
        f"{verdict}: teacher {teacher_accuracy:.1%} (goal >= {TEACHER_GOAL:.0%}), students "
        f"{', '.join(f'{a:.1%}' for a in students)} (goal >= {STUDENT_GOAL:.0%} each), no label in their data"
    )
    print("student hyperparameters (auto):", json.dumps(runs[0]["hyperparameters"]))
    if args.json:
        args.json.write_text(json.dumps({"revision": git_revision(), "teacher": teacher_accuracy, "runs": runs}))


if __name__ == "__main__":
    main()
