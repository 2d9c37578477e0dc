"""Hone's reinforcement fine-tuning against TRL's GRPOTrainer, same task, same start, settings matched.

    .venv/bin/pip install -e '.[bench]'                      # trl (and datasets, pandas, pyarrow); torch untouched
    .venv/bin/python benchmarks/rft_vs_trl.py                # 3 seeds
    .venv/bin/python benchmarks/rft_vs_trl.py --seeds 1

In-process, per seed:

1. the SFT start: hone-tiny tuned on the 40 labelled tickets of examples/tasks.py `small` through trainer.loop.Run,
   hyperparameters "auto" resolved as the service resolves them (service.training_plan with hone-tiny's defaults);
2. Hone's RFT from it: trainer.loop.Run, method "reinforcement" on the 288 `tickets` as prompts with a string_check
   of the label, every hyperparameter "auto" (service.reinforcement.trainer_section and the resolved method);
3. TRL's GRPOTrainer from the same SFT adapter (the same PeftModel, trainable; TRL keeps a frozen copy of it as
   the KL reference), with Hone's resolved settings mapped onto GRPOConfig (see `trl_config`);
4. each model's greedy answers to the 72 held-out tickets (the same prompts, stop tokens and decoding for all):
   accuracy is the share of exact labels.

Prints one table: accuracies, gains, seconds per optimizer step (median, and the part of it spent generating) and
each phase's peak RSS (see PeakRss; what importing trl and datasets adds is printed apart). The bar (PASS/MISS,
never a non-zero exit): RFT raises held-out accuracy by at least 15 points on every seed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.revision import git_revision
from examples.tasks import small, tickets
from hone_kernel.trainer_contract import FileRef, Hyperparameters, Reinforcement, TrainSpec
from service import reinforcement, training_plan
from service.base_models import TINY_DEFAULTS
from service.settings import Settings
from trainer import outputs, rft, schedule
from trainer.batches import steps_per_epoch
from trainer.blobs import open_blobs
from trainer.loop import Run
from trainer.modeling import load_base, tunable

GOAL_POINTS = 15.0
EVAL_TOKENS = 24  # a greedy held-out answer's length at most (labels are a few tokens)
GRADER = {
    "type": "string_check",
    "name": "label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}
SFT_ADAPTER = "jobs/sft/adapter/"


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class Recorder:
    """The trainer's reporter, in-process: keeps the metrics events and each step's seconds."""

    superseded, job_status = False, "running"

    def __init__(self):
        self.metrics: list[dict] = []
        self.step_seconds: list[float] = []

    def event(self, message, *, type="message", data=None, **_):
        if type == "metrics":
            self.metrics.append(data)

    def progress(self, **fields):
        self.step_seconds.append(fields["step_seconds"])

    def checkpoint(self, *_, **__):
        pass

    def flush(self, *_, **__):
        return True

    def call(self, path, body):
        return {"status": "succeeded"}


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


class PeakRss:
    """This process's peak resident memory while the block runs (sampled every 50 ms), in MiB. It starts from what
    is still alive (earlier phases' garbage collected and malloc's free memory given back), with trl and datasets
    already imported: a phase's figure is its own models and work, not what an earlier phase or seed left."""

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: the figure may include memory freed before
            pass
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while True:
            self.peak = max(self.peak, rss_mib())
            if self._stop.wait(0.05):
                return

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()


class Bench:
    def __init__(self, root: Path):
        self.root, self.settings = root, Settings()
        self.labelled, _ = small()
        self.tickets, self.held_out = tickets()
        self.prompts = [{"messages": r["messages"][:-1], "label": r["messages"][-1]["content"]} for r in self.tickets]
        (root / "data").mkdir(parents=True)
        (root / "data/sft.jsonl").write_bytes(_jsonl(self.labelled))
        (root / "data/rl.jsonl").write_bytes(_jsonl(self.prompts))
        self.blobs = open_blobs(f"file://{root}")

    def resolve(self, method: dict, rows: list[dict]) -> tuple[dict, Hyperparameters]:
        """The method with "auto" resolved, and the trainer's hyperparameters, as the service makes them."""
        # as DatasetShape.of reads an uploaded file: its lines, and its bytes as tokens
        shape = training_plan.DatasetShape(len(rows), len(_jsonl(rows)) / len(rows) / TINY_DEFAULTS.bytes_per_token)
        resolved = training_plan.resolve_hyperparameters(
            method, shape, TINY_DEFAULTS, self.settings.training.train_max_length
        )
        ctx = SimpleNamespace(settings=self.settings)
        return resolved, Hyperparameters(**training_plan.trainer_hyperparameters(ctx, resolved, TINY_DEFAULTS))

    def run(self, job: str, data: str, fmt: str, resolved: dict, hp: Hyperparameters, seed: int, **extra) -> Run:
        """A trainer.loop.Run with the spec's fields as service.training_plan.build_spec fills them."""
        t = self.settings.training
        spec = TrainSpec(
            job_id=job,
            fine_tuned_model=f"ft:hone-tiny::{job}",
            model_name="hone-tiny",
            model_source="builtin:hone-tiny",
            model_cache_dir=str(self.root.parent / "models"),
            storage_url=f"file://{self.root}",
            training_file=FileRef(data, fmt),
            validation_file=None,
            method=resolved["type"],
            hyperparameters=hp,
            seed=seed,
            output_prefix=f"jobs/{job}/",
            callback_url="http://127.0.0.1:9",
            token="t",
            max_length=resolved[resolved["type"]]["hyperparameters"]["max_length"],
            packing=t.train_packing,
            token_budget=t.train_token_budget,
            checkpoint_interval_steps=t.checkpoint_interval_steps,
            **extra,
        )
        return Run(spec, self.blobs, Recorder(), Path(tempfile.mkdtemp(dir=self.root)))

    def accuracy(self, model, tokenizer, stop_ids: list[int]) -> float:
        """Greedy answers to the held-out tickets, through trainer/rft.py's sampling (as RFT renders prompts)."""
        lines = [json.dumps({"messages": r["messages"][:-1]}).encode() for r in self.held_out]
        prompts, _ = rft.tokenize_prompts(tokenizer, lines, 2048)
        greedy = Reinforcement(grader=GRADER, temperature=0.0, max_completion_tokens=EVAL_TOKENS)
        texts = rft.sample(model, tokenizer, prompts, 1, greedy, stop_ids, 0).texts
        return sum(t == r["messages"][-1]["content"] for t, r in zip(texts, self.held_out)) / len(self.held_out)


def trl_config(hp: Hyperparameters, rl: Reinforcement, seed: int, out: str):
    """Hone's resolved RFT settings as GRPOConfig: one generation of batch_size prompts x samples_per_prompt answers
    per optimizer step, one update per generation (ratio 1: clipping inactive), token-level loss over the batch."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out,
        seed=seed,
        use_cpu=True,
        bf16=False,  # GRPOConfig's default is bf16; Hone trains in float32 on CPU
        gradient_checkpointing=False,  # GRPOConfig's default is on; Hone's loop does not checkpoint activations
        num_generations=rl.samples_per_prompt,
        per_device_train_batch_size=hp.batch_size * rl.samples_per_prompt,  # counted in answers, not prompts
        gradient_accumulation_steps=1,
        num_iterations=1,
        num_train_epochs=hp.n_epochs,
        learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        beta=rl.kl_beta,
        temperature=rl.temperature,
        top_p=1.0,
        top_k=0,
        max_completion_length=rl.max_completion_tokens,
        loss_type="dapo",  # sum over the step's answer tokens / their number, as Hone
        scale_rewards="group",
        mask_truncated_completions=False,  # Hone trains on cut answers too
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )


def run_trl(bench: Bench, seed: int, hp: Hyperparameters, rl: Reinforcement, stop_ids: list[int]) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    base, tokenizer = load_base("hone-tiny", "builtin:hone-tiny", str(bench.root.parent / "models"))
    model = tunable(base, hp, bench.blobs, SFT_ADAPTER, Path(tempfile.mkdtemp(dir=bench.root)))
    model.generation_config.eos_token_id = list(stop_ids)  # TRL stops at (and masks after) these
    decode = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}

    def exact_label(completion_ids, label, **_):  # decoded as Hone's sampling decodes (the stop token left out)
        texts = [tokenizer.decode(ids[:-1] if ids and ids[-1] in stop_ids else ids, **decode) for ids in completion_ids]
        return [float(t == want) for t, want in zip(texts, label)]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.started)

    timer = StepTimes()
    data = Dataset.from_list([{"prompt": p["messages"], "label": p["label"]} for p in bench.prompts])
    config = trl_config(hp, rl, seed, str(bench.root / "trl"))
    trainer = GRPOTrainer(
        model=model, reward_funcs=exact_label, args=config, train_dataset=data, processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(timer)
    generate, generation_s = trainer._generate_single_turn, []

    def timed_generation(*args, **kwargs):  # TRL's sampling, as Hone's "generation" phase
        started = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            generation_s.append(time.perf_counter() - started)

    trainer._generate_single_turn = timed_generation
    # Hone's schedule exactly (its warmup starts above 0; transformers' constant_with_warmup starts at 0)
    total = steps_per_epoch(len(bench.prompts), hp.batch_size) * hp.n_epochs
    warmup = schedule.warmup_steps(total, hp.warmup_ratio)
    trainer.create_optimizer()
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda s: schedule.lr_factor(s, total, warmup, hp.lr_scheduler)
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    model.set_adapter("default")
    return {
        "accuracy": bench.accuracy(model, tokenizer, stop_ids),
        "steps": trainer.state.global_step,
        "step_s": statistics.median(timer.seconds),
        "generation_s": statistics.median(generation_s),
        "rewards": [e["reward"] for e in logs],
        "kl": statistics.mean(e["kl"] for e in logs),
        "lr": [e["learning_rate"] for e in logs[:3]],  # Hone's warmup: (step + 1) / (warmup + 1) of the rate
    }


def quarters(values: list[float]) -> list[float]:
    q = max(1, len(values) // 4)
    return [round(statistics.mean(values[i : i + q]), 2) for i in range(0, len(values), q)]


def run_seed(bench: Bench, seed: int) -> dict:
    sft_method, sft_hp = bench.resolve({"type": "supervised"}, bench.labelled)
    with PeakRss() as sft_rss:
        sft = bench.run("sft", "data/sft.jsonl", "openai_chat", sft_method, sft_hp, seed)
        sft.execute()
    stop_ids = outputs.stop_token_ids(sft.serving_files)
    before = bench.accuracy(sft.model, sft.tokenizer, stop_ids)
    print(f"seed {seed}: SFT {before:.1%} ({sft_hp.n_epochs} epochs, batch {sft_hp.batch_size})", flush=True)
    del sft  # each phase's RSS below is its own model's, not the SFT run's left over

    method = {"type": "reinforcement", "reinforcement": {"grader": GRADER}}
    resolved, hp = bench.resolve(method, bench.prompts)
    rl = reinforcement.trainer_section(resolved, bench.settings.graders)
    with PeakRss() as hone_rss:
        hone = bench.run(
            "rl", "data/rl.jsonl", "openai_reinforcement", resolved, hp, seed,
            init_weights_prefix=SFT_ADAPTER, reinforcement=rl, eval_interval=reinforcement.eval_interval(resolved),
        )  # fmt: skip
        hone.execute()
    hone_after = bench.accuracy(hone.model, hone.tokenizer, outputs.stop_token_ids(hone.serving_files))
    metrics = hone.reporter.metrics  # type: ignore[attr-defined]
    phases = {p: statistics.median(m[f"{p}_seconds"] for m in metrics) for p in ("generation", "grading", "update")}
    hone_step = statistics.median(hone.reporter.step_seconds)  # type: ignore[attr-defined]
    print(
        f"seed {seed}: Hone RFT {hone_after:.1%}, {len(metrics)} steps, {hone_step:.2f} s/step (median: "
        + ", ".join(f"{p} {s:.2f}" for p, s in phases.items())
        + f"), reward by quarter {quarters([m['train_reward_mean'] for m in metrics])}, "
        f"KL mean {statistics.mean(m['train_kl'] for m in metrics):.4f}",
        flush=True,
    )
    del hone
    with PeakRss() as trl_rss:
        trl = run_trl(bench, seed, hp, rl, stop_ids)
    print(
        f"seed {seed}: TRL GRPO {trl['accuracy']:.1%}, {trl['steps']} steps, {trl['step_s']:.2f} s/step (median; generation "
        f"{trl['generation_s']:.2f}), "
        f"reward by quarter {quarters(trl['rewards'])}, KL mean {trl['kl']:.4f}, "
        f"learning rate logged at steps 1-3 {', '.join(f'{lr:.2g}' for lr in trl['lr'])}",
        flush=True,
    )
    return {
        "seed": seed,
        "sft": before,
        "hone": hone_after,
        "trl": trl["accuracy"],
        "hone_s": (hone_step, phases["generation"]),
        "trl_s": (trl["step_s"], trl["generation_s"]),
        "rss": (sft_rss.peak, hone_rss.peak, trl_rss.peak),
        "settings": (hp, rl),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    before = rss_mib()
    import datasets  # noqa: F401  (imported before any phase is measured: see PeakRss)
    import trl
    import trl.trainer.grpo_trainer  # noqa: F401

    imports = rss_mib() - before

    work = Path(tempfile.mkdtemp(prefix="hone-rft-vs-trl-"))
    results = [run_seed(Bench(work / f"seed{seed}"), seed) for seed in range(1, args.seeds + 1)]
    hp, rl = results[0]["settings"]
    print(
        f"\n{git_revision('trainer', 'service')}, trl {trl.__version__}, torch {torch.__version__}, "
        f"{platform.machine()} x{torch.get_num_threads()} threads. RFT: {hp.batch_size} prompts x "
        f"{rl.samples_per_prompt} answers a step, {hp.n_epochs} epochs, lr {hp.learning_rate:g} {hp.lr_scheduler} "
        f"(warmup {hp.warmup_ratio}), beta {rl.kl_beta}, temperature {rl.temperature}, "
        f"max {rl.max_completion_tokens} tokens. Importing trl and datasets: +{imports:.0f} MiB RSS\n"
    )
    print(
        "| seed | SFT | Hone RFT (gain) | TRL GRPO (gain) | s/step (generating): Hone, TRL | peak RSS MiB: SFT, Hone, TRL |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        gains = (100 * (r["hone"] - r["sft"]), 100 * (r["trl"] - r["sft"]))
        print(
            f"| {r['seed']} | {r['sft']:.1%} | {r['hone']:.1%} ({gains[0]:+.1f}) | {r['trl']:.1%} ({gains[1]:+.1f}) "
            f"| {r['hone_s'][0]:.2f} ({r['hone_s'][1]:.2f}), {r['trl_s'][0]:.2f} ({r['trl_s'][1]:.2f}) | {', '.join(f'{m:.0f}' for m in r['rss'])} |"
        )
    for name in ("hone", "trl"):
        gains = [100 * (r[name] - r["sft"]) for r in results]
        verdict = "PASS" if all(g >= GOAL_POINTS for g in gains) else "MISS"
        print(
            f"{name}: {verdict} (+{GOAL_POINTS:.0f} points on every seed): gains "
            + ", ".join(f"{g:+.1f}" for g in gains)
            + f", mean {statistics.mean(gains):+.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
