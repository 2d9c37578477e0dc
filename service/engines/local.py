"""Engines as local processes on free loopback ports, one process session each.

Each running engine has a state file, `$HONE_DATA_DIR/engines/<key>.json` (pid, url), for operators and
tests. A spare engine (started ahead of need) is handed to the first `ensure` whose spec it matches.

A key runs `spec.replicas` identical processes (an endpoint's `replicas`), each on its own port and, for vLLM,
its own GPUs (devices.py); they share the key's API key, so the gateway reaches any of them with it."""

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
from service.engines import EngineHandle, EngineSpec, EngineStartError, Replica
from service.engines.devices import EngineDevices, device_pool
from service.settings import Settings
from service.warm_start import WarmProcess, start_cold, stdout_is, warm_starts

log = logging.getLogger("hone.engines")


@dataclass
class _Process:  # one replica; handle changes when a spare is claimed
    handle: EngineHandle
    proc: subprocess.Popen | WarmProcess
    spawned_as: str  # the key in its HONE_ENDPOINT_ENGINE (and its log's name), which stays when a spare is claimed


STATE_DIR = "engines"  # in the data dir


def _file_name(key: str) -> str:
    return key.replace(":", "_").replace("/", "_")


def state_file(data_dir: Path, key: str) -> Path:
    """Where a running engine's state (its replicas' pids and urls, the API key) is kept, for operators and tests."""
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


def _same_engine(a: EngineSpec, b: EngineSpec) -> bool:
    """The same weights and flags: a change of `replicas` only adds or stops replicas, never restarts the rest."""
    return dataclasses.replace(a, replicas=1) == dataclasses.replace(b, replicas=1)


class LocalEngines:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._running: dict[str, list[_Process]] = {}  # key -> its replicas, oldest first
        self._lock = threading.Lock()
        self._logs = settings.server.data_dir.resolve() / "logs" / "engines"
        self._states = settings.server.data_dir.resolve() / STATE_DIR
        self._starts = warm_starts(settings)
        self.devices = EngineDevices(device_pool(settings))
        self._built: dict[tuple[str, str], tuple[int, int]] = {}  # (source, folder) built here -> the folder's identity
        self._stop_orphans()

    def _stop_orphans(self) -> None:
        """Engines left by a control plane that was killed: their adapters are reloaded into fresh ones, so
        the old processes would only hold memory (and, with vLLM, a GPU)."""
        if not self._states.exists():
            return
        for state in self._states.glob("*.json"):
            try:
                info = json.loads(state.read_text())
                for replica in info.get("replicas") or [info]:
                    # Its log file on its stdout says the pid is still that engine (and not a reused pid).
                    if stdout_is(replica["pid"], str(self._log_path(replica["spawned_as"]))):
                        os.killpg(replica["pid"], signal.SIGKILL)
                        log.warning("stopped an engine left by an earlier run", extra=_identity(info["key"]))
            except (OSError, ValueError, KeyError):
                pass  # already gone, or not ours
            state.unlink(missing_ok=True)

    def ensure(self, spec: EngineSpec) -> EngineHandle:
        """Starts what is missing of `spec.replicas` (stops extras), keeping the replicas that run: returns once
        every new one is healthy, or with those that are when at least one replica serves."""
        self._build_if_builtin(spec)
        with self._lock:
            group = self._live(spec.key)
            if group and not _same_engine(group[0].handle.spec, spec):
                self._terminate(spec.key)
                group = []
            if not group and (spare := self._matching_spare(spec)) is not None:
                group = [self._claim(spare, spec)]
            while len(group) > spec.replicas:
                self._stop_one(group.pop())
            api_key = group[0].handle.api_key if group else secrets.token_urlsafe(24)
            taken = {p.spawned_as for p in group}
            names = [n for n in self._replica_names(spec.key, spec.replicas) if n not in taken]
            started, failure = self._start_all(spec, api_key, names[: spec.replicas - len(group)])
            group += started
            for p in group:
                p.handle = dataclasses.replace(p.handle, spec=spec)
            if not group:
                self._running.pop(spec.key, None)
                assert failure is not None  # nothing runs, so something failed to start
                raise failure
            if failure is not None:  # the endpoint serves on fewer; the deployer tries the rest again later
                log.warning("an engine replica did not start", extra={**_identity(spec.key), "reason": str(failure)})
            self._running[spec.key] = group
            self._write_state(spec.key)
            return self._handle(spec.key)

    @staticmethod
    def _replica_names(key: str, count: int) -> list[str]:
        """Replica 0 keeps the key itself as its spawn key (its log is where it always was); the rest `<key>.rN`."""
        return [key if i == 0 else f"{key}.r{i}" for i in range(max(count, 1))]

    def _start_all(
        self, spec: EngineSpec, api_key: str, names: list[str]
    ) -> tuple[list[_Process], EngineStartError | None]:
        """Starts one replica per name side by side (waiting for each in turn), each retried on a lost port race."""
        started: list[_Process] = []
        failure: EngineStartError | None = None
        pending: list[tuple[str, int]] = [(name, 0) for name in names]
        while pending:
            spawned = []
            for name, attempt in pending:
                try:
                    spawned.append((self._spawn(spec, api_key, name), attempt))
                except EngineStartError as exc:
                    failure = exc
            pending = []
            for (running, log_path), attempt in spawned:
                try:
                    self._wait_healthy(running, log_path)
                    started.append(running)
                except _PortTaken as exc:  # a free port can be taken between probing and binding it
                    if attempt < 2:
                        pending.append((running.spawned_as, attempt + 1))
                    else:
                        failure = exc
                except EngineStartError as exc:
                    failure = exc
        return started, failure

    def _build_if_builtin(self, spec: EngineSpec) -> None:
        """Built-in base models are built on first use by the trainer's code, run as a process: the control
        plane imports none of it. The builder returns at once when the folder holds its current build, so a cache
        left by an older builder is rebuilt rather than served. It is run again only when the folder is not the one it
        last left (builds rename a whole new folder into place): not on every deploy, where the process (an
        interpreter's start) was 0.1-0.25 s of a deploy that claims a spare engine, between a job's success and its
        first token."""
        if spec.model_source is None or not spec.model_source.startswith("builtin:"):
            return
        built = (spec.model_source, spec.model_path)
        if built in self._built and self._built[built] == _identity_of(spec.model_path):
            return
        python = self._settings.training.trainer_python or sys.executable
        try:
            done = subprocess.run(
                [python, "-m", "hone_kernel.builtin_models", spec.model_source.split(":", 1)[1], spec.model_path],
                capture_output=True,
                timeout=900,
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineStartError(f"building {spec.model_source} took over 900s") from exc
        if done.returncode != 0:
            raise EngineStartError(f"building {spec.model_source} failed: {done.stderr.decode()[-500:]}")
        if (identity := _identity_of(spec.model_path)) is not None:
            self._built[built] = identity

    def _spawn(self, spec: EngineSpec, api_key: str, name: str) -> tuple[_Process, Path]:
        port = _free_port()
        try:
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
                tensor_parallel_size=spec.tensor_parallel_size,
                pipeline_parallel_size=spec.pipeline_parallel_size,
                images_per_prompt=spec.images_per_prompt,
                tool_call_parser=spec.tool_call_parser,
            )
        except ValueError as exc:
            raise EngineStartError(f"engine {spec.key}: {exc}") from exc
        # Engines get nothing of the control plane's secrets (admin key, database URL, storage credentials):
        # the deployer fetches their weights for them.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_"))}
        env = {**inherited, **launch.env, "HONE_ENDPOINT_ENGINE": name, "OMP_WAIT_POLICY": "PASSIVE"}
        if spec.engine == "vllm":  # the built-in engine runs on CPU: it holds no GPU to count
            devices = self.devices.take(name, spec.devices)
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        if endpoint_id := endpoint_of(spec.key):
            env["HONE_ENDPOINT_ID"] = endpoint_id  # the built-in engine's log lines carry it
        if self._settings.serving.engine_threads:
            env["OMP_NUM_THREADS"] = str(self._settings.serving.engine_threads)
        self._logs.mkdir(parents=True, exist_ok=True)
        log_path = self._log_path(name)
        proc: subprocess.Popen | WarmProcess
        try:
            if spec.engine == "builtin":  # `python -m inference <flags>`: warm when it may be
                flags = launch.argv[3:]
                proc = self._starts.launch(self._settings.serving.engine_python, "inference", flags, env, log_path)
            else:
                proc = start_cold(launch.argv, env, log_path)
        except BaseException:
            self.devices.release(name)
            raise
        handle = EngineHandle(spec.key, f"http://127.0.0.1:{port}", api_key, spec)
        extra = {
            **_identity(spec.key),
            "pid": proc.pid,
            "port": port,
            "replica": name,
            "devices": env.get("CUDA_VISIBLE_DEVICES"),
        }
        log.info("engine starting", extra=extra)
        return _Process(handle, proc, name), log_path

    def _wait_healthy(self, running: _Process, log_path: Path) -> None:
        proc, handle = running.proc, running.handle
        try:
            with EngineClient(handle.url, api_key=handle.api_key) as client:
                client.wait_healthy(self._settings.serving.engine_start_timeout_s, alive=lambda: proc.poll() is None)
        except EngineUnavailable as exc:
            self._stop_one(running)
            message = f"engine {handle.key} did not become healthy: {exc} (exit code {proc.returncode}; log {log_path})"
            with open(log_path, "rb") as written:
                written.seek(max(0, written.seek(0, os.SEEK_END) - 4096))
                tail = written.read()
            # only a lost race for the port is worth another try; anything else would fail the same way
            raise (_PortTaken if b"Errno 98" in tail or b"ddress already in use" in tail else EngineStartError)(
                message
            ) from exc

    def _handle(self, key: str) -> EngineHandle:
        """One handle for all of a key's replicas: requests spread over them, adapters load into each."""
        group = self._running[key]
        first = group[0].handle
        urls = tuple(p.handle.url for p in group)
        return dataclasses.replace(first, urls=urls, replicas=tuple(Replica(u) for u in urls))

    def _live(self, key: str) -> list[_Process]:
        """The key's replicas that still run (the exited ones forgotten, their devices freed)."""
        group = self._running.get(key, [])
        live = [p for p in group if p.proc.poll() is None]
        for gone in group:
            if gone.proc.poll() is not None:
                log.warning(
                    "engine exited",
                    extra={**_identity(key), "replica": gone.spawned_as, "returncode": gone.proc.returncode},
                )
                self.devices.release(gone.spawned_as)
        if len(live) != len(group):
            if live:
                self._running[key] = live
                self._write_state(key)
            else:
                del self._running[key]
                self._state_path(key).unlink(missing_ok=True)
        return live

    def _matching_spare(self, spec: EngineSpec) -> str | None:
        for key, group in self._running.items():
            if not key.startswith("spare:"):
                continue
            running = group[0]
            if running.proc.poll() is None and _same_engine(
                dataclasses.replace(running.handle.spec, key=spec.key), spec
            ):
                return key
        return None

    def _claim(self, spare_key: str, spec: EngineSpec) -> _Process:
        """A spare becomes the first replica of `spec` (a spare is a single engine)."""
        group = self._running.pop(spare_key)
        for extra in group[1:]:
            self._stop_one(extra)
        running = group[0]
        self._state_path(spare_key).unlink(missing_ok=True)
        running.handle = dataclasses.replace(running.handle, key=spec.key, spec=spec)
        log.info("spare engine claimed", extra={**_identity(spec.key), "spare": spare_key})
        return running

    def _log_path(self, spawn_key: str) -> Path:
        return self._logs / f"{_file_name(spawn_key)}.log"

    def _state_path(self, key: str) -> Path:
        return state_file(self._settings.server.data_dir, key)

    def _write_state(self, key: str) -> None:
        self._states.mkdir(parents=True, exist_ok=True)
        group = self._running[key]
        replicas = [{"pid": p.proc.pid, "url": p.handle.url, "spawned_as": p.spawned_as} for p in group]
        # The engine's API key is in it (other server workers read it to reach the engine): owner-only. Written
        # beside and renamed in: a reader never sees it truncated and half-written (a test caught one that did).
        path = self._state_path(key)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            # pid/url/spawned_as of the first replica at the top, as before replicas, for operators' scripts
            json.dump({"key": key, **replicas[0], "api_key": group[0].handle.api_key, "replicas": replicas}, out)
        os.replace(partial, path)

    def get(self, key: str) -> EngineHandle | None:
        with self._lock:
            return self._handle(key) if self._live(key) else None

    def stop(self, key: str) -> None:
        with self._lock:
            self._terminate(key)

    def suspend(self, key: str) -> None:  # a process holds nothing worth keeping: it stops, ensure() starts anew
        self.stop(key)

    def _stop_one(self, running: _Process) -> None:
        stop_process_group(running.proc)
        self.devices.release(running.spawned_as)

    def _terminate(self, key: str) -> None:
        group = self._running.pop(key, None)
        if group is not None:
            for running in group:
                self._stop_one(running)
            self._state_path(key).unlink(missing_ok=True)
            log.info("engine stopped", extra={**_identity(key), "replicas": len(group)})

    def stage_weights(
        self, handle: EngineHandle, name: str, storage_prefix: str, local_copy: Path, replica: Replica | None = None
    ) -> str:
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


def _identity_of(folder: str) -> tuple[int, int] | None:
    """A folder's inode and modification time: another build renamed into its place changes them."""
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


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
