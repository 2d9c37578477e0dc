"""Trainers and built-in engines forked from a warm interpreter (hone_kernel/warm_start.py), not started cold.

`launch` gives a Popen-like handle either way: from the warm interpreter of `python` when HONE_WARM_START is on
and one runs (it is started on first use, once per interpreter, and stopped with the control plane), else from a
plain `subprocess.Popen`. A warm run saves its process the ~5 s of CPU that importing torch, transformers and
peft costs; what differs for it is in hone_kernel/warm_start.py (its environment is not in /proc/<pid>/environ:
`runs_with_stdout` finds a run by its log file instead)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from hone_kernel.warm_start import READY
from service.settings import Settings

log = logging.getLogger("hone.warm_start")

# What a trainer and a built-in engine import before their first step: torch, transformers (its auto classes and
# Llama's modeling, hone-tiny's family; another family imports its own module on top), peft, the engine's server.
PRELOAD = (
    "trainer.loop",
    "inference.engine",
    "inference.server",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama",
    "peft",
    "uvicorn",
)
START_TIMEOUT_S = 120.0


class WarmProcess:
    """The part of subprocess.Popen the executor and the engines use, for a run of a warm interpreter."""

    def __init__(self, pid: int, args: list[str]):
        self.pid, self.args = pid, args
        self.returncode: int | None = None
        self._ended = threading.Event()

    def _end(self, code: int) -> None:
        self.returncode = code
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WarmInterpreter:
    """One `python -m hone_kernel.warm_start` process and the runs it forked."""

    def __init__(
        self,
        python: str,
        log_path: Path,
        preload: tuple[str, ...] = PRELOAD,
        *,
        listen: Path | None = None,
        connect: Path | None = None,
    ):
        """Starts `python -m hone_kernel.warm_start` (`listen`: taking other askers on a Unix socket there too), or,
        with `connect`, asks one that another process started and that listens there."""
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        began = time.monotonic()
        self._stdin: IO[bytes]
        self._stdout: IO[bytes]
        if connect is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(START_TIMEOUT_S)
            try:
                self._sock.connect(str(connect))
            except OSError:
                self._sock.close()
                raise
            self._sock.settimeout(None)
            self._stdin, self._stdout = self._sock.makefile("wb"), self._sock.makefile("rb")
        else:
            # No secrets in its environment: /proc/<pid>/environ of every run shows this one, whatever the run's own.
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_"))}
            env["OMP_WAIT_POLICY"] = "PASSIVE"  # read once, when OpenMP loads: spinning workers starve the others
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as stderr:
                self._proc = subprocess.Popen(
                    [python, "-u", "-m", "hone_kernel.warm_start", *(["--listen", str(listen)] if listen else [])]
                    + list(preload),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    start_new_session=True,  # a ^C to the control plane is not for it
                )
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._stdin, self._stdout = self._proc.stdin, self._proc.stdout
        self._runs: dict[int, WarmProcess] = {}
        self._replies: list[WarmProcess | dict] = []  # a run forked, or why not
        self._asked: list[str] = []  # the module and argv of the request being answered
        self._cond = threading.Condition()
        self._request_lock = threading.Lock()
        self._ready = False
        self.dead = False
        self.threads = 0  # the interpreter's threads once preloaded: forking is safe with one
        threading.Thread(target=self._read, name="warm-start", daemon=True).start()
        with self._cond:
            self._cond.wait_for(lambda: self._ready or self.dead, START_TIMEOUT_S)
        if not self._ready:
            self.close()
            raise OSError(f"the warm interpreter did not start (log {log_path})")
        # how long a server's first trainer or engine waited, or would have (benchmarks/start_latency.py reads it)
        log.info(
            "warm interpreter ready",
            extra={"preload_s": round(time.monotonic() - began, 3), "shared": connect is not None},
        )

    def _read(self) -> None:
        for line in self._stdout:
            message = json.loads(line)
            with self._cond:
                if READY in message:
                    self._ready, self.threads = True, message["threads"]
                    if self.threads != 1:
                        log.warning("warm interpreter has threads after its preload", extra=message)
                elif "exit" in message:
                    run = self._runs.pop(message["exit"], None)
                    if run is not None:
                        run._end(message["code"])
                elif "pid" in message:
                    # Registered here, not by the launching thread: a run that ends at once has its exit line
                    # right behind this one, which this thread may read before that thread wakes.
                    run = self._runs[message["pid"]] = WarmProcess(message["pid"], self._asked)
                    self._replies.append(run)
                else:
                    self._replies.append(message)
                self._cond.notify_all()
        with self._cond:  # it is gone: its runs' ends can no longer be told
            self.dead = True
            lost = list(self._runs.values())
            self._runs.clear()
            self._cond.notify_all()
        for run in lost:
            log.warning("warm interpreter gone; a run's exit code is lost", extra={"pid": run.pid})
            threading.Thread(target=_watch_orphan, args=(run,), daemon=True).start()

    def launch(
        self, module: str, argv: list[str], env: dict[str, str], stdout: Path, cwd: Path | None = None
    ) -> WarmProcess:
        request = {
            "module": module,
            "argv": argv,
            "env": env,
            "stdout": str(stdout),
            "cwd": cwd and str(cwd),
            "umask": _umask(),  # as a child of ours would inherit it (an interpreter shared with others has theirs)
        }
        with self._request_lock:
            with self._cond:
                if self.dead:
                    raise OSError("the warm interpreter is gone")
                self._asked = [module, *argv]
                self._stdin.write(json.dumps(request).encode() + b"\n")
                self._stdin.flush()
                if not self._cond.wait_for(lambda: self._replies or self.dead, 30):
                    raise OSError("the warm interpreter did not answer")
                if self.dead:
                    raise OSError("the warm interpreter is gone")
                reply = self._replies.pop(0)
                if not isinstance(reply, WarmProcess):
                    raise OSError(f"the warm interpreter could not fork: {reply.get('error')}")
                return reply

    def close(self) -> None:
        """Stops the interpreter (or leaves the shared one); its runs go on (their own sessions), as plainly started
        ones would."""
        try:
            self._stdin.close()
        except OSError:
            pass
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            return
        assert self._proc is not None
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _umask() -> int | None:
    """This process's umask, without setting it (os.umask sets it, a race with other threads): Linux says it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return None


def _watch_orphan(run: WarmProcess) -> None:
    """A run whose interpreter died is no child of ours: it is over when its pid is (exit code unknown: -9)."""
    while _running(run.pid):
        time.sleep(0.5)
    run._end(-signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


class WarmStarts:
    """The warm interpreters of this control plane, one per Python, started on first use."""

    def __init__(
        self,
        enabled: bool,
        log_dir: Path,
        preload: tuple[str, ...] = PRELOAD,
        *,
        listen: Path | None = None,
        shared: Path | None = None,
    ):
        """`listen`: this process's interpreter also takes other processes' requests on a Unix socket there.
        `shared`: fork this interpreter's runs from the one listening there (HONE_WARM_START_SOCKET), if it
        answers; else from one of its own."""
        self._enabled, self._log_dir, self._preload = enabled, log_dir, preload
        self._listen, self._shared = listen, shared
        self._interpreters: dict[str, WarmInterpreter] = {}
        self._lock = threading.Lock()

    def launch(
        self,
        python: str | None,
        module: str,
        argv: list[str],
        env: dict[str, str],
        stdout: Path,
        cwd: Path | None = None,
    ) -> subprocess.Popen | WarmProcess:
        """`python -m module argv` with `env`, stdout and stderr appended to `stdout`, in a session of its own.
        Warm when enabled and `python` is this interpreter (another one, HONE_TRAINER_PYTHON or
        HONE_ENGINE_PYTHON, may not run our modules the same way: it starts cold)."""
        if self._enabled and python in (None, sys.executable):
            try:
                return self._interpreter(sys.executable).launch(module, argv, env, stdout, cwd)
            except OSError:
                log.warning("warm start failed; starting cold", exc_info=True)
        return start_cold([python or sys.executable, "-m", module, *argv], env, stdout, cwd)

    def prewarm(self, python: str | None) -> None:
        """Starts `python`'s interpreter now, in a thread, if its runs would be warm: the first run forks from it
        at once instead of waiting out its preload (~6 s on 2 cores; a launch meanwhile waits for it)."""
        if not (self._enabled and python in (None, sys.executable)):
            return

        def start() -> None:
            try:
                self._interpreter(sys.executable)
            except OSError:  # the first launch tries again, and starts cold if that fails too
                log.warning("the warm interpreter did not start", exc_info=True)

        threading.Thread(target=start, name="warm-start-preload", daemon=True).start()

    def _interpreter(self, python: str) -> WarmInterpreter:
        with self._lock:
            current = self._interpreters.get(python)
            if current is None or current.dead:
                current = self._interpreters[python] = self._start(python)
            return current

    def listening(self) -> Path | None:
        """The socket other processes can ask this process's interpreter at (`listen`), once it is started."""
        if self._listen is not None:
            self._interpreter(sys.executable)  # it listens before it says it is ready
        return self._listen

    def _start(self, python: str) -> WarmInterpreter:
        log_path = self._log_dir / "warm-start.log"
        if self._shared is not None:
            try:
                return WarmInterpreter(python, log_path, connect=self._shared)
            except OSError:
                log.warning("the shared warm interpreter does not answer; starting one", exc_info=True)
        return WarmInterpreter(python, log_path, self._preload, listen=self._listen)

    def close(self) -> None:
        with self._lock:
            for interpreter in self._interpreters.values():
                interpreter.close()
            self._interpreters.clear()


def start_cold(argv: list[str], env: dict[str, str], stdout: Path, cwd: Path | None = None) -> subprocess.Popen:
    """`argv` as a new process, as a warm run would be: a session of its own, stdout and stderr appended to the
    file at `stdout`, stdin from /dev/null."""
    with open(stdout, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


_SHARED: dict[Path, WarmStarts] = {}
_SHARED_LOCK = threading.Lock()


def warm_starts(settings: Settings) -> WarmStarts:
    """This process's warm interpreters for a data dir: the executor and the engines share them. They stop when
    this process does (their stdin closes)."""
    logs = settings.server.data_dir.resolve() / "logs"
    with _SHARED_LOCK:
        if logs not in _SHARED:
            _SHARED[logs] = WarmStarts(settings.server.warm_start, logs, shared=settings.server.warm_start_socket)
        return _SHARED[logs]


def prewarm_trainers(settings: Settings) -> None:
    """A server that trains here (the local executor with slots) starts its warm interpreter with itself, not on its
    first job: that job's trainer then starts in well under a second instead of after the preload."""
    training = settings.training
    if training.executor == "local" and (training.gpu_devices or training.local_slots > 0):
        warm_starts(settings).prewarm(training.trainer_python)


def runs_with_stdout(path: Path) -> list[int]:
    """Live processes whose stdout is the file at `path` (a run and any children it forked): how a trainer or
    an engine is recognised, warm or cold, after a control-plane restart."""
    target = str(path.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and stdout_is(int(entry.name), target):
            pids.append(int(entry.name))
    return pids


def stdout_is(pid: int, path: str) -> bool:
    """Whether live process `pid` writes its stdout to the file at `path` (which may since have been deleted)."""
    try:
        link = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return False
    return link in (path, f"{path} (deleted)") and _running(pid)
