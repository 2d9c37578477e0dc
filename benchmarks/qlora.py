"""QLoRA against LoRA and full tuning: memory and speed on a Llama of a few hundred million parameters, accuracy
on the tickets task with hone-tiny.

    .venv/bin/python benchmarks/qlora.py [--steps 3] [--threads N] [--skip-accuracy] [--skip-memory]

1. Memory and speed. A Llama-shaped model (hidden 1024, 20 layers: about 230M parameters; random weights, hone-tiny's
   tokenizer) is trained for a few steps in each mode by the real trainer loop (`trainer.loop.Run`), each mode in
   its own process so its peak memory is its own. Printed: base-weight memory (the bytes of the frozen base's
   parameters and buffers plus the 4-bit quantization state; a fully tuned model's are all its weights), the same
   for the base in bf16 (what GPU trainers load it in), peak RSS (CUDA peak memory on a GPU) and trained tokens a
   second. Goal: QLoRA's base-weight memory at most 0.35x LoRA's in bf16 (on CPU LoRA's base is float32, which
   would flatter QLoRA twice over).
2. Accuracy. hone-tiny tuned on the 288 training tickets (examples/tasks.py) with "auto" hyperparameters resolved as
   the service resolves them, with tuning_mode lora and qlora, each run as a job runs (`Run.execute`: checkpoints,
   published adapter); then greedy answers to the 72 held-out tickets. QLoRA's are counted as served: its adapter
   loaded onto the full-precision base (and, for the parity gate's tolerance, compared with the answers of the
   quantized model it was trained as). Goal: QLoRA within 3 points of LoRA.

PASS/MISS per goal; never a non-zero exit for a miss. OMP_WAIT_POLICY=PASSIVE is set; with other work on the machine
(load average above 1) torch runs on one thread unless --threads says otherwise, and the output says so."""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import trainer.quantization  # noqa: E402, F401  (first: its log filter in place before peft imports bitsandbytes)
from benchmarks.revision import git_revision  # noqa: E402
from benchmarks.train_throughput import build_bench_model  # noqa: E402

ARCH = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=20,
    num_attention_heads=16,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
MODES = ("full", "lora", "qlora")
MODELS = Path(tempfile.gettempdir()) / "hone-bench-models"  # built once, reused by later runs
MEMORY_GOAL = 0.35
ACCURACY_GOAL = 3.0  # points


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class Recorder:
    """The trainer's reporter, in process."""

    superseded, job_status = False, "running"

    def __init__(self):
        self.metrics: list[dict] = []

    def event(self, message, *, type="message", data=None, **_):
        if type == "metrics":
            self.metrics.append(data)

    def progress(self, **_):
        pass

    def checkpoint(self, *_, **__):
        pass

    def flush(self, *_, **__):
        return True

    def call(self, path, body):
        return {"status": "succeeded"}


def build_model(folder: Path) -> Path:
    return build_bench_model(folder, ARCH)


def spec_for(root: Path, source: str, data: str, hp, *, job: str = "bench", seed: int = 0, max_length: int = 2048):
    from hone_kernel.trainer_contract import FileRef, TrainSpec

    return TrainSpec(
        job_id=job,
        fine_tuned_model=f"ft:{job}",
        model_name=Path(source).name,
        model_source=source,
        model_cache_dir=str(MODELS),
        storage_url=root.as_uri(),
        training_file=FileRef(data, "openai_chat"),
        validation_file=None,
        method="supervised",
        hyperparameters=hp,
        seed=seed,
        output_prefix=f"jobs/{job}/",
        callback_url="http://127.0.0.1:9",
        token="t",
        max_length=max_length,
    )


# --- 1. memory and speed, one process per mode ----------------------------------------------------------------------


def child(mode: str, model_dir: Path, steps: int, threads: int) -> dict:
    """One mode's figures, in this (fresh) process."""
    import torch

    from hone_kernel.trainer_contract import Hyperparameters
    from trainer.batches import step_indices
    from trainer.blobs import FolderBlobs
    from trainer.loop import Run
    from trainer.quantization import base_weight_bytes

    torch.set_num_threads(threads)
    gpu = torch.cuda.is_available()
    root = Path(tempfile.mkdtemp())
    (root / "data").mkdir()
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    rows = [
        {
            "messages": [
                {"role": "user", "content": " ".join(words[(i + k) % len(words)] for k in range(40))},
                {"role": "assistant", "content": " ".join(words[(i * k) % len(words)] for k in range(12))},
            ]
        }
        for i in range(64)
    ]
    (root / "data/train.jsonl").write_bytes(_jsonl(rows))
    hp = Hyperparameters(
        n_epochs=1,
        batch_size=4,
        learning_rate=1e-4,
        tuning_mode=mode,
        compute_dtype="bfloat16" if gpu else "float32",
    )
    run = Run(spec_for(root, str(model_dir), "data/train.jsonl", hp), FolderBlobs(root), Recorder(), root / "work")
    (root / "work").mkdir()
    run._setup()
    frozen = [(n, p) for n, p in run.model.named_parameters() if "lora_" not in n]
    # the base as GPU trainers load it: bf16 where unquantized (a 4-bit tensor's bytes stay what they are)
    bf16 = base_weight_bytes(run.model) - sum(
        p.numel() * (p.element_size() - 2) for _, p in frozen if p.dtype == torch.float32
    )
    n = len(run.train)
    run._train_step(0)  # warm-up: allocator, kernels, optimizer state
    if gpu:
        torch.cuda.synchronize()
    start, tokens = time.perf_counter(), 0
    for step in range(1, steps + 1):
        run._train_step(step)
        tokens += sum(len(run.train[i].input_ids) for i in step_indices(n, 4, 0, step))
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # What training holds once loading's transient copies are gone (the peak is usually loading's: transformers
    # reads the float32 checkpoint whole before quantizing it)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    steady = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    return {
        "mode": mode,
        "parameters": sum(p.numel() for _, p in frozen if p.dtype != torch.uint8)
        + sum(torch.Size(p.quant_state.shape).numel() for _, p in frozen if p.dtype == torch.uint8),
        "base_weight_bytes": base_weight_bytes(run.model),
        "base_weight_bytes_bf16": bf16,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steady_rss_mib": steady,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "tokens_per_s": tokens / seconds,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
    }


def memory_part(steps: int, threads: int) -> list[dict]:
    build_model(MODELS / "qlora-llama")
    results = []
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--steps", str(steps), "--threads", str(threads)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode != 0 or not lines:
            print(f"  {mode}: failed (exit {out.returncode}): {out.stderr[-2000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1]))
        print(f"  {mode}: {results[-1]}", flush=True)
    return results


# --- 2. accuracy on the tickets, hone-tiny --------------------------------------------------------------------------


def accuracy_part(threads: int) -> dict:
    import torch
    from peft import PeftModel

    from examples.tasks import tickets
    from hone_kernel.trainer_contract import Hyperparameters, Reinforcement
    from service import training_plan
    from service.base_models import TINY_DEFAULTS
    from service.deploy.parity import agreement
    from service.settings import Settings
    from trainer import rft
    from trainer.blobs import FolderBlobs
    from trainer.loop import Run
    from trainer.modeling import load_base

    torch.set_num_threads(threads)
    settings = Settings()
    train, held_out = tickets()
    root = Path(tempfile.mkdtemp(prefix="qlora-acc-"))
    (root / "data").mkdir()
    (root / "data/train.jsonl").write_bytes(_jsonl(train))
    shape = training_plan.DatasetShape(len(train), len(_jsonl(train)) / len(train) / TINY_DEFAULTS.bytes_per_token)
    lines = [json.dumps({"messages": r["messages"][:-1]}).encode() for r in held_out]
    truth = [r["messages"][-1]["content"] for r in held_out]
    greedy = Reinforcement(grader={}, temperature=0.0, max_completion_tokens=16)
    out: dict = {}

    def answers(model, tokenizer, stop_ids) -> list[str]:
        prompts, _ = rft.tokenize_prompts(tokenizer, lines, 2048)
        return rft.sample(model, tokenizer, prompts, 1, greedy, stop_ids, 0).texts

    for mode in ("lora", "qlora"):
        method = {"type": "supervised", "supervised": {"hyperparameters": {"tuning_mode": mode}}}
        resolved = training_plan.resolve_hyperparameters(
            method, shape, TINY_DEFAULTS, settings.training.train_max_length, on_gpu=torch.cuda.is_available()
        )
        ctx = SimpleNamespace(settings=settings)
        hp = Hyperparameters(**training_plan.trainer_hyperparameters(ctx, resolved, TINY_DEFAULTS))
        spec = spec_for(
            root,
            "builtin:hone-tiny",
            "data/train.jsonl",
            hp,
            job=mode,
            seed=7,
            max_length=resolved["supervised"]["hyperparameters"]["max_length"],
        )
        spec.model_name = "hone-tiny"  # spec_for names a model by its folder
        work = root / f"work-{mode}"
        work.mkdir()
        run = Run(spec, FolderBlobs(root), Recorder(), work)
        started = time.perf_counter()
        assert run.execute() == 0, f"{mode} run failed"
        seconds = time.perf_counter() - started
        stop_ids = json.loads(run.serving_files["hone_serving.json"])["stop_token_ids"]
        trained = answers(run.model, run.tokenizer, stop_ids)
        # as served: the published adapter on the full-precision base
        base, tokenizer = load_base("hone-tiny", "builtin:hone-tiny", str(MODELS))
        served_model = PeftModel.from_pretrained(base, root / f"jobs/{mode}/adapter")
        served = answers(served_model, tokenizer, stop_ids)
        out[mode] = {
            "steps": run.total_steps,
            "epochs": hp.n_epochs,
            "batch_size": hp.batch_size,
            "seconds": round(seconds, 1),
            "trained_accuracy": 100 * sum(a == t for a, t in zip(trained, truth)) / len(truth),
            "served_accuracy": 100 * sum(a == t for a, t in zip(served, truth)) / len(truth),
            "same_answers": 100 * sum(a == b for a, b in zip(trained, served)) / len(truth),
            "mean_agreement": sum(agreement(a, b) for a, b in zip(trained, served)) / len(truth),
            "min_agreement": min(agreement(a, b) for a, b in zip(trained, served)),
        }
        print(f"  {mode}: {out[mode]}", flush=True)
    # what the gate sees when the adapter is served on the wrong base, or not at all (the plain base's answers)
    plain = answers(load_base("hone-tiny", "builtin:hone-tiny", str(MODELS))[0], tokenizer, stop_ids)
    out["no_adapter_mean_agreement"] = sum(agreement(a, b) for a, b in zip(trained, plain)) / len(truth)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per mode (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: 1 if the machine is busy)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    busy = os.getloadavg()[0] > 1.0
    threads = args.threads or (1 if busy else os.cpu_count() or 1)
    if args.child:
        print(json.dumps(child(args.child, MODELS / "qlora-llama", args.steps, threads)))
        return
    started = time.perf_counter()
    load = f"others were running: load average {os.getloadavg()[0]:.1f}" if busy else "idle machine"
    print(
        f"QLoRA benchmark, {date.today()}, {platform.machine()} {os.cpu_count()} cores, {git_revision('trainer')}; "
        f"torch threads {threads} ({load}, OMP_WAIT_POLICY=PASSIVE)",
        flush=True,
    )
    memory = [] if args.skip_memory else memory_part(args.steps, threads)
    accuracy = {} if args.skip_accuracy else accuracy_part(threads)
    report(memory, accuracy)
    print(f"({time.perf_counter() - started:.0f} s in all)")


def report(memory: list[dict], accuracy: dict) -> None:
    if memory:
        params = memory[0]["parameters"]
        print(f"\n1. {params / 1e6:.0f}M-parameter Llama ({memory[0]['device']}):")
        print(
            f"   {'mode':6} {'base weights':>14} {'(bf16 base)':>12} {'peak RSS':>10} {'steady RSS':>11} "
            f"{'CUDA peak':>10} {'tokens/s':>9}"
        )
        for r in memory:
            cuda = f"{r['cuda_peak_mib']:.0f} MiB" if r["cuda_peak_mib"] is not None else "-"
            print(
                f"   {r['mode']:6} {r['base_weight_bytes'] / 2**20:10.0f} MiB {r['base_weight_bytes_bf16'] / 2**20:8.0f}"
                f" MiB {r['peak_rss_mib']:6.0f} MiB {r['steady_rss_mib']:7.0f} MiB {cuda:>10} {r['tokens_per_s']:9.1f}"
            )
        print(
            "   (peak RSS: loading's, which reads the float32 checkpoint whole before quantizing; steady: after the"
            " timed steps, LoRA's and full's including their memory-mapped float32 weights)"
        )
        by = {r["mode"]: r for r in memory}
        if "lora" in by and "qlora" in by:
            ratio = by["qlora"]["base_weight_bytes_bf16"] / by["lora"]["base_weight_bytes_bf16"]
            ratio_here = by["qlora"]["base_weight_bytes"] / by["lora"]["base_weight_bytes"]
            verdict = "PASS" if ratio <= MEMORY_GOAL else "MISS"
            print(
                f"   {verdict}: QLoRA base-weight memory {ratio:.3f}x LoRA's bf16 base (goal <= {MEMORY_GOAL}); "
                f"{ratio_here:.3f}x the float32 base LoRA trains over on this machine"
            )
    if accuracy:
        print("\n2. Tickets, hone-tiny, 72 held-out (greedy, exact label):")
        for mode in ("lora", "qlora"):
            a = accuracy[mode]
            print(
                f"   {mode:6} served {a['served_accuracy']:5.1f}%  as trained {a['trained_accuracy']:5.1f}%  "
                f"({a['steps']} steps: {a['epochs']} epochs of batch {a['batch_size']}, {a['seconds']} s)"
            )
        q = accuracy["qlora"]
        gap = accuracy["lora"]["served_accuracy"] - q["served_accuracy"]
        verdict = "PASS" if abs(gap) <= ACCURACY_GOAL else "MISS"
        print(f"   {verdict}: QLoRA (served) {gap:+.1f} points below LoRA (goal within {ACCURACY_GOAL:.0f})")
        print(
            f"   parity, QLoRA: quantized training path vs full-precision serving path: {q['same_answers']:.1f}% "
            f"identical answers, agreement mean {q['mean_agreement']:.3f}, min {q['min_agreement']:.3f}; "
            f"the same adapter's answers vs the base without it: {accuracy['no_adapter_mean_agreement']:.3f}"
        )


if __name__ == "__main__":
    main()
