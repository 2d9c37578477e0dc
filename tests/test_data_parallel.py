"""Data-parallel training on 2 CPU processes (gloo), as the launcher starts them: real `python -m trainer.ranks`
subprocesses on hone-tiny, reporting to a recording control plane over HTTP.

- Two ranks with the same global batch give the losses and weights of one process, to a stated tolerance (the only
  difference is the order floats are summed in: each rank packs its half of a step into its own rows).
- Killing one rank ends the attempt as a crash (the other rank is ended too, not left waiting on it), and the next
  attempt resumes from the last checkpoint with the very losses and weights of the run that was never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from hone_kernel.trainer_contract import Distillation, ExitCode, FileRef, Hyperparameters, Resources, TrainSpec
from tests.support import MODEL_CACHE, REPO, chat_line, free_port, start_python, wait_for
from trainer.ranks import outcome

# Relative tolerance on each step's loss and absolute on each adapter weight, between 1 and 2 processes: float32
# sums in another order differ in the last bits, which 20 Adam steps grow to ~1e-6 here.
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-4
TIMEOUT_S = 300


class ControlPlane(BaseHTTPRequestHandler):
    """Records what the trainer reports (rank 0's); says the job runs, and succeeds when completed."""

    bodies: list[tuple[str, dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).bodies.append((self.path, body))
        if self.path.endswith("/model_chat"):  # a distillation teacher that knows every ticket's label
            question = body["messages"][-1]["content"]
            label = next(label for word, label in LABELS.items() if word in question)
            reply = json.dumps({"text": label, "completion_tokens": 1, "finish_reason": "stop"}).encode()
        else:
            reply = json.dumps({"status": "succeeded" if self.path.endswith("/complete") else "running"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def control_plane():
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), ControlPlane)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


LABELS = {"invoice": "Billing", "login": "Account", "order": "Sales"}
ROWS = [
    chat_line(f"Ticket {i}: my {['invoice', 'login', 'order'][i % 3]} is wrong", ["Billing", "Account", "Sales"][i % 3])
    for i in range(24)
]


def write_spec(
    root: Path,
    job_id: str,
    callback: str,
    processes: int,
    epochs: int,
    attempt: int = 1,
    mode: str = "lora",
    distill: bool = False,
    prefer: bool = False,
) -> str:
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "files" / "train").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    prompts = [{"messages": r["messages"][:-1]} for r in ROWS]  # what a distillation job's file holds
    (root / "files" / "prompts").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    wrong = {"Billing": "Sales", "Account": "Billing", "Sales": "Account"}
    pairs = [
        {
            "input": {"messages": r["messages"][:-1]},
            "preferred_output": [r["messages"][-1]],
            "non_preferred_output": [{"role": "assistant", "content": wrong[r["messages"][-1]["content"]]}],
        }
        for r in ROWS
    ]
    (root / "files" / "pairs").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    if prefer:
        train_ref, method = FileRef("files/pairs", "openai_preference"), "dpo"
    elif distill:
        train_ref, method = FileRef("files/prompts", "openai_reinforcement"), "distillation"
    else:
        train_ref, method = FileRef("files/train", "openai_chat"), "supervised"
    spec = TrainSpec(
        job_id=job_id,
        fine_tuned_model=f"ft:hone-tiny:p::{job_id}",
        model_name="hone-tiny",
        model_source="builtin:hone-tiny",
        model_cache_dir=str(MODEL_CACHE),
        storage_url=root.as_uri(),
        training_file=train_ref,
        validation_file=None,
        method=method,
        distillation=Distillation(teacher="teacher", answers_key=f"jobs/{job_id}/teacher_answers.jsonl")
        if distill
        else None,
        hyperparameters=Hyperparameters(
            n_epochs=epochs,
            batch_size=8,
            learning_rate=2e-4 if mode == "full" or prefer else 5e-3,
            compute_dtype="float32",  # qlora's on CPU
            lr_scheduler="linear",
            tuning_mode=mode,
        ),
        seed=3,
        output_prefix=f"jobs/{job_id}/",
        callback_url=callback,
        token="t",
        attempt=attempt,
        checkpoint_interval_steps=3,
        resources=Resources(nodes=1, gpus_per_node=processes),
    )
    key = f"jobs/{job_id}/spec.json"
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_bytes(spec.to_json())
    return (root / key).as_uri()


class Run:
    """A trainer (1 process) or a launcher and its ranks, as the local executor starts it: forked from this test
    process's warm interpreter (tests/support.py), so the launcher forks its ranks warm too (trainer/ranks.py). With
    `cold`, plain `python -m` subprocesses, as a Kubernetes pod starts them."""

    def __init__(self, spec_url: str, processes: int, cold: bool = False):
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", CUDA_VISIBLE_DEVICES="")
        module = ["trainer.ranks", "--nproc-per-node", str(processes)] if processes > 1 else ["trainer"]
        argv = [sys.executable, "-m", *module, "--spec", spec_url]
        self.log = Path(spec_url.removeprefix("file://")).parent / f"run-{time.monotonic_ns()}.log"
        if cold:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        else:
            self.proc = start_python(argv, env, self.log)
        self.pid = self.proc.pid

    def finish(self, expect: int = ExitCode.OK, timeout: float = TIMEOUT_S) -> None:
        code = self.proc.wait(timeout)
        assert code == expect, self.log.read_text()[-3000:]

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


def losses(job_id: str) -> dict[int, float]:
    return {
        e["data"]["step"]: e["data"]["train_loss"]
        for path, body in ControlPlane.bodies
        if f"/jobs/{job_id}/" in path
        for e in body.get("events", [])
        if e["type"] == "metrics"
    }


def adapter(root: Path, job_id: str) -> dict[str, torch.Tensor]:
    """The published weights: the adapter, or the full model's."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for part in sorted((root / f"jobs/{job_id}/adapter").glob("*.safetensors")):
        weights |= load_file(part)
    assert weights
    return weights


def assert_same_run(a: dict[int, float], b: dict[int, float], wa: dict, wb: dict) -> None:
    """`a`'s steps (a killed rank 0 may not have delivered its last reports) and weights are `b`'s."""
    assert a and a.keys() <= b.keys() and max(a) == max(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=LOSS_RTOL), (step, a[step], b[step])
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < WEIGHT_ATOL


@pytest.fixture(scope="module")
def two_ranks(control_plane, tmp_path_factory):
    """A 2-rank run of 12 steps (24 examples, batch 8, 4 epochs), and the same job in one process."""
    root = tmp_path_factory.mktemp("dp")
    runs = {
        name: Run(write_spec(root, name, control_plane, n, epochs=4), n)
        for name, n in (("ftjob-one", 1), ("ftjob-two", 2))
    }
    for run in runs.values():
        run.finish()
    return root


def test_two_ranks_train_as_one_process_with_the_same_global_batch(two_ranks):
    one, two = losses("ftjob-one"), losses("ftjob-two")
    assert sorted(one) == sorted(two) == list(range(1, 13))
    assert_same_run(one, two, adapter(two_ranks, "ftjob-one"), adapter(two_ranks, "ftjob-two"))
    assert one[12] < one[1] * 0.7  # and it trained: not two runs that both did nothing
    # Rank 0 alone reports: one event per step, not one per rank.
    steps = [
        e for p, b in ControlPlane.bodies if "/ftjob-two/" in p for e in b.get("events", []) if e["type"] == "metrics"
    ]
    assert len(steps) == 12


def _ranks_of(launcher: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(launcher):
            found.append(int(status.parent.name))
    return sorted(found)


def test_killing_one_rank_crashes_the_attempt_and_the_next_resumes_exactly(control_plane, tmp_path):
    job = "ftjob-kill"
    reference = Run(write_spec(tmp_path / "ref", job + "ref", control_plane, 2, epochs=12), 2)
    proc = Run(write_spec(tmp_path / "run", job, control_plane, 2, epochs=12), 2)
    # After its first checkpoint (step 3 of 36), one rank is killed as the OOM killer or a lost node would.
    wait_for(
        lambda: (tmp_path / f"run/jobs/{job}/checkpoints/step-3/COMPLETE").exists(),
        TIMEOUT_S,
        0.05,
        "the first checkpoint",
    )
    ranks = _ranks_of(proc.pid)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)
    proc.finish(ExitCode.KILLED, timeout=60)  # a crash: the scheduler retries it
    assert not any(
        Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        for pid in ranks
    ), "the other rank was left running"
    reached = max(losses(job))
    assert reached < 36, "the run ended before the kill: make it longer"

    retry = Run(write_spec(tmp_path / "run", job, control_plane, 2, epochs=12, attempt=2), 2)
    retry.finish()
    reference.finish()
    resumed = [
        e
        for p, b in ControlPlane.bodies
        if f"/{job}/" in p
        for e in b.get("events", [])
        if "Resumed from" in e["message"]
    ]
    assert resumed and resumed[0]["data"]["step"] >= 3
    assert set(range(resumed[0]["data"]["step"] + 1, 37)) <= losses(job).keys()  # every step after it reported
    assert_same_run(
        losses(job), losses(job + "ref"), adapter(tmp_path / "run", job), adapter(tmp_path / "ref", job + "ref")
    )


def test_the_launcher_passes_the_ranks_endings_through():
    assert outcome({0: ExitCode.STOPPED, 1: ExitCode.STOPPED}, set()) == ExitCode.STOPPED  # a pause
    assert outcome({0: ExitCode.OK, 1: ExitCode.OK}, set()) == ExitCode.OK
    assert outcome({0: ExitCode.FATAL, 1: ExitCode.FATAL}, set()) == ExitCode.FATAL
    # a rank killed from outside is a crash, whatever the ranks the launcher then ended say
    assert outcome({0: -9, 1: 137}, {0}) == ExitCode.KILLED
    # the rank a signal ended is the cause, not the peer that then lost its connection to it
    assert outcome({0: 1, 1: -9}, set()) == ExitCode.KILLED
    assert outcome({0: ExitCode.OK, 1: 1}, set()) == 1


def test_a_cold_launcher_starts_its_ranks_as_processes_and_passes_their_ending_through(tmp_path):
    """Started cold, as on Kubernetes, the launcher has not imported the trainer: it starts each rank as `python -m
    trainer` (the forked ranks of the other tests are the warm case). Two ranks of a spec they cannot read end
    FATAL before importing torch, each having said why; the launcher ends with their code."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs/spec.json").write_text('{"contract_version": 999}')  # a newer control plane's: not read
    run = Run((tmp_path / "jobs/spec.json").as_uri(), 2, cold=True)
    run.finish(ExitCode.FATAL, timeout=60)
    assert run.log.read_text().count("cannot read the spec") == 2, run.log.read_text()[-3000:]


def test_a_job_asking_for_two_devices_trains_on_two_ranks_through_the_api(tmp_path):
    """The whole path on a 2-slot CPU machine: the API takes `resources`, the scheduler claims both slots for the
    job (a second job waits), the local executor starts trainer.ranks, and the job succeeds."""
    from tests.support import HoneServer, jsonl, trainer_pids, wait_job

    server = HoneServer(tmp_path / "server", {"HONE_LOCAL_SLOTS": "2", "HONE_AUTO_DEPLOY": "false"})
    try:
        client = server.new_project().openai()
        file = client.files.create(file=("t.jsonl", jsonl(ROWS)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=file.id,
            hyperparameters={"n_epochs": 2, "batch_size": 8},
            extra_body={"resources": {"gpus": 2}},
        )
        assert job.model_extra["resources"] == {"nodes": 1, "gpus_per_node": 2}
        small = client.fine_tuning.jobs.create(
            model="hone-tiny", training_file=file.id, hyperparameters={"n_epochs": 1}
        )
        running = wait_job(client, job.id, lambda j: j.status == "running")
        # Both slots are the first job's: the second waits in the queue while it trains.
        wait_job(client, small.id, lambda j: j.status == "queued")
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
        wait_for(lambda: len(trainer_pids(job.id)) == 3, 30, what="the launcher and its two ranks")
        done = wait_job(client, running.id, lambda j: j.status == "succeeded", timeout=TIMEOUT_S)
        assert done.trained_tokens and done.fine_tuned_model
        metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
        assert len(metrics) == 6  # 24 examples in batches of 8 for 2 epochs: one event a step, rank 0's
        wait_job(client, small.id, lambda j: j.status == "succeeded", timeout=TIMEOUT_S)
    finally:
        server.stop()


def test_full_weights_shard_over_two_ranks_and_resume_after_a_pause(control_plane, tmp_path):
    """Full tuning shards the weights (FSDP): the same losses and weights as one process, through a pause (SIGTERM:
    every rank stops at the step they agree on, the shards are gathered into rank 0's checkpoint) and a resume
    (each rank loads its shard of it)."""
    one = Run(write_spec(tmp_path, "ftjob-full1", control_plane, 1, epochs=4, mode="full"), 1)
    job = "ftjob-full2"
    two = Run(write_spec(tmp_path, job, control_plane, 2, epochs=4, mode="full"), 2)
    wait_for(lambda: (tmp_path / f"jobs/{job}/checkpoints/step-3/COMPLETE").exists(), TIMEOUT_S, 0.05, "step 3")
    two.send_signal(signal.SIGTERM)  # a pause: the launcher passes it to both ranks
    two.finish(ExitCode.STOPPED, timeout=120)
    paused_at = max(losses(job))
    assert paused_at < 12, "the run ended before the pause: make it longer"
    again = Run(write_spec(tmp_path, job, control_plane, 2, epochs=4, attempt=2, mode="full"), 2)
    for run in (again, one):
        run.finish()
    resumed = [
        e for p, b in ControlPlane.bodies if f"/{job}/" in p for e in b.get("events", []) if "Resumed" in e["message"]
    ]
    assert resumed and resumed[0]["data"]["step"] == paused_at  # checkpointed at the very step it stopped
    weights = adapter(tmp_path, job)
    assert any("embed_tokens" in k for k in weights) and len(weights) > 20  # the whole model, gathered
    assert_same_run(losses(job), losses("ftjob-full1"), weights, adapter(tmp_path, "ftjob-full1"))


def test_mfu_of_a_run_on_several_devices_is_over_all_their_peaks():
    from trainer.flops import live_figures

    hp = Hyperparameters(n_epochs=1, batch_size=8, learning_rate=1e-3)
    shape = (1_000_000_000, 16, 2048)
    one = live_figures(3, 9, {"train_loss": 1.5}, 0.5, 80_000, hp, shape, 989e12)
    eight = live_figures(3, 9, {"train_loss": 1.5}, 0.5, 80_000, hp, shape, 8 * 989e12)
    assert one["tokens_per_second"] == eight["tokens_per_second"] == 160_000
    assert eight["mfu"] == pytest.approx(one["mfu"] / 8, rel=1e-3) and one["mfu"] > 0
    assert "mfu" not in live_figures(3, 9, {}, 0.5, 80_000, hp, shape, None)  # CPU: no known peak


def test_distillation_asks_the_teacher_once_and_its_student_trains_on_two_ranks(control_plane, tmp_path):
    """Rank 0 asks the teacher and writes the answers; rank 1 waits for them in storage, then both train the
    student on them as one process would."""
    runs = {
        name: Run(write_spec(tmp_path, name, control_plane, n, epochs=2, distill=True), n)
        for name, n in (("ftjob-d1", 1), ("ftjob-d2", 2))
    }
    for run in runs.values():
        run.finish()
    asked = [p for p, _ in ControlPlane.bodies if p.endswith("/ftjob-d2/model_chat")]
    assert len(asked) == len(ROWS)  # once per prompt for the run, not once per rank
    answers = (tmp_path / "jobs/ftjob-d2/teacher_answers.jsonl").read_text().splitlines()
    assert [json.loads(line)["messages"][-1]["content"] for line in answers] == [
        r["messages"][-1]["content"] for r in ROWS
    ]
    assert_same_run(
        losses("ftjob-d2"), losses("ftjob-d1"), adapter(tmp_path, "ftjob-d2"), adapter(tmp_path, "ftjob-d1")
    )


def test_dpo_on_two_ranks_makes_the_updates_of_one_process(control_plane, tmp_path):
    runs = {
        name: Run(write_spec(tmp_path, name, control_plane, n, epochs=2, prefer=True), n)
        for name, n in (("ftjob-p1", 1), ("ftjob-p2", 2))
    }
    for run in runs.values():
        run.finish()
    one = losses("ftjob-p1")
    assert one[6] < one[1]  # it learnt to prefer
    assert_same_run(losses("ftjob-p2"), one, adapter(tmp_path, "ftjob-p2"), adapter(tmp_path, "ftjob-p1"))


def test_qlora_adapters_train_on_two_ranks_as_in_one_process(control_plane, tmp_path):
    """The 4-bit base is frozen (no gradient to sync): DDP replicates the LoRA weights over it as for LoRA."""
    runs = {
        name: Run(write_spec(tmp_path, name, control_plane, n, epochs=2, mode="qlora"), n)
        for name, n in (("ftjob-q1", 1), ("ftjob-q2", 2))
    }
    for run in runs.values():
        run.finish()
    one = losses("ftjob-q1")
    assert one[6] < one[1]
    assert_same_run(losses("ftjob-q2"), one, adapter(tmp_path, "ftjob-q2"), adapter(tmp_path, "ftjob-q1"))


def test_the_local_executor_counts_a_run_by_its_devices_before_and_after_a_restart(tmp_path):
    """A run of 2 devices takes 2 of 3 CPU slots, and a control plane that adopts it after a restart knows that
    from its ref. (The "trainer" is a script that sleeps: only the executor's bookkeeping is under test.)"""
    from service.executors.local import LocalExecutor
    from service.settings import Settings

    sleeper = tmp_path / "python"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    settings = Settings(data_dir=tmp_path / "data", admin_api_key="adm", trainer_python=str(sleeper), local_slots=3)
    executor = LocalExecutor(settings)
    assert executor.cost(Resources(1, 2)) == 2 and executor.free_slots() == 3
    ref = executor.launch("ftjob-big", 1, "file:///x/spec.json", Resources(1, 2))
    try:
        assert ref.endswith(":x2") and executor.free_slots() == 1
        restarted = LocalExecutor(settings)
        assert restarted.adopt("ftjob-big", ref) and restarted.free_slots() == 1
        small = restarted.launch("ftjob-small", 1, "file:///y/spec.json", Resources())
        assert ":x" not in small and restarted.free_slots() == 0
        restarted.stop("ftjob-small", kill=True)
    finally:
        executor.stop("ftjob-big", kill=True)
