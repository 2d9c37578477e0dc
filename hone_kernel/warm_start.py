"""A warm interpreter: imports the heavy modules once, then forks a process per `python -m <module>` run.

A trainer or a built-in engine spends ~5 s of CPU importing torch, transformers and peft before it does anything;
on a CPU machine that is most of a short job's cost and most of an engine's cold start. The control plane
(service/warm_start.py) starts this module once per interpreter with the modules to preload, then asks it for
runs over its stdin, one JSON object a line:

    -> {"module": "trainer", "argv": ["--spec", "..."], "env": {...}, "stdout": "/path/to/log", "cwd": null,
        "umask": 63}
    <- {"pid": 1234}                   (or {"error": "..."})
    <- {"exit": 1234, "code": 75}      (when a run ends; a negative code is the signal that ended it, as Popen says)

With `--listen PATH` first, it also takes other processes' requests on a Unix socket at PATH (one connection per
asker, the same lines, a ready line first): several control planes on one machine share one preload.

A run is what `python -m <module> <argv>` would be: its own session (start_new_session), stdout and stderr
appended to its log file, stdin from /dev/null, the given working directory (default: this one's) and umask, exactly the
given environment in os.environ, the module run as __main__, atexit handlers run at the end, its command line
(with setproctitle) `python -m <module> <argv>`. Two things differ, and their users know: /proc/<pid>/environ is
not the run's (it is this interpreter's start-up environment, without the control plane's secrets, or blank once
setproctitle has moved it), so a run is recognised by its log file on fd 1 instead; and settings a library reads
once at import (OpenMP's wait policy) come from this interpreter's start-up environment, which the control plane
sets to what every run wants.

Stdlib only: it runs in the trainer's and the engine's interpreter, which need not have the control plane."""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import traceback
from typing import Any

READY = "ready"  # the first line: {"ready": true, "threads": n} once the preload is done


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _run(request: dict, private_fds: list[int], title: Any) -> None:
    """In the forked child: become `python -m <module>`; never returns."""
    code = 1
    try:
        os.setsid()
        if request.get("umask") is not None:  # the asker's, as its own child would have it (its log file too)
            os.umask(request["umask"])
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = os.open(request["stdout"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in (log, devnull, *private_fds):
            os.close(fd)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = run_as_main(request["module"], request["argv"], title)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001  # a closed stream: nothing more to say
                pass
        os._exit(code & 0xFF)


def run_as_main(module: str, argv: list[str], title: Any = None) -> int:
    """`python -m <module> <argv>` in this (forked) process, under the environment already in os.environ: the module
    run as __main__, non-daemon threads joined and atexit handlers run at the end, as the interpreter would; returns
    its exit code. `title`: the setproctitle module, to show the run's command line in ps and top."""
    # torch sized its thread pool from the environment of the process that imported it; the run's own setting wins.
    if "torch" in sys.modules and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        sys.modules["torch"].set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    sys.argv = [module, *argv]
    if title is not None:
        title.setproctitle(" ".join([sys.executable, "-m", module, *argv]))
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # as the interpreter does at exit: join non-daemon threads
    atexit._run_exitfuncs()
    return code


class _Channel:
    """One asker: this interpreter's own stdin and stdout (the process that started it), or a connection to its
    socket. Requests come in as lines; the replies about a run go to the channel that asked for it."""

    def __init__(self, write: Any, close: Any = None):
        self._write, self._close, self.pending = write, close, b""

    def say(self, message: dict) -> None:
        try:
            self._write((json.dumps(message) + "\n").encode())
        except OSError:  # the asker is gone; its runs go on
            pass

    def close(self) -> None:
        if self._close is not None:
            self._close()


def _clear_stale(path: str) -> None:
    """Removes a socket file no interpreter answers on (one that died left it), so that this one can bind; a live
    one is left alone and the bind then fails, as it should."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except FileNotFoundError:
        return
    except OSError:  # refused: nobody listens
        os.unlink(path)
    finally:
        probe.close()


def serve(preload: list[str], listen: str | None = None) -> None:
    """`listen`: also take askers on a Unix socket at this path (several control planes sharing one preload, as
    the test suite's servers do); the socket's folder keeps other users out."""
    # The protocol gets a private copy of stdout; fd 1 becomes stderr, so that a preloaded module's prints cannot
    # corrupt it.
    try:  # in the server extra; without it, runs show this interpreter's command line
        import setproctitle as title

        # It finds the command line's memory through the environment, which a run replaces: set up here, first.
        title.setproctitle(title.getproctitle())
    except ImportError:
        title = None  # type: ignore[assignment]
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    for name in preload:
        importlib.import_module(name)
    # What the preload made lives as long as every run: out of the collector's sight (Python's advice for a process
    # that forks without exec), a run's collections do not walk it again and again, nor copy its pages by touching
    # their objects' headers.
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the wakeup fd
    listener = None
    if listen is not None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _clear_stale(listen)
        listener.bind(listen)
        listener.listen(64)
    # Forking is safe only from a single-threaded process: a preload that started a thread is reported.
    ready = {READY: True, "threads": threading.active_count()}
    own = _Channel(replies.write)
    own.say(ready)
    channels: dict[int, _Channel] = {0: own}
    askers: dict[int, _Channel] = {}  # run pid -> the channel that asked for it
    while True:
        watched = [wake_r, *channels, *([listener.fileno()] if listener else [])]
        try:
            readable, _, _ = select.select(watched, [], [], 5.0)
        except InterruptedError:
            readable = []
        if wake_r in readable:
            os.read(wake_r, 4096)
        while True:  # reap every run that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            asker = askers.pop(pid, None)
            if asker is not None:
                asker.say({"exit": pid, "code": _exit_code(status)})
        if listener is not None and listener.fileno() in readable:
            conn, _ = listener.accept()
            channel = channels[conn.fileno()] = _Channel(conn.sendall, conn.close)
            channel.say(ready)
        for fd in [fd for fd in readable if fd in channels]:
            channel = channels[fd]
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:  # reset by a peer that died mid-connection: as gone as one that closed
                chunk = b""
            if not chunk:
                if channel is own:
                    return  # the process that started this one is gone; the runs go on, reparented
                channel.close()  # a control plane that went away; its runs go on
                del channels[fd]
                askers = {pid: asker for pid, asker in askers.items() if asker is not channel}
                continue
            channel.pending += chunk
            *lines, channel.pending = channel.pending.split(b"\n")
            for line in lines:
                try:
                    request = json.loads(line)
                    pid = os.fork()
                except Exception as exc:  # noqa: BLE001  # a bad request or no memory to fork: say so
                    channel.say({"error": repr(exc)})
                    continue
                if pid == 0:
                    private = [replies.fileno(), wake_r, wake_w, *(c for c in channels if c != 0)]
                    _run(request, private + ([listener.fileno()] if listener else []), title)
                askers[pid] = channel
                channel.say({"pid": pid})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--listen"]:
        serve(sys.argv[3:], listen=sys.argv[2])
    else:
        serve(sys.argv[1:])
