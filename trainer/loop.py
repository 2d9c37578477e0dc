"""One training run: load, (resume,) train step by step, report, checkpoint, publish the result."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import signal
import time
from pathlib import Path

import torch

from hone_kernel.trainer_contract import COMPLETE, FAIL, Completion, ExitCode, Failure, TrainSpec
from hone_kernel.trainer_contract import message as message_of
from trainer import checkpoints, distill, dpo, inputs, outputs, quantization, rft, schedule, startup, vision_parity
from trainer.batches import micro_batches, step_indices, steps_per_epoch
from trainer.blobs import Blobs
from trainer.data import Example
from trainer.distributed import PreferenceMargins, PreferenceStep, SupervisedStep, whole
from trainer.failures import Diverged, FatalError
from trainer.flops import live_figures, peak_flops
from trainer.modeling import ModelLoadError, device, load_base, pixels_of, save_inputs, tunable
from trainer.reporting import Reporter, main_thread
from trainer.wandb_log import WandbLog
from trainer.world import World

log = logging.getLogger("hone.trainer")


class Run:
    def __init__(self, spec: TrainSpec, blobs: Blobs, reporter: Reporter, workdir: Path, world: World | None = None):
        self.spec, self.blobs, self.reporter, self.workdir = spec, blobs, reporter, workdir
        self.world = world or World()  # data-parallel ranks (trainer/distributed.py); rank 0 reports and publishes
        self.stop_requested = False
        # opens its run at the first step, if the job has one (rank 0's only)
        self.wandb = WandbLog(
            spec if self.world.main else dataclasses.replace(spec, integrations=[]), reporter, workdir
        )

    def request_stop(self, *_):
        self.stop_requested = True

    # --- setup --------------------------------------------------------------------------

    def _setup(self):
        spec = self.spec
        if spec.method not in ("supervised", "dpo", "reinforcement", "distillation"):
            raise FatalError("unsupported_method", f"The '{spec.method}' method is not supported by this trainer.")
        if spec.method == "dpo" and spec.hyperparameters.tuning_mode not in ("lora", "qlora"):
            raise FatalError("unsupported_method", "DPO trains a LoRA adapter; use tuning_mode 'lora' or 'qlora'.")
        if self.world.parallel and spec.method not in ("supervised", "distillation", "dpo"):
            raise FatalError("unsupported_method", f"The {spec.method} method trains in one process only.")
        try:
            base, self.tokenizer = load_base(
                spec.model_name, spec.model_source, spec.model_cache_dir, spec.hyperparameters
            )
        except ModelLoadError as exc:
            raise FatalError("model_not_found", str(exc)) from exc
        startup.mark("model")
        if spec.distillation is not None:  # the teacher's answers first: the student trains on them
            if self.world.main:
                distill.use_teacher_answers(spec, self.blobs, self.reporter)
            else:  # rank 0 asks the teacher once for the run
                distill.await_teacher_answers(spec, self.blobs)
        self.train = inputs.items_of(
            spec, self.tokenizer, self.blobs, self.reporter, spec.training_file, "training file"
        )
        self.valid = (
            inputs.items_of(spec, self.tokenizer, self.blobs, self.reporter, spec.validation_file, "validation file")
            if spec.validation_file
            else []
        )
        startup.mark("data")
        torch.manual_seed(spec.seed)
        self._flops_shape = (
            quantization.parameter_count(base),  # a 4-bit weight counts as the one it stands for
            getattr(base.config.get_text_config(), "num_hidden_layers", 0),  # a vision model's language model's
            getattr(base.config.get_text_config(), "hidden_size", 0),
        )
        run_on = device()
        self.peak_flops = peak_flops(torch.cuda.get_device_name(run_on) if run_on.type == "cuda" else None)
        try:  # a continued job starts from its parent's weights (its own checkpoints, in _resume, come after)
            self.model = tunable(
                base,
                spec.hyperparameters,
                self.blobs,
                spec.init_weights_prefix,
                self.workdir,
                lora_vision_tower=spec.lora_vision_tower,
            )
        except ModelLoadError as exc:
            raise FatalError("model_not_found", str(exc)) from exc
        startup.mark("wrap")
        self.reference = (
            dpo.Reference.of(self.model, self.train + self.valid, spec.token_budget, self.tokenizer.pad_token_id)
            if spec.method == "dpo"
            else None
        )
        hp = spec.hyperparameters
        # full weights are sharded over the ranks (FSDP), adapters replicated (DDP): trainer/distributed.py
        self.supervised = SupervisedStep(
            self.model, self.world, shard_weights=hp.tuning_mode == "full", trains=self.reference is None
        )
        self.preference = (
            PreferenceStep(
                PreferenceMargins(self.model, hp.beta, spec.token_budget, self.tokenizer.pad_token_id, self.reference),
                self.world,
            )
            if self.reference is not None
            else None
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        self.per_epoch = steps_per_epoch(len(self.train), hp.batch_size)
        self.total_steps = self.per_epoch * hp.n_epochs
        warmup = schedule.warmup_steps(self.total_steps, hp.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: schedule.lr_factor(step, self.total_steps, warmup, hp.lr_scheduler)
        )
        self.eval_interval = spec.eval_interval or max(1, self.total_steps // 10)
        self.step, self.trained_tokens, self.rows = 0, 0, []
        self.serving_files = outputs.serving_files(self.spec, self.tokenizer, self.model, self.blobs)
        self.reinforce = (
            rft.Reinforce(spec, self.tokenizer, self.model, self.trainable, outputs.stop_token_ids(self.serving_files))
            if spec.method == "reinforcement"
            else None
        )
        startup.mark("setup")

    def _resume(self) -> None:
        step = checkpoints.latest_step(self.blobs, self.spec.output_prefix)
        if step is None:
            return
        folder = checkpoints.load(self.blobs, self.spec.output_prefix, self.workdir, step)
        state = torch.load(folder / checkpoints.STATE, weights_only=False)
        if self.supervised.sharded:
            self.supervised.load_sharded(checkpoints.full_weights(folder), self.optimizer, state["optimizer"])
        else:
            checkpoints.load_weights(self.model, folder, self.spec.hyperparameters.tuning_mode)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        random.setstate(state["rng_python"])
        self.step, self.trained_tokens, self.rows = state["step"], state["trained_tokens"], state["rows"]
        self.reporter.event(
            f"Resumed from checkpoint at step {self.step} (attempt {self.spec.attempt})",
            key=f"resumed:{self.spec.attempt}",
            data={"step": self.step, "attempt": self.spec.attempt},
        )

    # --- steps ----------------------------------------------------------------------------

    def _layout(self, examples: list[Example]):
        return micro_batches(
            examples,
            packing=self.spec.packing,
            token_budget=self.spec.token_budget,
            pad_id=self.tokenizer.pad_token_id,
            pixels=pixels_of(self.tokenizer),
        )

    def _train_step(self, step: int) -> dict:
        hp = self.spec.hyperparameters
        batch = [self.train[i] for i in step_indices(len(self.train), hp.batch_size, self.spec.seed, step)]
        if self.reinforce is not None:
            metrics, tokens = self.reinforce.train_step(self.model, batch, step)
            if not math.isfinite(metrics["train_loss"]):
                raise Diverged("training loss", metrics["train_loss"])
            self._optimizer_step()
            self.trained_tokens += tokens
            return metrics
        if self.preference is not None:  # DPO
            self.model.train()
            mine = self.world.shard(batch)  # a rank without a pair joins the sync with one, weighted 0
            metrics = self.preference.run(mine or batch[:1], len(batch), 1.0 if mine else 0.0)
            if not math.isfinite(metrics["train_loss"]):
                raise Diverged("training loss", metrics["train_loss"])
            self._optimizer_step()
            self.trained_tokens += sum(len(ex.input_ids) for pair in batch for ex in pair)
            return metrics
        mine = self.world.shard(batch)  # all of it in one process
        # A rank with no example this step (a batch smaller than the world) still joins the gradient sync
        mbs = self._layout(mine or batch[:1])
        self.model.train()
        loss_total, correct_total, targets = self.supervised.run(
            mbs, sum(mb.targets for mb in mbs) if mine else 0, 1.0 if mine else 0.0
        )
        if not math.isfinite(loss_total):  # before the optimizer step: the weights are still the last good ones
            raise Diverged("training loss", loss_total)
        self._optimizer_step()
        self.trained_tokens += sum(len(ex.input_ids) for ex in batch)
        return {"train_loss": loss_total / targets, "train_mean_token_accuracy": correct_total / targets}

    def _optimizer_step(self) -> None:
        norm = whole(torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.hyperparameters.max_grad_norm))
        if not torch.isfinite(norm):  # clipping cannot mend inf/NaN gradients; stepping would poison the weights
            raise Diverged("gradient norm", float(norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _validation(self, examples: list, prefix: str) -> dict:
        """`{prefix}_loss` and `{prefix}_mean_token_accuracy`, or a reinforcement job's `{prefix}_reward_mean`."""
        if self.reinforce is not None:
            return self.reinforce.validate(self.model, examples, prefix, self.step)
        loss, accuracy = self.evaluate(examples)
        return {f"{prefix}_loss": loss, f"{prefix}_mean_token_accuracy": accuracy}

    @torch.no_grad()
    def evaluate(self, examples: list) -> tuple[float, float]:
        """(loss, accuracy) on validation items: mean token loss, or DPO loss and preference accuracy."""
        self.model.eval()
        if self.spec.method == "dpo":
            return dpo.evaluate(
                self.model,
                examples,
                self.spec.hyperparameters.beta,
                self.spec.token_budget,
                self.tokenizer.pad_token_id,
                self.reference,
            )
        loss_total, correct_total, targets = 0.0, 0, 0
        for start in range(0, len(examples), 64):
            for mb in self._layout(examples[start : start + 64]):
                loss, correct = self.supervised.sums(self.model, mb)
                loss_total += float(loss)
                correct_total += int(correct)
                targets += mb.targets
        return loss_total / targets, correct_total / targets

    def _metrics(self, step: int, train: dict) -> dict:
        data = {"step": step, "total_steps": self.total_steps, **train}
        # A reinforcement run is followed by its reward; every other method by its loss.
        figure = "reward_mean" if self.reinforce is not None else "loss"
        words = "reward mean" if self.reinforce is not None else "loss"
        message = f"Step {step}/{self.total_steps}: training {words}={train['train_' + figure]:.2f}"
        evaluates = self.valid and self.supervised.evaluates_here
        if evaluates and (step % self.eval_interval == 0 or step == self.total_steps):
            data.update(self._validation(self.valid[: self.spec.eval_examples], "valid"))
            message += f", validation {words}={data['valid_' + figure]:.2f}"
        if evaluates and step == self.total_steps:
            data.update(self._validation(self.valid, "full_valid"))
            message += f", full validation {words}={data['full_valid_' + figure]:.2f}"
        self.reporter.event(message, type="metrics", data=data, key=f"step:{step}")
        self.wandb.log(step, data, self.rows)
        return data

    def _checkpoint(self, metrics: dict) -> None:
        # sharded: every rank gathers the weights and optimizer state whole onto rank 0
        weights, optimizer = self.supervised.full_weights(), self.supervised.optimizer_state(self.optimizer)
        if not self.world.main:  # rank 0's checkpoint is the run's
            return
        state = {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "rng_python": random.getstate(),
            "step": self.step,
            "trained_tokens": self.trained_tokens,
            "rows": self.rows,
        }
        saved = checkpoints.save(
            self.blobs,
            self.spec.output_prefix,
            self.workdir,
            self.step,
            self.model,
            state,
            tokenizer=self.tokenizer,
            extra_files=vision_parity.serving_files(self.spec, self.model, self.tokenizer, self.serving_files),
            weights=weights,
        )
        shutil.rmtree(saved.local, ignore_errors=True)
        keep = {k: v for k, v in metrics.items() if k != "total_steps"}
        self.reporter.checkpoint(self.step, keep, saved.prefix)

    # --- result ---------------------------------------------------------------------------

    def _publish(self, weights: dict | None) -> str:
        local = self.workdir / "adapter"
        shutil.rmtree(local, ignore_errors=True)
        self.model.save_pretrained(local, safe_serialization=True, state_dict=weights)
        save_inputs(self.tokenizer, local)
        for name, text in vision_parity.serving_files(
            self.spec, self.model, self.tokenizer, self.serving_files
        ).items():
            (local / name).write_text(text)
        prefix = self.spec.output_prefix + "adapter/"
        self.blobs.upload_dir(local, prefix, last="hone_serving.json")
        self.blobs.put_bytes(self.spec.output_prefix + "result.csv", outputs.result_csv(self.rows))
        self.wandb.finish(self.blobs, self.rows)
        return prefix

    # --- the run ------------------------------------------------------------------------------

    def _should_quit(self) -> bool:
        return self.reporter.superseded or self.reporter.job_status in ("cancelled", "failed", "succeeded")

    def _diverged(self, step: int, exc: Diverged) -> int:
        lr = self.spec.hyperparameters.learning_rate
        message = (
            f"Training diverged at step {step} of {self.total_steps}: {exc}. Lower the learning rate: "
            f"try a smaller learning_rate_multiplier (this run's learning rate was {lr:g})."
        )
        log.error(message)
        self.reporter.call(FAIL, message_of(Failure("training_diverged", message)))
        return ExitCode.FATAL

    def execute(self) -> int:
        # busy(): sections whose torch work or I/O counts as alive for the heartbeat (trainer/reporting.py)
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
                data={"startup_ms": startup.durations_ms()},  # where the time to here went, by phase
            )
        started, first_step = time.monotonic(), self.step
        last_metrics: dict = {}
        while self.step < self.total_steps:
            # every rank stops at the same step: a SIGTERM may reach them a step apart
            quit_run, stop = self.world.any(self._should_quit(), self.stop_requested)
            if quit_run:
                return ExitCode.SUPERSEDED
            if stop:
                if not last_metrics:
                    return ExitCode.STOPPED  # nothing new since the last checkpoint
                with main_thread.busy():
                    self._checkpoint(last_metrics)
                self.reporter.flush()
                return ExitCode.STOPPED
            tokens_before, step_started = self.trained_tokens, time.perf_counter()
            try:
                with main_thread.busy():
                    train = self._train_step(self.step)
            except Diverged as exc:
                return self._diverged(self.step + 1, exc)
            step_seconds = time.perf_counter() - step_started
            self.step += 1
            if self.step == first_step + 1:
                startup.mark("first_step")
            with main_thread.busy():  # validation, at eval points
                last_metrics = self._metrics(self.step, train)
            if self.step == first_step + 1:
                log.info(
                    "first training step done",
                    extra={"startup_ms": startup.durations_ms(), "started_at": startup.started_at()},
                )
            self.rows.append(outputs.result_row(self.step, last_metrics))
            per_step = (time.monotonic() - started) / (self.step - first_step)
            figures = live_figures(
                self.step,
                self.total_steps,
                last_metrics,
                step_seconds,
                self.trained_tokens - tokens_before,
                self.spec.hyperparameters,
                self._flops_shape,
                # the run's peak: every rank's device works on the step's tokens
                self.peak_flops * self.world.size if self.peak_flops else None,
            )
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
            weights = self.supervised.full_weights()  # sharded: gathered onto rank 0 by all ranks
        if not self.world.main:  # rank 0 publishes and completes the run
            return ExitCode.OK
        with main_thread.busy():
            adapter_prefix = self._publish(weights)
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
