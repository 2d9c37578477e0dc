"""Engines as local processes on free loopback ports, one process session each.

Each running engine has a state file, `$HONE_DATA_DIR/engines/<key>.json` (pid, url), for operators and
tests. A spare engine (started ahead of need) is handed to the first `ensure` whose spec it matches."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from inference.client import EngineClient, EngineUnavailable
from inference.launcher import engine_command
from service.engines import EngineHandle, EngineSpec, EngineStartError
from service.settings import Settings
from service.warm_start import WarmProcess, start_cold, stdout_is, warm_starts

log = logging.getLogger("hone.engines")


@dataclass
class _Process:  # handle changes when a spare is claimed
    handle: EngineHandle
    proc: subprocess.Popen | WarmProcess
    spawned_as: str  # the key in its HONE_ENDPOINT_ENGINE, which stays when a spare is claimed


STATE_DIR = "engines"  # in the data dir


def _file_name(key: str) -> str:
    return key.replace(":", "_").replace("/", "_")


def state_file(data_dir: Path, key: str) -> Path:
    """Where a running engine's state (pid, url, spawn key) is kept, for operators and tests."""
    return data_dir.resolve() / STATE_DIR / f"{_file_name(key)}.json"


def endpoint_of(key: str) -> str | None:
    """The endpoint an engine key dedicates the engine to: the key is the endpoint's id, where shared and spare
    engines' keys are `base:<model>` and `spare:<model>`."""
    return None if ":" in key else key


def _identity(key: str) -> dict[str, str]:
    """Log fields naming an engine (and its endpoint, when it has one of its own)."""
    endpoint_id = endpoint_of(key)
    return {"engine": key, "endpoint_id": endpoint_id} if endpoint_id else {"engine": key}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalEngines:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._running: dict[str, _Process] = {}
        self._lock = threading.Lock()
        self._logs = settings.server.data_dir.resolve() / "logs" / "engines"
        self._states = settings.server.data_dir.resolve() / STATE_DIR
        self._starts = warm_starts(settings)
        self._stop_orphans()

    def _stop_orphans(self) -> None:
        """Engines left by a control plane that was killed: their adapters are reloaded into fresh ones, so
        the old processes would only hold memory (and, with vLLM, a GPU)."""
        if not self._states.exists():
            return
        for state in self._states.glob("*.json"):
            try:
                info = json.loads(state.read_text())
                # Its log file on its stdout says the pid is still that engine (and not a reused pid).
                if stdout_is(info["pid"], str(self._log_path(info["spawned_as"]))):
                    os.killpg(info["pid"], signal.SIGKILL)
                    log.warning("stopped an engine left by an earlier run", extra=_identity(info["key"]))
            except (OSError, ValueError, KeyError):
                pass  # already gone, or not ours
            state.unlink(missing_ok=True)

    def ensure(self, spec: EngineSpec) -> EngineHandle:
        self._build_if_builtin(spec)
        with self._lock:
            current = self._running.get(spec.key)
            if current is not None and current.proc.poll() is None and current.handle.spec == spec:
                return current.handle
            if current is not None:
                self._terminate(spec.key)
            spare = self._matching_spare(spec)
            if spare is not None:
                return self._claim(spare, spec)
            for attempt in range(3):  # a free port can be taken between probing and binding it
                try:
                    return self._start(spec)
                except _PortTaken:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def _build_if_builtin(self, spec: EngineSpec) -> None:
        """Built-in base models are built on first use by the trainer's code, run as a process: the control
        plane imports none of it. The builder is run every time (it returns at once when the folder holds its
        current build), so a cache left by an older builder is rebuilt rather than served."""
        if not (spec.model_source or "").startswith("builtin:"):
            return
        python = self._settings.training.trainer_python or sys.executable
        try:
            done = subprocess.run(
                [python, "-m", "hone_kernel.tiny_model", spec.model_path], capture_output=True, timeout=900
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineStartError(f"building {spec.model_source} took over 900s") from exc
        if done.returncode != 0:
            raise EngineStartError(f"building {spec.model_source} failed: {done.stderr.decode()[-500:]}")

    def _start(self, spec: EngineSpec) -> EngineHandle:
        port, api_key = _free_port(), secrets.token_urlsafe(24)
        launch = engine_command(
            spec.engine,
            spec.model_path,
            spec.served_name,
            host="127.0.0.1",
            port=port,
            max_loras=spec.max_loras,
            max_cpu_loras=spec.max_cpu_loras,
            max_lora_rank=spec.max_lora_rank,
            api_key=api_key,
            chat_template=spec.chat_template,
            python=self._settings.serving.engine_python or sys.executable,
        )
        # Engines get nothing of the control plane's secrets (admin key, database URL, storage credentials):
        # the deployer fetches their weights for them.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_"))}
        env = {**inherited, **launch.env, "HONE_ENDPOINT_ENGINE": spec.key, "OMP_WAIT_POLICY": "PASSIVE"}
        if endpoint_id := endpoint_of(spec.key):
            env["HONE_ENDPOINT_ID"] = endpoint_id  # the built-in engine's log lines carry it
        if self._settings.serving.engine_threads:
            env["OMP_NUM_THREADS"] = str(self._settings.serving.engine_threads)
        self._logs.mkdir(parents=True, exist_ok=True)
        log_path = self._log_path(spec.key)
        proc: subprocess.Popen | WarmProcess
        if spec.engine == "builtin":  # `python -m inference <flags>`: warm when it may be
            flags = launch.argv[3:]
            proc = self._starts.launch(self._settings.serving.engine_python, "inference", flags, env, log_path)
        else:
            proc = start_cold(launch.argv, env, log_path)
        handle = EngineHandle(spec.key, f"http://127.0.0.1:{port}", api_key, spec)
        log.info("engine starting", extra={**_identity(spec.key), "pid": proc.pid, "port": port})
        try:
            with EngineClient(handle.url, api_key=api_key) as client:
                client.wait_healthy(self._settings.serving.engine_start_timeout_s, alive=lambda: proc.poll() is None)
        except EngineUnavailable as exc:
            stop_process_group(proc)
            message = f"engine {spec.key} did not become healthy: {exc} (exit code {proc.returncode}; log {log_path})"
            with open(log_path, "rb") as written:
                written.seek(max(0, written.seek(0, os.SEEK_END) - 4096))
                tail = written.read()
            # only a lost race for the port is worth another try; anything else would fail the same way
            raise (_PortTaken if b"Errno 98" in tail or b"ddress already in use" in tail else EngineStartError)(
                message
            ) from exc
        self._running[spec.key] = _Process(handle, proc, spec.key)
        self._write_state(self._running[spec.key])
        return handle

    def _matching_spare(self, spec: EngineSpec) -> str | None:
        for key, running in self._running.items():
            if (
                key.startswith("spare:")
                and running.proc.poll() is None
                and dataclasses.replace(running.handle.spec, key=spec.key) == spec
            ):
                return key
        return None

    def _claim(self, spare_key: str, spec: EngineSpec) -> EngineHandle:
        running = self._running.pop(spare_key)
        self._state_path(spare_key).unlink(missing_ok=True)
        running.handle = dataclasses.replace(running.handle, key=spec.key, spec=spec)
        self._running[spec.key] = running
        self._write_state(running)
        log.info("spare engine claimed", extra={**_identity(spec.key), "spare": spare_key})
        return running.handle

    def _log_path(self, spawn_key: str) -> Path:
        return self._logs / f"{_file_name(spawn_key)}.log"

    def _state_path(self, key: str) -> Path:
        return state_file(self._settings.server.data_dir, key)

    def _write_state(self, running: _Process) -> None:
        self._states.mkdir(parents=True, exist_ok=True)
        path = self._state_path(running.handle.key)
        # The engine's API key is in it (other server workers read it to reach the engine): owner-only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(
                {
                    "key": running.handle.key,
                    "pid": running.proc.pid,
                    "url": running.handle.url,
                    "spawned_as": running.spawned_as,
                    "api_key": running.handle.api_key,
                },
                out,
            )

    def get(self, key: str) -> EngineHandle | None:
        with self._lock:
            current = self._running.get(key)
            if current is None:
                return None
            if current.proc.poll() is not None:
                log.warning("engine exited", extra={**_identity(key), "returncode": current.proc.returncode})
                del self._running[key]
                self._state_path(key).unlink(missing_ok=True)
                return None
            return current.handle

    def stop(self, key: str) -> None:
        with self._lock:
            self._terminate(key)

    def suspend(self, key: str) -> None:  # a process holds nothing worth keeping: it stops, ensure() starts anew
        self.stop(key)

    def _terminate(self, key: str) -> None:
        current = self._running.pop(key, None)
        if current is not None:
            stop_process_group(current.proc)
            self._state_path(key).unlink(missing_ok=True)
            log.info("engine stopped", extra=_identity(key))

    def stage_weights(self, handle: EngineHandle, name: str, storage_prefix: str, local_copy: Path) -> str:
        return str(local_copy)  # engines here see this disk

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def close(self) -> None:
        with self._lock:
            for key in list(self._running):
                self._terminate(key)


class _PortTaken(EngineStartError):
    pass


def api_key_from_state(data_dir: Path, key: str) -> str | None:
    """The API key of an engine another process of this server started (read from its state file)."""
    try:
        return json.loads(state_file(data_dir, key).read_text()).get("api_key")
    except (OSError, ValueError):
        return None


def stop_process_group(proc: subprocess.Popen | WarmProcess, grace: float = 5.0) -> None:
    """SIGTERM to the process's session, SIGKILL if it is still there after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
