"""`pytest -p tests.cpu_profile`: each test module's CPU seconds, its subprocesses' included, written as one JSON
line per module to $HONE_CPU_PROFILE (default cpu-profile.jsonl). The suite is CPU-bound on the 2-core machine, so
this, not wall time, says which modules to make cheaper.

A module's CPU is the change, over the module, of what this worker and every process below it have used: each live
process's own and its reaped children's time (/proc/<pid>/stat utime, stime, cutime, cstime). A process that
outlives the module (a warm interpreter) is counted as it goes; one reaped in it moves into its parent's cutime.
The worker is made a child subreaper, so a process whose parent ended is still counted (reparented to it)."""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path

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
        self.module: str | None = None
        self.cpu = self.wall = 0.0
        try:
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def switch(self, module: str | None) -> None:
        now_cpu, now_wall = tree_cpu(os.getpid()), time.monotonic()
        if self.module is not None:
            line = {
                "module": self.module,
                "cpu_s": round(now_cpu - self.cpu, 1),
                "wall_s": round(now_wall - self.wall, 1),
            }
            with self.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
        self.module, self.cpu, self.wall = module, now_cpu, now_wall


_profile: _Profile | None = None


def pytest_runtest_protocol(item, nextitem):
    global _profile
    if _profile is None:
        _profile = _Profile()
    module = str(item.path.relative_to(item.config.rootpath))
    if module != _profile.module:
        _profile.switch(module)


def pytest_sessionfinish(session):
    if _profile is not None:
        _profile.switch(None)
