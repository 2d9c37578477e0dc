"""FAKE `trainer.loop` (see tests/fake_trainer/__init__.py): `Run` and `install_stop_handler` with the real loop's
interface and control flow (setup failures, resume from the latest committed checkpoint, per-step metrics events
and live figures, checkpoints per epoch / interval / SIGTERM, the published adapter and result.csv, `/complete`),
over a fake model: no torch, a step is a sleep and a deterministic loss."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy
import safetensors.numpy

from hone_kernel import tiny_model
from hone_kernel.trainer_contract import COMPLETE, FAIL, Completion, ExitCode, Failure, TrainSpec
from hone_kernel.trainer_contract import message as message_of
from trainer import checkpoints, outputs
from trainer.blobs import Blobs
from trainer.reporting import Reporter, main_thread
from trainer.wandb_log import WandbLog

log = logging.getLogger("hone.trainer")
STEP_S = float(os.environ.get("FAKE_TRAINER_STEP_S", "0.05"))  # how long a fake step takes
FAKE = "fake trainer (tests/fake_trainer): not a model"


class FatalError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def fake_loss(seed: int, step: int, offset: float = 0.0) -> float:
    """Decreasing with the step, and a pure function of (seed, step): a replayed step reports the same loss."""
    return round(2.5 * 0.97**step + 0.01 * ((seed * 31 + step * 17) % 7) + offset, 6)


class Run:
    def __init__(self, spec: TrainSpec, blobs: Blobs, reporter: Reporter, workdir: Path, world=None):
        # world: the real Run's data-parallel place (trainer/world.py); the fake trains in one process only
        self.spec, self.blobs, self.reporter, self.workdir = spec, blobs, reporter, workdir
        self.stop_requested = False
        self.wandb = WandbLog(spec, reporter, workdir)

    def request_stop(self, *_):
        self.stop_requested = True

    # --- setup: what the real trainer refuses before training, without loading anything ------------------

    def _tokens(self, ref, what: str) -> list[int]:
        """Per example, its "tokens" (the words of its line): the fake's stand-in for tokenizing."""
        if (ref.format == "openai_preference") != (self.spec.method == "dpo"):
            raise FatalError(
                "unsupported_method",
                f"The {what} is in the {ref.format} format, which the {self.spec.method} method does not train on.",
            )
        tokens = [len(line.split()) for line in self.blobs.iter_lines(ref.key) if line.strip()]
        if not tokens:
            raise FatalError(f"invalid_{what.replace(' ', '_')}", f"The {what} has no example with trained tokens.")
        return tokens

    def _setup(self) -> None:
        spec = self.spec
        if spec.method not in ("supervised", "dpo", "reinforcement"):  # reinforcement: prompts, fake steps alike
            raise FatalError("unsupported_method", f"The '{spec.method}' method is not supported by this trainer.")
        source = spec.model_source
        known = (source == f"builtin:{tiny_model.TINY_MODEL}") or Path(source).is_dir()
        if not known:
            raise FatalError(
                "model_not_found",
                f"Base model {spec.model_name!r} could not be loaded from "
                f"{source!r}: {FAKE} loads only built-in models and local folders",
            )
        self.train = self._tokens(spec.training_file, "training file")
        self.valid = self._tokens(spec.validation_file, "validation file") if spec.validation_file else []
        hp = spec.hyperparameters
        self.per_epoch = math.ceil(len(self.train) / hp.batch_size)  # trainer.batches.steps_per_epoch
        self.total_steps = self.per_epoch * hp.n_epochs
        self.eval_interval = spec.eval_interval or max(1, self.total_steps // 10)
        self.step, self.trained_tokens, self.rows = 0, 0, []

    def _resume(self) -> None:
        step = checkpoints.latest_step(self.blobs, self.spec.output_prefix)
        if step is None:
            return
        folder = checkpoints.load(self.blobs, self.spec.output_prefix, self.workdir, step)
        state = json.loads((folder / checkpoints.STATE).read_text())
        self.step, self.trained_tokens, self.rows = state["step"], state["trained_tokens"], state["rows"]
        self.reporter.event(
            f"Resumed from checkpoint at step {self.step} (attempt {self.spec.attempt})",
            key=f"resumed:{self.spec.attempt}",
            data={"step": self.step, "attempt": self.spec.attempt},
        )

    # --- steps ----------------------------------------------------------------------------------------

    def _train_step(self, step: int) -> dict:
        hp = self.spec.hyperparameters
        time.sleep(STEP_S)
        within = step % self.per_epoch
        batch = self.train[within * hp.batch_size : (within + 1) * hp.batch_size]
        self.trained_tokens += sum(batch)
        loss = fake_loss(self.spec.seed, step + 1)
        metrics = {"train_loss": loss, "train_mean_token_accuracy": round(1 / (1 + loss), 6)}
        if self.spec.method == "dpo":
            metrics["train_reward_margin"] = round(1 - loss / 3, 6)
        return metrics

    def _metrics(self, step: int, train: dict) -> dict:
        data = {"step": step, "total_steps": self.total_steps, **train}
        message = f"Step {step}/{self.total_steps}: training loss={train['train_loss']:.2f}"
        if self.valid and (step % self.eval_interval == 0 or step == self.total_steps):
            data["valid_loss"] = fake_loss(self.spec.seed, step, 0.1)
            data["valid_mean_token_accuracy"] = round(1 / (1 + data["valid_loss"]), 6)
            message += f", validation loss={data['valid_loss']:.2f}"
        if self.valid and step == self.total_steps:
            data["full_valid_loss"] = fake_loss(self.spec.seed, step, 0.2)
            data["full_valid_mean_token_accuracy"] = round(1 / (1 + data["full_valid_loss"]), 6)
            message += f", full validation loss={data['full_valid_loss']:.2f}"
        self.reporter.event(message, type="metrics", data=data, key=f"step:{step}")
        self.wandb.log(step, data, self.rows)
        return data

    def _live_figures(self, metrics: dict, step_seconds: float, step_tokens: int) -> dict:
        figures = {
            "step": self.step,
            "total_steps": self.total_steps,
            "step_seconds": round(step_seconds, 6),
            "tokens_per_second": round(step_tokens / step_seconds, 3) if step_seconds > 0 else 0.0,
            "step_at": round(time.time(), 3),
        }
        for key in ("train_loss", "valid_loss"):
            if isinstance(metrics.get(key), float):
                figures[key] = metrics[key]
        return figures  # no `mfu`: the real trainer reports it only on a GPU of known peak

    # --- storage: the real layout, stand-ins for the weights (zeros under LoRA's names) ---------------------------------------

    def _fake_weights(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        hp = self.spec.hyperparameters
        # peft's names and vLLM's required fields, so that the FAKE engine (tests/fake_engine), which checks an
        # adapter as vLLM does, serves what the fake trains; the tensors are tiny zeros under LoRA's key names.
        config = {
            "fake": FAKE,
            "base_model": self.spec.model_name,
            "peft_type": "LORA",
            "r": hp.lora_rank,
            "lora_alpha": hp.lora_alpha,
            "target_modules": list(hp.lora_target_modules),
        }
        (folder / "adapter_config.json").write_text(json.dumps(config))
        tensors = {
            f"base_model.model.model.layers.0.self_attn.{module}.lora_{half}.weight": numpy.zeros((1, 1), "float32")
            for module in hp.lora_target_modules
            for half in "AB"
        }
        safetensors.numpy.save_file(tensors, str(folder / "adapter_model.safetensors"))
        # No rows to replay: the fake tokenizes nothing, so the parity gate has nothing to compare (the gate
        # itself is tested on what the real trainer publishes).
        (folder / "parity_samples.json").write_text(json.dumps({"fake": FAKE, "samples": []}))
        (folder / "hone_serving.json").write_text(
            json.dumps(
                {
                    "fake": FAKE,
                    "base_model": self.spec.model_name,
                    "tuning_mode": self.spec.hyperparameters.tuning_mode,
                    "max_length": self.spec.max_length,
                }
            )
        )

    def _checkpoint(self, metrics: dict) -> None:
        local = self.workdir / f"step-{self.step}"
        shutil.rmtree(local, ignore_errors=True)
        self._fake_weights(local)
        state = {"step": self.step, "trained_tokens": self.trained_tokens, "rows": self.rows}
        (local / checkpoints.STATE).write_text(json.dumps(state))  # JSON, not torch's pickle: only the fake reads it
        (local / checkpoints.MARKER).write_text(str(self.step))
        prefix = f"{self.spec.output_prefix}checkpoints/step-{self.step}/"
        self.blobs.upload_dir(local, prefix, last=checkpoints.MARKER)
        shutil.rmtree(local, ignore_errors=True)
        self.reporter.checkpoint(self.step, {k: v for k, v in metrics.items() if k != "total_steps"}, prefix)

    def _publish(self) -> str:
        local = self.workdir / "adapter"
        shutil.rmtree(local, ignore_errors=True)
        self._fake_weights(local)
        prefix = self.spec.output_prefix + "adapter/"
        self.blobs.upload_dir(local, prefix, last="hone_serving.json")
        self.blobs.put_bytes(self.spec.output_prefix + "result.csv", outputs.result_csv(self.rows))
        self.wandb.finish(self.blobs, self.rows)
        return prefix

    # --- the run: trainer/loop.py's Run.execute, step for step ----------------------------------------

    def _should_quit(self) -> bool:
        return self.reporter.superseded or self.reporter.job_status in ("cancelled", "failed", "succeeded")

    def execute(self) -> int:
        try:
            with main_thread.busy():
                self._setup()
        except FatalError as exc:
            self.reporter.call(FAIL, message_of(Failure(exc.code, exc.message)))
            return ExitCode.FATAL
        with main_thread.busy():
            self._resume()
        if self.step == 0:
            self.reporter.event(
                f"Training {self.total_steps} steps: {len(self.train)} examples, "
                f"{self.spec.hyperparameters.n_epochs} epoch(s), batch size "
                f"{self.spec.hyperparameters.batch_size}",
                key="plan",
            )
        started, first_step = time.monotonic(), self.step
        last_metrics: dict = {}
        while self.step < self.total_steps:
            if self._should_quit():
                return ExitCode.SUPERSEDED
            if self.stop_requested:
                if not last_metrics:
                    return ExitCode.STOPPED
                with main_thread.busy():
                    self._checkpoint(last_metrics)
                self.reporter.flush()
                return ExitCode.STOPPED
            tokens_before, step_started = self.trained_tokens, time.perf_counter()
            with main_thread.busy():
                train = self._train_step(self.step)
            step_seconds = time.perf_counter() - step_started
            self.step += 1
            # a log that grows step by step, in the real trainer's JSON lines
            log.info(
                "fake step", extra={"step": self.step, "total_steps": self.total_steps, "loss": train["train_loss"]}
            )
            with main_thread.busy():
                last_metrics = self._metrics(self.step, train)
            self.rows.append(
                {
                    "step": self.step,
                    "train_loss": train["train_loss"],
                    "train_accuracy": train["train_mean_token_accuracy"],
                    **{k: v for k, v in last_metrics.items() if k.startswith(("valid", "full_valid"))},
                }
            )
            per_step = (time.monotonic() - started) / (self.step - first_step)
            figures = self._live_figures(last_metrics, step_seconds, self.trained_tokens - tokens_before)
            self.reporter.progress(
                trained_tokens=self.trained_tokens,
                estimated_finish=int(time.time() + per_step * (self.total_steps - self.step)),
                **figures,
            )
            interval = self.spec.checkpoint_interval_steps
            if self.step % self.per_epoch == 0 or (interval and self.step % interval == 0):
                with main_thread.busy():
                    self._checkpoint(last_metrics)
                last_metrics = {}
        with main_thread.busy():
            adapter_prefix = self._publish()
        final = self.rows[-1] if self.rows else {}
        reply = self.reporter.call(
            COMPLETE,
            message_of(
                Completion(
                    trained_tokens=self.trained_tokens,
                    adapter_prefix=adapter_prefix,
                    result_key=self.spec.output_prefix + "result.csv",
                    metrics={
                        k: v for k, v in final.items() if v is not None and not (isinstance(v, float) and math.isnan(v))
                    },
                )
            ),
        )
        return ExitCode.OK if reply.get("status") == "succeeded" else ExitCode.SUPERSEDED


def install_stop_handler(run: Run) -> None:
    signal.signal(signal.SIGTERM, run.request_stop)
    signal.signal(signal.SIGINT, run.request_stop)
