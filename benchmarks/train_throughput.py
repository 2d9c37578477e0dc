"""Trainer throughput: Hone's trainer against a plain transformers + peft padded-batch loop, same run.

    .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--batch-size 8] [--threads 2]
    .venv/bin/python benchmarks/train_throughput.py --mfu      # on a GPU: LoRA MFU, 1B Llama config, bf16

Both sides train the same LoRA (rank 16, every projection) on the same model, a Llama a few times larger
than hone-tiny, over the same examples (lengths log-uniform between about 16 and 750 tokens), in the same
order, each in its own process so peak memory is its own. Hone's side is the real trainer loop
(`trainer.loop.Run`), reading a dataset file from a storage folder; the baseline pads each batch to its
longest example and calls the model with `labels=`. transformers' Trainer with its packing collator
(DataCollatorWithFlattening) runs too, as the off-the-shelf alternative to a hand-written loop. Also measured: submit -> first training step with
hone-tiny through the real server (`python -m service` and `python -m trainer`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# About 4x hone-tiny's parameters.
BENCH_ARCH = dict(
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def build_bench_model(folder: Path, arch: dict | None = None) -> Path:
    """A randomly initialised Llama of `arch` (default BENCH_ARCH) with hone-tiny's tokenizer, built once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hone_kernel.tiny_model import build_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(arch or BENCH_ARCH),
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_dataset(path: Path, n: int, seed: int = 0) -> None:
    """Chat rows whose token lengths spread log-uniformly from ~16 to ~750."""
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    with open(path, "w") as fh:
        for _ in range(n):
            total = int(math.exp(rng.uniform(math.log(6), math.log(300))))  # words; ~2.5 tokens each
            answer = max(4, total // 4)
            row = {
                "messages": [
                    {"role": "user", "content": " ".join(rng.choice(words) for _ in range(total - answer))},
                    {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(answer))},
                ]
            }
            fh.write(json.dumps(row) + "\n")


# --- the two contenders, each run in its own process -------------------------------------


class _TimingReporter:
    """Stands in for the control plane: records when each step was reported."""

    superseded, job_status = False, "running"

    def __init__(self):
        self.step_times: list[float] = []

    def event(self, message, *, type="message", **_):
        if type == "metrics":
            self.step_times.append(time.perf_counter())

    def checkpoint(self, *a):
        pass

    def progress(self, **k):
        pass

    def flush(self, timeout=None):
        return True

    def call(self, path, body):
        return {"status": "succeeded"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_hone(model_dir: Path, data: Path, steps: int, batch_size: int) -> dict:
    from hone_kernel.trainer_contract import FileRef, Hyperparameters, TrainSpec
    from trainer.batches import step_indices
    from trainer.blobs import FolderBlobs
    from trainer.loop import Run

    root = data.parent
    spec = TrainSpec(
        job_id="ftjob-bench",
        fine_tuned_model="ft:bench",
        model_name="bench",
        model_source=str(model_dir),
        model_cache_dir=str(root),
        storage_url=root.as_uri(),
        training_file=FileRef(data.name, "openai_chat"),
        validation_file=None,
        method="supervised",
        seed=0,
        output_prefix="jobs/bench/",
        callback_url="http://unused",
        token="unused",
        hyperparameters=Hyperparameters(n_epochs=1, batch_size=batch_size, learning_rate=1e-4),
    )
    reporter = _TimingReporter()
    with tempfile.TemporaryDirectory() as work:
        run = Run(spec, FolderBlobs(root), reporter, Path(work))
        run._setup()
        n = len(run.train)
        loaded = _rss_mb()
        run.total_steps = steps
        start = time.perf_counter()
        tokens = 0
        for step in range(steps):
            run._train_step(step)
            tokens += sum(len(run.train[i].input_ids) for i in step_indices(n, batch_size, 0, step))
        elapsed = time.perf_counter() - start
    return {"tokens": tokens, "seconds": elapsed, "peak_rss_mb": _rss_mb(), "loaded_rss_mb": loaded}


def run_padded(model_dir: Path, data: Path, steps: int, batch_size: int) -> dict:
    """The usual loop: pad to the longest example, full logits, the model's own loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.batches import step_indices
    from trainer.data import tokenize_lines

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = tokenize_lines(tokenizer, open(data, "rb"), "openai_chat", 2048).examples
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loaded = _rss_mb()
    model.train()
    start = time.perf_counter()
    tokens = 0
    for step in range(steps):
        batch = [examples[i] for i in step_indices(len(examples), batch_size, 0, step)]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[row, : len(e.input_ids)] = torch.tensor([t if m else -100 for t, m in zip(e.input_ids, e.loss_mask)])
            mask[row, : len(e.input_ids)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(len(e.input_ids) for e in batch)
    elapsed = time.perf_counter() - start
    return {"tokens": tokens, "seconds": elapsed, "peak_rss_mb": _rss_mb(), "loaded_rss_mb": loaded}


def run_hf_trainer(model_dir: Path, data: Path, steps: int, batch_size: int) -> dict:
    """transformers' Trainer with its own packing collator (DataCollatorWithFlattening), same examples and order."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from trainer.batches import step_indices
    from trainer.data import tokenize_lines

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = tokenize_lines(tokenizer, open(data, "rb"), "openai_chat", 2048).examples
    ordered = [examples[i] for step in range(steps) for i in step_indices(len(examples), batch_size, 0, step)]
    dataset = [
        {"input_ids": e.input_ids, "labels": [t if m else -100 for t, m in zip(e.input_ids, e.loss_mask)]}
        for e in ordered
    ]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    loaded = _rss_mb()
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            marks.append(time.perf_counter()) if not marks else None

        def on_step_end(self, *a, **k):
            marks[1:] = [time.perf_counter()]

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            save_strategy="no",
            report_to=[],
            logging_strategy="no",
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        InOrder(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorWithFlattening(),
            callbacks=[Clock()],
        ).train()
    return {
        "tokens": sum(len(e.input_ids) for e in ordered),
        "seconds": marks[1] - marks[0],
        "peak_rss_mb": _rss_mb(),
        "loaded_rss_mb": loaded,
    }


# --- submit -> first step ----------------------------------------------------------------------


def first_step_latency() -> float:
    from tests.support import HoneServer, chat_dataset

    with tempfile.TemporaryDirectory() as tmp:
        server = HoneServer(Path(tmp) / "srv", {"HONE_LOCAL_SLOTS": "1", "HONE_TRAINER_THREADS": "0"})
        try:
            client = server.new_project("bench").openai()
            train = client.files.create(file=("t.jsonl", chat_dataset(20)), purpose="fine-tune")
            start = time.perf_counter()
            job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=train.id)
            while True:
                events = client.fine_tuning.jobs.list_events(job.id, limit=5).data
                if any(e.type == "metrics" for e in events):
                    return time.perf_counter() - start
                if time.perf_counter() - start > 120:
                    raise RuntimeError("no training step within 120 s")
                time.sleep(0.05)
        finally:
            server.stop()


# --- MFU on a GPU ----------------------------------------------------------------------------------


MFU_VARIANTS = ("eager", "compile", "liger")


def lora_mfu(steps: int = 20, seq: int = 2048, batch: int = 8, variant: str = "eager", dry_run: bool = False) -> dict:
    """LoRA on a randomly initialised 1B Llama configuration in bf16, through the trainer's loss (loss_sums: the
    head only on target positions). FLOPs per token: forward 2N, backward through activations 2N (frozen weights
    get no gradient), plus attention; peak: dense bf16 of the GPU. Variants: `eager`; `compile`, each decoder
    layer through torch.compile; `liger`, Liger's fused RMSNorm, SwiGLU and RoPE kernels patched into the Llama
    classes (liger-kernel installed). `dry_run`: a tiny configuration on the CPU, to check the code paths."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.batches import MicroBatch
    from trainer.flops import flops_per_token, mfu, peak_flops
    from trainer.modeling import loss_sums

    if not torch.cuda.is_available() and not dry_run:
        raise SystemExit("--mfu needs a CUDA GPU")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dims = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32)
    if dry_run:
        dims = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
        steps, seq, batch = 2, 64, 2
    if variant == "liger":  # patches the Llama classes: before the model is built
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False)
    config = LlamaConfig(
        **dims, num_key_value_heads=dims["num_attention_heads"] // 4, vocab_size=32000, max_position_embeddings=seq
    )
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if dev == "cuda" else torch.float32)
    config._attn_implementation = "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    if variant == "compile":
        for layer in model.get_decoder().layers:
            layer.compile()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mb = MicroBatch(ids, ids.clone(), torch.arange(seq).expand(batch, seq).clone(), None, batch * seq)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 3):
        if i == 3:  # after warm-up (and compilation)
            sync()
            start = time.perf_counter()
        loss, _ = loss_sums(model, mb)
        (loss / mb.targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    tokens_s = steps * batch * seq / (time.perf_counter() - start)
    per_token = flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, seq, full=False)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    peak = float(os.environ["HONE_PEAK_TFLOPS"]) * 1e12 if "HONE_PEAK_TFLOPS" in os.environ else peak_flops(name)
    return {
        "variant": variant,
        "params": n_params,
        "tokens_per_s": round(tokens_s, 1),
        "mfu": mfu(tokens_s, per_token, peak or 989e12),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev == "cuda" else None,
        "device": name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mfu", action="store_true")
    parser.add_argument(
        "--variants",
        default="eager,compile",
        help=f"with --mfu: which of {', '.join(MFU_VARIANTS)} to measure, each in its own process",
    )
    parser.add_argument("--variant", choices=MFU_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="with --mfu: a tiny model on the CPU (code paths only)")
    parser.add_argument("--run", choices=["hone", "padded", "hf-trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.mfu and args.variant:
        print(json.dumps(lora_mfu(variant=args.variant, dry_run=args.dry_run)))
        return
    if args.mfu:  # each variant in its own process: Liger patches classes, compilation caches stay behind
        for variant in args.variants.split(","):
            command = [sys.executable, __file__, "--mfu", "--variant", variant] + (
                ["--dry-run"] if args.dry_run else []
            )
            out = subprocess.run(command, capture_output=True, text=True)
            line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None
            print(line or json.dumps({"variant": variant, "failed": out.stderr.strip().splitlines()[-1:]}))
        return
    if args.run:
        import torch

        torch.set_num_threads(args.threads)
        fn = {"hone": run_hone, "padded": run_padded, "hf-trainer": run_hf_trainer}[args.run]
        print(json.dumps(fn(args.model_dir, args.data, args.steps, args.batch_size)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_bench_model(tmp / "bench-model")
        data = tmp / "train.jsonl"
        write_dataset(data, args.steps * args.batch_size)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
        results = {}
        for name in ("padded", "hf-trainer", "hone"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--run",
                    name,
                    "--model-dir",
                    str(model_dir),
                    "--data",
                    str(data),
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--threads",
                    str(args.threads),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"model: Llama {BENCH_ARCH['num_hidden_layers']} layers x {BENCH_ARCH['hidden_size']} hidden; "
        f"{args.steps} steps of {args.batch_size} examples, {args.threads} threads"
    )
    print(f"{'loop':<22}{'tokens/s':>10}{'peak RSS MB':>13}{'RSS over model MB':>19}")
    for name, label in (
        ("padded", "transformers+peft pad"),
        ("hf-trainer", "HF Trainer, flattening"),
        ("hone", "hone trainer"),
    ):
        r = results[name]
        print(
            f"{label:<22}{r['tokens'] / r['seconds']:>10.0f}{r['peak_rss_mb']:>13.0f}"
            f"{r['peak_rss_mb'] - r['loaded_rss_mb']:>19.0f}"
        )
    speed = (results["hone"]["tokens"] / results["hone"]["seconds"]) / (
        results["padded"]["tokens"] / results["padded"]["seconds"]
    )
    mem = (results["hone"]["peak_rss_mb"] - results["hone"]["loaded_rss_mb"]) / max(
        1.0, results["padded"]["peak_rss_mb"] - results["padded"]["loaded_rss_mb"]
    )
    print(f"throughput ratio hone/padded: {speed:.2f}x (goal >= 1.5x)")
    hf = results["hf-trainer"]
    print(
        f"throughput ratio hone/HF Trainer: "
        f"{(results['hone']['tokens'] / results['hone']['seconds']) / (hf['tokens'] / hf['seconds']):.2f}x"
    )
    print(f"working-memory ratio hone/padded: {mem:.2f}x")
    print(f"submit -> first training step (hone-tiny, real server): {first_step_latency():.1f} s (goal <= 10 s)")


if __name__ == "__main__":
    main()
