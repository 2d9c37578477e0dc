"""`pytest -p tests.cpu_profile`: each test's CPU seconds, its subprocesses' included, written as one JSON line per
test (with its module) to $HONE_CPU_PROFILE (default cpu-profile.jsonl). The suite is CPU-bound on the 2-core machine, so
this, not wall time, says which modules to make cheaper.

A test's CPU is the change, over the test, of what this worker and every process below it have used: each live
process's own and its reaped children's time (/proc/<pid>/stat utime, stime, cutime, cstime). A process that
outlives the test (a warm interpreter) is counted as it goes; one reaped meanwhile moves into its parent's cutime.
The worker is made a child subreaper, so a process whose parent ended is still counted (reparented to it)."""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path

import pytest

TICK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36


def _stat(pid: int) -> tuple[int, float] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ppid = int(fields[1])
    return ppid, sum(int(v) for v in fields[11:15]) / TICK  # utime stime cutime cstime


def tree_cpu(root: int) -> float:
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))):
            stats[int(entry.name)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


class _Profile:
    def __init__(self):
        self.out = Path(os.environ.get("HONE_CPU_PROFILE", "cpu-profile.jsonl"))
        try:
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def record(self, nodeid: str, cpu: float, wall: float) -> None:
        module = nodeid.split("::", 1)[0]
        line = {"module": module, "test": nodeid, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}
        with self.out.open("a") as f:
            f.write(json.dumps(line) + "\n")


_profile: _Profile | None = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """One line per test, with its setup and teardown: a module-scoped fixture counts in its module's first test
    (set up) and last (torn down)."""
    global _profile
    if _profile is None:
        _profile = _Profile()
    cpu, wall = tree_cpu(os.getpid()), time.monotonic()
    yield
    _profile.record(item.nodeid, tree_cpu(os.getpid()) - cpu, time.monotonic() - wall)
