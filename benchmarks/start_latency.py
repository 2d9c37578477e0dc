"""Submit -> first training step on hone-tiny through the real server and the local executor, and where it goes.

    .venv/bin/python benchmarks/start_latency.py [--runs 5] [--modes warm,cold] [--before DIR]

Each run starts `python -m service` as `hone serve` does (its own process, SQLite, the default poll intervals, one
local slot; hone-tiny already built in the model cache), waits for /healthz, submits a job on 20 chat examples
(`first`: at once), cancels it after its first step, waits for its trainer to exit, and submits another
(`next`: the server up for a while). Warm (HONE_WARM_START=true, the default) and cold (false) runs alternate, and
with `--before DIR` (a `git worktree add DIR <commit>` checkout), the same runs of that revision's server and
trainer interleaved with this one's: a baseline under the same load.
For each job it prints the time from `POST /v1/fine_tuning/jobs` to the first `metrics` event listed by the API,
split at timestamps the system writes anyway:

  post         the POST itself
  to_claim     validating_files -> queued -> claimed by the scheduler (its "trainer started" log line, less the
               launch's own time)
  launch       claimed -> the trainer's process exists (a fork of the warm interpreter, or a new interpreter; with
               the warm interpreter not yet up, its preload is waited for here)
  process      process start -> `trainer.__main__.main()` runs (interpreter start-up and first imports)
  spec, imports, model, data, wrap, setup, first_step
               the trainer's own phases (trainer/startup.py: its plan event's `startup_ms`)
  report       the first step done -> its metrics event listed by the API

then each phase's median (and min-max) over the runs, and the machine's load before and after. For the first job
also: `server_health`, the server's process start -> /healthz answering, and `server_warm`, -> its warm interpreter
ready (what the first job waits for, if it comes sooner)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import HoneServer, chat_dataset  # noqa: E402

PHASES = ["post", "to_claim", "launch", "process", "spec", "imports", "model", "data", "wrap", "setup", "first_step"]
PHASES += ["report"]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def _log_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _wait(what: str, check, timeout: float = 120.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def one_job(server: HoneServer, api: httpx.Client, file_id: str) -> dict[str, float]:
    """One job's phases in ms, from the POST to its first metrics event visible."""
    t0 = time.time()
    job = api.post("/v1/fine_tuning/jobs", json={"model": "hone-tiny", "training_file": file_id}).json()
    t_post = time.time()
    job_id = job["id"]

    def first_metrics() -> float | None:
        events = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 5}).json()["data"]
        return time.time() if any(e["type"] == "metrics" for e in events) else None

    t_visible = _wait("the first metrics event", first_metrics)
    api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    trainer_log = server.data_dir / "logs" / job_id / "attempt-1.log"
    _wait("the trainer's exit", lambda: not server._trainers(), timeout=60)
    phases = {"post": t_post - t0, "total": t_visible - t0}
    started = [x for x in _log_lines(server.log_path) if x.get("msg") == "trainer started" and x["job_id"] == job_id]
    first = [x for x in _log_lines(trainer_log) if x.get("msg") == "first training step done"]
    if started and first:  # a revision without these lines (an older one, for a baseline) gives the total only
        t_claim = started[0]["ts"] - started[0]["launch_ms"] / 1000
        startup = dict(first[0]["startup_ms"])
        total = startup.pop("total")
        phases.update({"to_claim": t_claim - t_post, "launch": first[0]["started_at"] - t_claim})
        phases.update({k: v / 1000 for k, v in startup.items()})
        phases["report"] = t_visible - (first[0]["started_at"] + total / 1000)
    return {k: v * 1000 for k, v in phases.items()}


def one_server(tmp: Path, warm: bool, tree: Path = REPO) -> tuple[dict, dict]:
    env = {
        "HONE_WARM_START": "true" if warm else "false",
        "HONE_LOCAL_SLOTS": "1",
        "HONE_TRAINER_THREADS": "0",
        # the production defaults, not the test suite's shorter polls: a job must not wait for a poll
        "HONE_JOB_VALIDATION_POLL_S": "2.0",
        "HONE_SCHEDULER_POLL_S": "1.0",
    }
    began = time.time()
    # `python -m service` of that checkout: its folder first on sys.path, and the warm interpreter's and cold
    # trainers' too (they inherit the folder)
    command = ["sh", "-c", 'cd "$0" && exec "$1" -m service', str(tree), sys.executable]
    server = HoneServer(tmp / "srv", env, command=command)
    healthy = time.time()
    try:
        project = server.new_project("bench")
        with project.http() as api:
            files = {"file": ("t.jsonl", chat_dataset(20))}
            file_id = api.post("/v1/files", data={"purpose": "fine-tune"}, files=files).json()["id"]
            first = one_job(server, api, file_id)
            second = one_job(server, api, file_id)
        first["server_health"] = (healthy - began) * 1000
        ready = [x for x in _log_lines(server.log_path) if x.get("msg") == "warm interpreter ready"]
        if ready:  # the server's preload: from the server process's start (the first job waits for what is left)
            first["server_warm"] = (ready[0]["ts"] - began) * 1000
        return first, second
    finally:
        server.stop()


def summary(label: str, runs: list[dict]) -> None:
    print(f"\n{label}: {len(runs)} runs, ms (median, min-max)")
    for phase in [*PHASES, "total", "server_health", "server_warm"]:
        values = [r[phase] for r in runs if phase in r]
        if not values:
            continue
        print(f"  {phase:<11} {statistics.median(values):8.0f}  ({min(values):.0f}-{max(values):.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default="warm,cold")
    parser.add_argument("--before", type=Path, help="a checkout of the baseline revision, run interleaved")
    args = parser.parse_args()
    trees = {"": REPO, **({"before ": args.before.resolve()} if args.before else {})}
    modes = [(tag + mode, tree, mode == "warm") for mode in args.modes.split(",") for tag, tree in trees.items()]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    print(f"{time.strftime('%Y-%m-%d %H:%M')} git {rev.strip()}{' (+ uncommitted)' if dirty else ''}; {load()}")
    if args.before:
        at = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.before, capture_output=True, text=True)
        changed = subprocess.run(["git", "status", "--porcelain"], cwd=args.before, capture_output=True, text=True)
        print(
            f"before: {args.before} at {at.stdout.strip()}{' (+ uncommitted, e.g. a revert)' if changed.stdout else ''}"
        )
    results: dict[str, list[dict]] = {f"{m[0]} {which}": [] for m in modes for which in ("first", "next")}
    for i in range(args.runs):
        for label, tree, warm in modes:
            with tempfile.TemporaryDirectory() as tmp:
                first, second = one_server(Path(tmp), warm, tree)
            results[f"{label} first"].append(first)
            results[f"{label} next"].append(second)
            print(f"run {i + 1} {label}: first job {first['total']:.0f} ms, next {second['total']:.0f} ms", flush=True)
    for label, runs in results.items():
        summary(label, runs)
    print(f"\nafter: {load()}")


if __name__ == "__main__":
    main()
