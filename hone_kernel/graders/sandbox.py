"""Runs a python grader's `grade(sample, item)` in a sandbox process (sandbox_child.py says what it may do) and
turns what happened into a score or an error: the user's exception, or the limit the code ran into."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hone_kernel.graders import sandbox_child

CHILD = Path(__file__).with_name("sandbox_child.py")
NOBODY = 65534


@dataclass(frozen=True)
class SandboxLimits:
    """Per grade. The scratch folder is the code's working directory, new for each grade and removed after."""

    timeout_s: float = 10.0  # wall clock, from start to answer (the interpreter's start included)
    cpu_s: int = 5
    memory_bytes: int = 1 << 30  # address space: `import numpy` fits, a 4 GiB list does not
    file_bytes: int = 16 << 20  # largest file the code may write in its scratch folder
    open_files: int = 64
    output_bytes: int = 64 << 10  # what is kept of the code's prints (stderr), for the error's details


@dataclass(frozen=True)
class SandboxOutcome:
    score: float | None = None
    error: str | None = None  # the code's own failure (python_grader_runtime_error)
    limit: str | None = None  # the sandbox stopped it: timeout, cpu, memory, crashed (python_grader_server_error)
    isolation: str | None = None  # how the child was isolated (sandbox_child.drop_privileges)


def _child_env(scratch: str) -> dict[str, str]:
    # Nothing of the server's environment (keys, URLs) reaches the code.
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


async def run_python(
    source: str, sample: dict[str, Any], item: Any, limits: SandboxLimits, python: str | None = None
) -> SandboxOutcome:
    scratch = tempfile.mkdtemp(prefix="hone-grader-")
    if sandbox_child.becomes_nobody():
        os.chown(scratch, NOBODY, NOBODY)
    request = json.dumps(
        {"source": source, "sample": sample, "item": item, "scratch": scratch, "limits": asdict(limits)}
    ).encode()
    try:
        proc = await asyncio.create_subprocess_exec(
            python or sys.executable,
            "-I",
            str(CHILD),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(scratch),
            cwd=scratch,
            start_new_session=True,  # its own process group, killed whole
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(request), limits.timeout_s)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            return SandboxOutcome(limit="timeout", error=f"the grader ran past its {limits.timeout_s:g} s limit")
        finally:
            _kill(proc)  # anything it left in its group
        return _outcome(proc.returncode, out, err[-limits.output_bytes :], limits)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _outcome(returncode: int | None, out: bytes, err: bytes, limits: SandboxLimits) -> SandboxOutcome:
    try:
        reply = json.loads(out) if out else None
    except ValueError:
        reply = None
    if isinstance(reply, dict):
        isolation = reply.get("isolation")
        if "score" in reply:
            return SandboxOutcome(score=float(reply["score"]), isolation=isolation)
        if reply.get("kind") in ("memory", "file_size"):
            return SandboxOutcome(limit=reply["kind"], error=str(reply.get("error")), isolation=isolation)
        return SandboxOutcome(error=str(reply.get("error")), isolation=isolation)
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return SandboxOutcome(limit="cpu", error=f"the grader used up its {limits.cpu_s} s of CPU")
    if returncode == -signal.SIGXFSZ:
        return SandboxOutcome(limit="file_size", error=f"the grader wrote a file over {limits.file_bytes} bytes")
    tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {returncode}"]
    if "MemoryError" in tail[0]:
        return SandboxOutcome(limit="memory", error="the grader went over its memory limit")
    return SandboxOutcome(limit="crashed", error=f"the grader's process ended without an answer: {tail[0]}")
