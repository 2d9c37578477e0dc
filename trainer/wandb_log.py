"""A job's `wandb` integration: its Weights & Biases run, with the figures of the trainer's metrics events.

Online when the control plane put the project's W&B key in the spec, else offline into the workdir; the
offline run folder is then packed and published beside result.csv, and the control plane lists it in the
job's result files (`wandb sync` uploads it later). The run's id is the job id and it is resumed, so a
resumed attempt continues the same run; steps it replays are not logged twice. W&B is a side channel: any
failure of it (package missing, network, auth) is a warning event and training goes on without it."""

from __future__ import annotations

import logging
import math
import queue
import tarfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hone_kernel.trainer_contract import QUANT_FIELDS, TrainSpec

if TYPE_CHECKING:
    from wandb import Run

log = logging.getLogger("hone.trainer.wandb")

ARCHIVE = "wandb-offline-run.tar.gz"  # under the job's output prefix; the control plane looks for this name
INIT_TIMEOUT_S = 60.0
FINISH_TIMEOUT_S = 120.0  # an online run uploading into a dead network must not hold the job's result back
NOT_FIGURES = {"step", "total_steps"}


def wandb_settings(spec: TrainSpec) -> dict | None:
    """The job's wandb integration ({project, name, entity, tags}), or None when it has none."""
    for item in spec.integrations or []:
        if item.get("type") == "wandb":
            return item.get("wandb") or {}
    return None


def _figures(metrics: dict) -> dict:
    return {
        k: v
        for k, v in metrics.items()
        if k not in NOT_FIGURES and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _row_figures(row: dict) -> dict:
    """A result.csv row (restored from a checkpoint) as the metrics event of its step named it."""
    figures = {("train_mean_token_accuracy" if k == "train_accuracy" else k): v for k, v in row.items()}
    return {k: v for k, v in _figures(figures).items() if not (isinstance(v, float) and math.isnan(v))}


def _no_analytics() -> None:
    """Turns off the SDK's own usage telemetry (OpenTelemetry to the W&B server): a trainer sends W&B the run
    and nothing else, and its exit never waits on a telemetry flush to a slow or unreachable server."""
    try:
        from wandb.analytics.opentelemetry.opentelemetry_proxy import disable
    except ImportError:  # another wandb release: nothing of the kind to turn off
        return
    disable()


class WandbLog:
    """The trainer's side: `log` each step, `finish` once. W&B's calls run on a thread of their own, so a step
    costs the trainer a queue put, and opening the run (a network round trip online) never delays a step."""

    def __init__(self, spec: TrainSpec, reporter, workdir: Path):
        self.spec, self.reporter, self.workdir = spec, reporter, workdir
        self.settings = wandb_settings(spec)
        self.off = self.settings is None  # no integration, or W&B failed: nothing more to do
        self.run: Run | None = None
        self.next_step = 0  # the first step not yet in the run
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # (step, figures), then None: the end
        self._worker: threading.Thread | None = None

    @property
    def online(self) -> bool:
        return bool(self.spec.wandb_api_key)

    # --- what the trainer calls ---------------------------------------------------------------

    def log(self, step: int, metrics: dict, rows: list[dict]) -> None:
        """Logs one step's figures (the data of its metrics event). The first call opens the run and adds
        the steps before it that a resumed attempt restored from its checkpoint (`rows`) and W&B lacks."""
        if self.off:
            return
        self._start(rows, before=step)
        self._queue.put((step, _figures(metrics)))

    def finish(self, blobs, rows: list[dict]) -> None:
        """Records the fine-tuned model's name, ends the run and, offline, publishes the packed run folder."""
        if self.off:
            return
        self._start(rows, before=None)  # a resumed attempt with no step left to train opens the run here
        self._queue.put(None)
        assert self._worker is not None  # _start made it
        self._worker.join(INIT_TIMEOUT_S + FINISH_TIMEOUT_S)
        if self._worker.is_alive():
            self._give_up("W&B did not answer in time", None, stop_service=False)
        if self.off:
            return
        try:
            assert self.run is not None  # not off: the run opened
            self.run.summary["fine_tuned_model"] = self.spec.fine_tuned_model
            self.run.config.update({"fine_tuned_model": self.spec.fine_tuned_model}, allow_val_change=True)
            run_dir = Path(self.run.settings.sync_dir)
            if not self._end():
                self._give_up(f"the run did not finish within {FINISH_TIMEOUT_S:g}s", None, stop_service=False)
                return
            if not self.online:
                archive = self.workdir / ARCHIVE
                with tarfile.open(archive, "w:gz") as tar:
                    # Links point outside the run (W&B's service log in ~/.cache): not the run's to publish.
                    tar.add(run_dir, arcname=run_dir.name, filter=lambda m: None if m.issym() or m.islnk() else m)
                blobs.put_file(self.spec.output_prefix + ARCHIVE, archive)
        except Exception as exc:  # noqa: BLE001 - whatever W&B raises, the job's result stands
            self._give_up("finishing the run failed", exc)
        self.off = True

    # --- the logging thread ------------------------------------------------------------------------

    def _start(self, rows: list[dict], before: int | None) -> None:
        if self._worker is None:
            backlog = [(r["step"], _row_figures(r)) for r in rows if before is None or r["step"] < before]
            self._worker = threading.Thread(target=self._work, args=(backlog,), name="wandb", daemon=True)
            self._worker.start()

    def _work(self, backlog: list[tuple[int, dict]]) -> None:
        try:
            self._open()
            for step, figures in backlog:
                self._log(step, figures)
            while (item := self._queue.get()) is not None:
                self._log(*item)
        except BaseException as exc:  # noqa: BLE001 - an uncaught exception in a thread ends the trainer
            self._give_up("logging failed", exc)

    # --- the run ---------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            import wandb  # only jobs with the integration import it (or need it installed)
        except ImportError as exc:
            raise RuntimeError("the wandb package is not installed in the trainer's environment") from exc
        _no_analytics()
        spec, s = self.spec, self.settings
        assert s is not None  # not off: the job has the integration
        extra: dict[str, Any] = {"api_key": spec.wandb_api_key} if self.online else {}
        if self.online and spec.wandb_base_url:
            extra["base_url"] = spec.wandb_base_url
        # No console capture (the trainer's log is JSON lines), no system-metrics sampler, nothing read from
        # git or the environment's packages: the run holds the job, and each step costs one message.
        settings = wandb.Settings(
            silent=True,
            console="off",
            x_disable_stats=True,
            x_disable_machine_info=True,
            x_save_requirements=False,
            disable_git=True,
            disable_code=True,
            init_timeout=INIT_TIMEOUT_S,
            root_dir=str(self.workdir),
            **extra,
        )
        mode: Literal["online", "offline"] = "online" if self.online else "offline"
        self.run = run = wandb.init(
            mode=mode,
            dir=str(self.workdir),
            project=s.get("project"),
            entity=s.get("entity"),
            name=s.get("name") or spec.job_id,
            tags=s.get("tags") or None,
            id=spec.job_id,
            resume="allow",
            config=self._config(),
            settings=settings,
        )
        self.next_step = run.step  # a resumed online run: one past the last step W&B already has
        where = f"{s['entity']}/{s.get('project')}" if s.get("entity") else s.get("project")
        if self.online:
            message = f"Logging to Weights & Biases online: project {where}, run {run.name} ({run.url})"
        else:
            message = (
                f"Logging to Weights & Biases offline (no W&B key is configured for this project): project "
                f"{where}, run {run.name}; the run is added to the job's result files as {ARCHIVE}"
            )
        self.reporter.event(
            message,
            key=f"wandb:{spec.attempt}",
            data={
                "wandb": {
                    "mode": mode,
                    "project": s.get("project"),
                    "entity": s.get("entity"),
                    "run_id": spec.job_id,
                    "name": run.name,
                    "attempt": spec.attempt,
                }
            },
        )

    def _log(self, step: int, figures: dict) -> None:
        if step < self.next_step:
            return  # already in the run: a resumed attempt replays the steps after its checkpoint
        assert self.run is not None  # _open came first
        self.run.log(figures, step=step)
        self.next_step = step + 1

    def _config(self) -> dict:
        spec = self.spec
        # The resolved hyperparameters, less the dataclass defaults that do not apply to this job
        hyperparameters = {
            k: v
            for k, v in asdict(spec.hyperparameters).items()
            if not (k == "beta" and spec.method != "dpo")
            and not (k.startswith("lora_") and spec.hyperparameters.tuning_mode not in ("lora", "qlora"))
            and not (k in QUANT_FIELDS and spec.hyperparameters.tuning_mode != "qlora")
        }
        return {
            "job_id": spec.job_id,
            "base_model": spec.model_name,
            "method": spec.method,
            "hyperparameters": hyperparameters,
            "seed": spec.seed,
            "training_file": spec.training_file.key,
            "validation_file": spec.validation_file.key if spec.validation_file else None,
            "max_length": spec.max_length,
            "packing": spec.packing,
        }

    def _end(self) -> bool:
        """Finishes the run and stops W&B's service process, within FINISH_TIMEOUT_S."""
        import wandb

        failed: list[BaseException] = []

        def end():
            try:
                self.run.finish()
                wandb.teardown()
            except BaseException as exc:  # noqa: BLE001 - an uncaught exception in a thread ends the trainer
                failed.append(exc)

        ender = threading.Thread(target=end, name="wandb-finish", daemon=True)
        ender.start()
        ender.join(FINISH_TIMEOUT_S)
        if failed:
            raise failed[0]
        return not ender.is_alive()

    def _give_up(self, what: str, exc: BaseException | None, stop_service: bool = True) -> None:
        self.off = True
        detail = f"{what}: {exc}" if exc is not None else what
        if self.spec.wandb_api_key:
            detail = detail.replace(self.spec.wandb_api_key, "***")
        log.warning("wandb: %s", detail)
        self.reporter.event(
            f"Weights & Biases logging stopped ({detail}); the job goes on without it.",
            level="warn",
            key=f"wandb-failed:{self.spec.attempt}",
        )
        if stop_service:
            try:
                import wandb

                wandb.teardown(exit_code=1)
            except Exception:  # noqa: BLE001 - W&B's service process also exits with the trainer
                pass
