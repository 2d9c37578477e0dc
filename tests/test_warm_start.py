"""Warm starts (service/warm_start.py, hone_kernel/warm_start.py): a run forked from the preloaded interpreter is
what `python -m <module>` would be, for everything the executor and the engines rely on."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from service.warm_start import PRELOAD, WarmInterpreter, WarmProcess, WarmStarts, runs_with_stdout, stdout_is
from tests.support import wait_for


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    # The real preload (torch, transformers, peft): the interpreter that production forks from.
    starts = WarmStarts(True, tmp_path_factory.mktemp("warm-logs"))
    yield starts
    starts.close()


def _said(log) -> dict:
    return json.loads(log.read_text().splitlines()[0])


def test_a_run_is_the_module_run_as_main_with_exactly_its_environment(starts, tmp_path, monkeypatch):
    monkeypatch.setenv("HONE_ADMIN_API_KEY", "sk-admin-secret")  # the control plane's secret
    log = tmp_path / "run.log"
    log.write_text("earlier attempt\n")
    env = {"PATH": os.environ["PATH"], "HONE_JOB_ID": "ftjob-warm", "OMP_NUM_THREADS": "1"}
    run = starts.launch(None, "tests.warm_target", ["3", "--flag"], env, log)
    assert isinstance(run, WarmProcess)
    assert run.wait(30) == 3 and run.poll() == 3
    first, said, stderr = log.read_text().splitlines()
    assert first == "earlier attempt"  # appended, as the executor's log files are
    said = json.loads(said)
    assert said["argv"] == ["3", "--flag"] and said["sid"] == said["pid"] == run.pid  # a session of its own
    assert stderr == "to stderr"
    # The run's os.environ is exactly what it was given, torch's pool sized by it; none of the control plane's
    # secrets reach it, not even in what /proc shows of the interpreter it was forked from.
    assert said["env"] == env and said["torch_threads"] == 1
    environ = Path(f"/proc/{starts._interpreters[sys.executable]._proc.pid}/environ").read_bytes()
    assert b"sk-admin-secret" not in environ


def test_the_preload_leaves_one_thread_and_spares_the_run_the_imports(starts, tmp_path):
    interpreter = starts._interpreters[sys.executable]
    assert interpreter.threads == 1  # forking is only safe from a single-threaded process
    log = tmp_path / "imports.log"
    code = "import sys; print(sorted(sys.modules))"  # what the run finds already imported
    run = starts.launch(None, "timeit", ["-n", "1", "-r", "1", code], dict(os.environ), log)
    assert run.wait(30) == 0
    assert {"torch", "peft", "transformers", *PRELOAD} <= set(eval(log.read_text().splitlines()[0]))


def test_signals_end_a_run_with_popens_codes_and_its_log_file_names_it(starts, tmp_path):
    log = tmp_path / "wait.log"
    run = starts.launch(None, "tests.warm_target", ["wait"], dict(os.environ), log)
    wait_for(lambda: log.exists() and log.read_text(), 30, 0.05, "the run's first line")
    assert stdout_is(run.pid, str(log)) and runs_with_stdout(log) == [run.pid]
    # ps shows what runs, not the warm interpreter's command line
    assert b"-m tests.warm_target wait" in Path(f"/proc/{run.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert not stdout_is(os.getpid(), str(log))
    with pytest.raises(subprocess.TimeoutExpired):
        run.wait(0.1)
    os.killpg(run.pid, signal.SIGTERM)  # as the engines stop theirs: the session
    assert run.wait(10) == -signal.SIGTERM
    assert runs_with_stdout(log) == [] and not stdout_is(run.pid, str(log))


def test_runs_outlive_a_dead_interpreter_and_the_next_launch_starts_another(tmp_path):
    starts = WarmStarts(True, tmp_path / "logs", preload=())  # what is preloaded is not the point here
    try:
        first = starts.launch(None, "tests.warm_target", ["wait"], dict(os.environ), tmp_path / "a.log")
        interpreter = starts._interpreters[sys.executable]
        os.kill(interpreter._proc.pid, signal.SIGKILL)
        wait_for(lambda: interpreter.dead, 10, 0.05, "the interpreter's end to be seen")
        time.sleep(0.3)
        assert first.poll() is None and stdout_is(first.pid, str(tmp_path / "a.log"))  # still running
        os.killpg(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL  # no parent of ours to tell: counted as killed
        second = starts.launch(None, "tests.warm_target", ["0"], dict(os.environ), tmp_path / "b.log")
        assert isinstance(second, WarmProcess) and second.wait(30) == 0
        assert starts._interpreters[sys.executable] is not interpreter
    finally:
        starts.close()


@pytest.mark.parametrize("enabled", [False, True])
def test_disabled_or_another_python_starts_cold(tmp_path, enabled):
    """Off, or for an interpreter of its own (HONE_TRAINER_PYTHON, HONE_ENGINE_PYTHON): a plain Popen."""
    starts = WarmStarts(enabled, tmp_path / "logs")
    other = tmp_path / "python"
    other.symlink_to(sys.executable)
    run = starts.launch(
        str(other) if enabled else None, "tests.warm_target", ["5"], dict(os.environ), tmp_path / "c.log"
    )
    assert isinstance(run, subprocess.Popen) and run.wait(30) == 5
    assert run.args[:3] == [str(other) if enabled else sys.executable, "-m", "tests.warm_target"]
    assert _said(tmp_path / "c.log")["argv"] == ["5"] and starts._interpreters == {}


def test_a_run_that_ends_before_its_launcher_wakes_still_tells_its_exit_code():
    # The interpreter's pid line and, right behind it, the exit line of a run that ended at once: the reader thread
    # can read both before the launching thread wakes. Fed here from a pipe stand-in, in that order, synchronously.
    interpreter = WarmInterpreter.__new__(WarmInterpreter)
    interpreter._stdout = io.BytesIO(b'{"pid": 4242}\n{"exit": 4242, "code": 3}\n')
    interpreter._runs, interpreter._replies, interpreter._cond = {}, [], threading.Condition()
    interpreter._asked, interpreter.dead = ["tests.warm_target", "3"], False
    interpreter._read()
    (run,) = interpreter._replies
    assert isinstance(run, WarmProcess) and run.pid == 4242 and run.wait(0) == 3


def test_control_planes_share_one_listening_interpreter_and_fall_back_to_their_own(tmp_path):
    owner = WarmStarts(True, tmp_path / "owner", preload=(), listen=tmp_path / "warm.sock")
    guest = WarmStarts(True, tmp_path / "guest", preload=(), shared=owner.listening())
    lost = WarmStarts(True, tmp_path / "lost", preload=(), shared=tmp_path / "nobody.sock")

    def parent_then_kill(run) -> int:
        parent = psutil.Process(run.pid).ppid()
        run.kill()
        assert run.wait(30) == -signal.SIGKILL  # its end told to the process that asked for it
        return parent

    try:
        interpreter = owner._interpreters[sys.executable]._proc.pid
        asker = os.umask(0o027)  # the interpreter keeps the umask it started with; a run gets its asker's
        try:
            run = guest.launch(None, "tests.warm_target", ["wait"], dict(os.environ), tmp_path / "guest.log")
        finally:
            os.umask(asker)
        log = tmp_path / "guest.log"
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 30, 0.05, "the run to start")
        assert "Umask:\t0027" in Path(f"/proc/{run.pid}/status").read_text()
        assert log.stat().st_mode & 0o777 == 0o640  # its log file made under that umask
        assert parent_then_kill(run) == interpreter  # forked by the owner's interpreter
        assert guest.launch(None, "tests.warm_target", ["4"], dict(os.environ), tmp_path / "guest.log").wait(30) == 4
        guest.close()  # a guest leaving does not stop the interpreter
        again = owner.launch(None, "tests.warm_target", ["wait"], dict(os.environ), tmp_path / "owner.log")
        assert parent_then_kill(again) == interpreter
        alone = lost.launch(None, "tests.warm_target", ["wait"], dict(os.environ), tmp_path / "lost.log")
        assert isinstance(alone, WarmProcess) and parent_then_kill(alone) != interpreter
    finally:
        for starts in (owner, guest, lost):
            starts.close()


def test_a_reset_connection_does_not_end_the_shared_interpreter_and_a_stale_socket_is_cleared(tmp_path):
    """A control plane killed while connected resets its connection (it never read the interpreter's greeting):
    the interpreter drops that asker and goes on serving the others. An interpreter that died anyway left its
    socket file behind; the next one clears it instead of failing to bind (a CI run lost 256 tests to that)."""
    path = tmp_path / "warm.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, and nothing listens on it
    owner = WarmStarts(True, tmp_path / "owner", preload=(), listen=path)
    guest = WarmStarts(True, tmp_path / "guest", preload=(), shared=owner.listening())
    try:
        interpreter = owner._interpreters[sys.executable]._proc.pid
        for _ in range(3):
            rude = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            rude.connect(str(path))
            time.sleep(0.2)  # the greeting arrives, unread
            rude.close()  # closing with unread data resets the interpreter's side
        run = guest.launch(None, "tests.warm_target", ["4"], dict(os.environ), tmp_path / "guest.log")
        assert run.wait(30) == 4 and psutil.pid_exists(interpreter)
    finally:
        guest.close()
        owner.close()


def test_prewarm_starts_the_interpreter_before_the_first_launch(tmp_path):
    """A server that trains here preloads with its own start (service/server.py), not on its first job."""
    starts = WarmStarts(True, tmp_path / "logs", preload=("json",))
    try:
        other = tmp_path / "python"
        other.symlink_to(sys.executable)
        starts.prewarm(str(other))  # its runs start cold: nothing to preload for them
        starts.prewarm(None)
        wait_for(lambda: sys.executable in starts._interpreters, timeout=30)
        interpreter = starts._interpreters[sys.executable]
        assert list(starts._interpreters) == [sys.executable] and not interpreter.dead
        run = starts.launch(None, "tests.warm_target", ["4"], dict(os.environ), tmp_path / "w.log")
        assert isinstance(run, WarmProcess) and run.wait(30) == 4
        assert starts._interpreters[sys.executable] is interpreter  # the one prewarmed, not a second
    finally:
        starts.close()
