"""The local executor: one `python -m trainer` subprocess per job on this machine.

Slots are the GPUs in CUDA_VISIBLE_DEVICES, else HONE_LOCAL_SLOTS on CPU; a run takes as many as its resources ask
for (`gpus`), and one of several runs as `python -m trainer.ranks`, a rank per device (on CPU, a gloo process
per slot). Runs start
in their own session (forked from a warm interpreter, service/warm_start.py, or plainly), so they outlive a
control-plane restart; the restarted scheduler adopts them by pid, checked by the log file on their stdout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from hone_kernel.trainer_contract import Resources
from service.executors import TrainerExit
from service.hints import Loop
from service.settings import Settings
from service.warm_start import WarmProcess, stdout_is, warm_starts


@dataclass
class _Run:
    job_id: str
    pid: int
    ref: str
    log_path: Path
    devices: list[str]  # its GPUs; on CPU, as many "" as the slots it takes
    process: subprocess.Popen | WarmProcess | None  # None for a run adopted from an earlier control plane


class LocalExecutor:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._host = socket.gethostname()
        self._devices = settings.training.gpu_devices
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._starts = warm_starts(settings)
        self._ctx = None  # the scheduler's (bind): a run's exit wakes it

    def slots(self) -> int:
        return len(self._devices) or max(0, self._settings.training.local_slots)  # 0: this replica trains nothing

    def cost(self, resources: Resources) -> int:
        return resources.world_size  # one device each; multi-node runs are refused at creation (job_resources.py)

    def free_slots(self) -> int:
        with self._lock:
            return self.slots() - sum(len(run.devices) for run in self._runs.values())

    def running(self) -> dict[str, str]:
        with self._lock:
            return {job_id: run.ref for job_id, run in self._runs.items()}

    def owns(self, ref: str) -> bool:
        return ref.startswith(f"local:{self._host}:")

    def bind(self, ctx) -> None:  # nothing to look up: a local run is labelled by its process
        self._ctx = ctx

    def events(self) -> list[tuple[str, str, str]]:  # a process either runs or exits
        return []

    def _log_path(self, job_id: str, attempt: int) -> Path:
        folder = (self._settings.server.data_dir / "logs" / job_id).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"attempt-{attempt}.log"

    def launch(self, job_id: str, attempt: int, spec_url: str, resources: Resources | None = None) -> str:
        size = (resources or Resources()).world_size
        with self._lock:
            used = {d for run in self._runs.values() for d in run.devices}
            free = [d for d in self._devices if d not in used]
            if self._devices and len(free) < size:  # the scheduler claims only what fits: a bug if it did not
                raise OSError(f"{size} GPU(s) asked for, {len(free)} free")
            devices = free[:size] if self._devices else [""] * size
            # The trainer names the job and attempt in its log lines from the start.
            env = dict(os.environ, PYTHONUNBUFFERED="1", HONE_JOB_ID=job_id, HONE_JOB_ATTEMPT=str(attempt))
            # Spinning OpenMP workers slow a trainer 10x or more when anything else wants the cores.
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            if self._settings.training.trainer_threads > 0:
                env["OMP_NUM_THREADS"] = str(self._settings.training.trainer_threads)
            # No GPU for a CPU slot: an empty list hides every device from torch.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices) if self._devices else env.get("CUDA_VISIBLE_DEVICES", "")
            log_path = self._log_path(job_id, attempt)
            module, argv = "trainer", ["--spec", spec_url]
            if size > 1:  # a rank per device (trainer/ranks.py); each sees the run's devices, takes its LOCAL_RANK
                module, argv = "trainer.ranks", ["--nproc-per-node", str(size), *argv]
            process = self._starts.launch(self._settings.training.trainer_python, module, argv, env, log_path)
            ref = f"local:{self._host}:{process.pid}:{attempt}"
            if size > 1:  # what it holds, for a control plane that adopts it after a restart
                ref += ":" + (",".join(devices) if self._devices else f"x{size}")
            self._runs[job_id] = _Run(job_id, process.pid, ref, log_path, devices, process)
        threading.Thread(target=self._wake_on_exit, args=(process,), name=f"exit-{job_id}", daemon=True).start()
        return ref

    def _wake_on_exit(self, process: subprocess.Popen | WarmProcess) -> None:
        """The scheduler reaps the run, and gives its slot to the next queued job, when it ends, not at its next
        poll (up to HONE_SCHEDULER_POLL_S later). Adopted runs have no handle to wait on: they wait for the poll."""
        process.wait()
        if self._ctx is not None:
            self._ctx.hinter.wake(Loop.SCHEDULER)

    def stop(self, job_id: str, *, kill: bool) -> None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is None:
            return
        try:
            if kill:
                os.killpg(run.pid, signal.SIGKILL)  # the whole session: data loader workers too; stopped or not
            else:
                os.kill(run.pid, signal.SIGTERM)
                # A stopped (SIGSTOP, ^Z) trainer would hold the SIGTERM until the grace ran out and it was killed;
                # continued, it checkpoints and exits as asked.
                os.kill(run.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def _alive(self, run: _Run) -> int | None | bool:
        """True while running; else the exit code (None when unknown)."""
        if run.process is not None:
            code = run.process.poll()
            return True if code is None else code
        return True if stdout_is(run.pid, str(run.log_path)) else None

    def reap(self) -> list[TrainerExit]:
        exits = []
        with self._lock:
            for job_id, run in list(self._runs.items()):
                state = self._alive(run)
                if state is True:
                    continue
                del self._runs[job_id]
                log = run.log_path.read_bytes() if run.log_path.exists() else None
                exits.append(TrainerExit(job_id, run.ref, state, log))
        return exits

    def log_so_far(self, job_id: str) -> bytes | None:
        with self._lock:
            run = self._runs.get(job_id)
        try:
            return run.log_path.read_bytes() if run is not None else None
        except OSError:
            return None

    def adopt(self, job_id: str, ref: str) -> bool:
        if not self.owns(ref):
            return False
        # local:{host}:{pid}:{attempt}, and for a run of several devices :{their ids} (GPUs) or :x{count} (CPU slots)
        _, _, pid, attempt, *held = ref.split(":")
        log_path = self._log_path(job_id, int(attempt))
        # Its log file on its stdout says the pid is still that trainer (and not a reused pid), warm or cold.
        if not stdout_is(int(pid), str(log_path)):
            return False
        devices = [""]
        if held and held[0].startswith("x"):
            devices = [""] * int(held[0][1:])
        elif held:
            devices = held[0].split(",")
        with self._lock:
            self._runs[job_id] = _Run(job_id, int(pid), ref, log_path, devices, None)
        return True
