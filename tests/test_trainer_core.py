"""The trainer's data and math, in process: loss masks per format, packing, reproducibility, continued pre-training.

These call `trainer.loop.Run` directly on a folder of blobs. The control-plane channel is replaced by a
recorder (the HTTP path is covered end to end in test_training.py); model and data are real."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from hone_kernel.tiny_model import build
from hone_kernel.trainer_contract import ExitCode, FileRef, Hyperparameters, TrainSpec
from tests.support import MODEL_CACHE, chat_line
from trainer.blobs import FolderBlobs
from trainer.data import encode_row
from trainer.loop import Run
from trainer.modeling import load_base


class RecordingReporter:
    superseded = False
    job_status = "running"

    def __init__(self):
        self.events, self.checkpoints, self.calls = [], [], []

    def event(self, message, *, level="info", type="message", data=None, key=None):
        self.events.append({"message": message, "level": level, "type": type, "data": data})

    def checkpoint(self, step, metrics, prefix):
        self.checkpoints.append(step)

    def progress(self, **fields):
        pass

    def flush(self, timeout=None):
        return True

    def call(self, path, body):
        self.calls.append((path, body))
        return {"status": "succeeded"}

    def losses(self) -> list[float]:
        return [e["data"]["train_loss"] for e in self.events if e["type"] == "metrics"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build(MODEL_CACHE / "hone-tiny"))


def run_training(
    tmp_path: Path,
    rows: list[dict],
    fmt: str,
    *,
    seed: int = 1,
    packing: bool = True,
    epochs: int = 3,
    batch_size: int = 4,
    lr: float = 5e-3,
    max_length: int = 2048,
    valid_rows: list[dict] | None = None,
    method: str = "supervised",
    tuning_mode: str = "lora",
    model: str = "hone-tiny",
) -> tuple[Run, RecordingReporter]:
    blobs_root = tmp_path / "blobs"
    (blobs_root / "files").mkdir(parents=True, exist_ok=True)
    (blobs_root / "files" / "train").write_text("".join(json.dumps(r) + "\n" for r in rows))
    valid = None
    if valid_rows:
        (blobs_root / "files" / "valid").write_text("".join(json.dumps(r) + "\n" for r in valid_rows))
        valid = FileRef("files/valid", fmt)
    spec = TrainSpec(
        job_id="ftjob-core",
        fine_tuned_model=f"ft:{model}:p::ftjob-core",
        model_name=model,
        model_source=f"builtin:{model}",
        model_cache_dir=str(MODEL_CACHE),
        storage_url=blobs_root.as_uri(),
        training_file=FileRef("files/train", fmt),
        validation_file=valid,
        method=method,
        seed=seed,
        output_prefix="jobs/ftjob-core/",
        callback_url="http://unused",
        token="unused",
        packing=packing,
        max_length=max_length,
        hyperparameters=Hyperparameters(
            n_epochs=epochs, batch_size=batch_size, learning_rate=lr, tuning_mode=tuning_mode
        ),
    )
    work = tmp_path / f"work-{random.random()}"
    work.mkdir()
    reporter = RecordingReporter()
    run = Run(spec, FolderBlobs(blobs_root), reporter, work)
    assert run.execute() == ExitCode.OK, reporter.events
    return run, reporter


def trained_text(tokenizer, row: dict, fmt: str) -> str:
    example = encode_row(tokenizer, row, fmt)
    return tokenizer.decode([t for t, keep in zip(example.input_ids, example.loss_mask) if keep])


def test_loss_covers_only_what_each_format_teaches(tokenizer):
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 0},
            {"role": "user", "content": "Sum?"},
            {"role": "assistant", "content": "Four"},
        ]
    }
    assert trained_text(tokenizer, chat, "openai_chat") == "Four<|im_end|>\n"
    pc = {"prompt": "Capital of France:", "completion": " Paris"}
    assert trained_text(tokenizer, pc, "prompt_completion") == " Paris<|end_of_text|>"
    assert trained_text(tokenizer, {"text": "plain words"}, "raw_text") == "plain words<|end_of_text|>"
    assert trained_text(tokenizer, {"instruction": "Add", "input": "2 2", "output": "4"}, "pairs") == "4<|im_end|>\n"
    assert trained_text(tokenizer, {"input_text": "q", "output_text": "a"}, "vertex_legacy") == "a<|im_end|>\n"
    gemini = {
        "systemInstruction": {"parts": [{"text": "sys"}]},
        "contents": [{"role": "user", "parts": [{"text": "q"}]}, {"role": "model", "parts": [{"text": "a"}]}],
    }
    assert trained_text(tokenizer, gemini, "vertex_gemini") == "a<|im_end|>\n"
    full = tokenizer.decode(encode_row(tokenizer, gemini, "vertex_gemini").input_ids)
    assert full.startswith("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nq")


FORMAT_ROWS = {
    "openai_chat": lambda i: chat_line(f"What is {i} plus {i}?", f"It is {2 * i}."),
    "prompt_completion": lambda i: {"prompt": f"{i} plus {i} is", "completion": f" {2 * i}"},
    "vertex_gemini": lambda i: {
        "contents": [
            {"role": "user", "parts": [{"text": f"Double {i}"}]},
            {"role": "model", "parts": [{"text": str(2 * i)}]},
        ]
    },
    "vertex_legacy": lambda i: {"input_text": f"Double {i}", "output_text": str(2 * i)},
    "pairs": lambda i: {"instruction": "Double the number", "input": str(i), "output": str(2 * i)},
    "raw_text": lambda i: {"text": f"The number {i} doubled is {2 * i}, and that is all."},
}


@pytest.mark.parametrize("fmt", sorted(FORMAT_ROWS))
def test_every_supervised_format_trains(tmp_path, fmt):
    rows = [FORMAT_ROWS[fmt](i) for i in range(16)]
    run, reporter = run_training(tmp_path, rows, fmt)
    losses = reporter.losses()
    assert len(losses) == 12  # 16 examples / 4 per step x 3 epochs
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert reporter.checkpoints == [4, 8, 12]
    assert (tmp_path / "blobs/jobs/ftjob-core/adapter/adapter_model.safetensors").exists()
    [(path, body)] = reporter.calls
    assert path == "/complete" and body["trained_tokens"] == 3 * sum(
        len(encode_row(run.tokenizer, r, fmt).input_ids) for r in rows
    )


def test_packed_and_unpacked_training_give_the_same_losses(tmp_path):
    rows = [
        chat_line("word " * random.Random(i).randint(1, 60), "answer " * random.Random(-i).randint(1, 9))
        for i in range(24)
    ]
    _, packed = run_training(tmp_path / "packed", rows, "openai_chat", packing=True, epochs=1)
    _, padded = run_training(tmp_path / "padded", rows, "openai_chat", packing=False, epochs=1)
    assert packed.losses() == pytest.approx(padded.losses(), rel=1e-3)
    assert packed.losses()[0] != packed.losses()[-1]


def test_same_seed_same_losses_other_seed_other_order(tmp_path):
    rows = [FORMAT_ROWS["openai_chat"](i) for i in range(16)]
    _, first = run_training(tmp_path / "a", rows, "openai_chat", seed=5, epochs=1)
    _, again = run_training(tmp_path / "b", rows, "openai_chat", seed=5, epochs=1)
    _, other = run_training(tmp_path / "c", rows, "openai_chat", seed=6, epochs=1)
    assert first.losses() == again.losses()
    assert first.losses() != other.losses()


def test_truncation_is_reported_with_a_count(tmp_path):
    rows = [chat_line("long " * 80, "ok") for _ in range(3)] + [chat_line("short", "fine") for _ in range(9)]
    _, reporter = run_training(tmp_path, rows, "openai_chat", max_length=64, epochs=1)
    [warning] = [e for e in reporter.events if e["level"] == "warn"]
    assert warning["data"] == {"truncated": 3, "dropped": 3}  # cut before the answer: nothing left to learn
    assert "3 training file example(s) were longer than 64 tokens" in warning["message"]


def test_continued_pretraining_lowers_held_out_perplexity(tmp_path):
    rng = random.Random(3)
    subjects, verbs, objects = (
        ["The cat", "A dog", "My team", "The server"],
        ["sees", "likes", "moves"],
        ["the ball", "a report", "the data", "our plan"],
    )
    sentence = lambda: f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."  # noqa: E731
    train = [{"text": " ".join(sentence() for _ in range(6))} for _ in range(48)]
    held_out = [{"text": " ".join(sentence() for _ in range(6))} for _ in range(8)]
    run, _ = run_training(tmp_path, train, "raw_text", epochs=2, batch_size=8, valid_rows=held_out)
    tuned_loss, _ = run.evaluate(run.valid)
    base, _ = load_base("hone-tiny", "builtin:hone-tiny", str(MODEL_CACHE))
    run.model = base
    base_loss, _ = run.evaluate(run.valid)
    assert math.exp(tuned_loss) < 0.5 * math.exp(base_loss), (math.exp(tuned_loss), math.exp(base_loss))
    assert torch.isfinite(torch.tensor(tuned_loss))


def test_dpo_learns_to_prefer_the_preferred_answers(tmp_path):
    def pair(i):
        return {
            "input": {"messages": [{"role": "user", "content": f"Question number {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": "Thanks for asking, here it is."}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        }

    rows = [pair(i) for i in range(16)]
    run, reporter = run_training(
        tmp_path,
        rows,
        "openai_preference",
        method="dpo",
        epochs=3,
        lr=2e-3,
        valid_rows=[pair(100 + i) for i in range(4)],
    )
    steps = [e["data"] for e in reporter.events if e["type"] == "metrics"]
    assert steps[0]["train_loss"] == pytest.approx(math.log(2), abs=0.05)  # policy == reference at the start
    assert steps[-1]["train_loss"] < 0.5 and steps[-1]["train_mean_token_accuracy"] == 1.0
    assert steps[-1]["full_valid_loss"] < 0.5 and steps[-1]["full_valid_mean_token_accuracy"] == 1.0
    assert reporter.calls[0][0] == "/complete"


def test_full_fine_tuning_trains_every_weight_and_resumes(tmp_path):
    rows = [FORMAT_ROWS["openai_chat"](i) for i in range(16)]
    run, reporter = run_training(tmp_path, rows, "openai_chat", tuning_mode="full", lr=1e-3, epochs=2)
    losses = reporter.losses()
    assert losses[-1] < 0.7 * losses[0], losses
    saved = tmp_path / "blobs/jobs/ftjob-core/adapter"
    assert (saved / "model.safetensors").exists() and not (saved / "adapter_config.json").exists()
    assert json.loads((saved / "hone_serving.json").read_text())["tuning_mode"] == "full"
    # A fresh run over the same storage picks up the last checkpoint (step 8) and has nothing left to do.
    again, reporter_again = run_training(tmp_path, rows, "openai_chat", tuning_mode="full", lr=1e-3, epochs=2)
    assert again.step == 8 and reporter_again.losses() == []
    assert [e["message"] for e in reporter_again.events][0] == "Resumed from checkpoint at step 8 (attempt 1)"


def test_mfu_counts_lora_and_full_tuning_flops_and_needs_a_known_peak():
    from trainer.flops import flops_per_token, mfu, peak_flops

    lora = flops_per_token(1_000_000, 4, 64, 128, full=False)
    full = flops_per_token(1_000_000, 4, 64, 128, full=True)
    assert lora == 4_000_000 + 4 * 4 * 64 * 128 and full - lora == 2_000_000  # weight gradients only when full
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12
    assert peak_flops(None) is None and peak_flops("Some CPU") is None
    assert mfu(1000.0, lora, None) is None  # no MFU where the peak is unknown (CPU trainers)
    assert abs(mfu(100_000.0, 6e9, 989e12) - 100_000 * 6e9 / 989e12) < 1e-12


def test_the_plan_event_and_first_step_line_say_where_start_up_went(tmp_path, caplog):
    """trainer/startup.py, as `python -m trainer` runs it: each phase once, in order, adding up to the total."""
    import logging
    import time

    from trainer import startup

    began = time.time()
    startup.begin()
    with caplog.at_level(logging.INFO, logger="hone.trainer"):
        _, reporter = run_training(tmp_path, [FORMAT_ROWS["openai_chat"](i) for i in range(8)], "openai_chat", epochs=1)
    elapsed_ms = (time.time() - began) * 1000
    [plan] = [e for e in reporter.events if e["message"].startswith("Training ")]
    phases = plan["data"]["startup_ms"]
    assert list(phases) == ["process", "model", "data", "wrap", "setup", "total"]  # in-process: no spec or imports
    assert min(phases.values()) >= 0 and phases["model"] > 0
    # each phase rounded to the ms on its own
    assert sum(phases.values()) - phases["total"] == pytest.approx(phases["total"], abs=len(phases))
    assert phases["total"] - phases["process"] <= elapsed_ms + 1  # the process started before this test
    [line] = [r for r in caplog.records if r.getMessage() == "first training step done"]
    first = line.startup_ms  # type: ignore[attr-defined]
    assert {k: first[k] for k in phases if k != "total"} == {k: v for k, v in phases.items() if k != "total"}
    assert first["first_step"] > 0 and first["total"] >= phases["total"] + first["first_step"] - 1  # rounding
    assert line.started_at <= began  # type: ignore[attr-defined]
