"""The python grader's sandbox, inside: `python -I sandbox_child.py`, fed one JSON request on stdin, answering one
JSON line on its stdout. Standard library only, and nothing of Hone's: what runs here is a user's code.

In order, before that code runs:
1. as root, it becomes nobody (uid and gid 65534, no groups), so that files Hone keeps 0600/0700 are out of
   reach, where nobody can still read the Python installation (a Python under /root, mode 0700, stays root);
2. it enters new user and network namespaces where the kernel allows: no network interface exists, loopback
   included;
3. resource limits, soft = hard so the code cannot raise them: address space, CPU seconds, file size, open
   files, no core dumps;
4. an audit hook (PEP 578) refuses sockets, processes (fork, exec, spawn, subprocess, system), ctypes, and any
   file outside the scratch folder, except reads of the Python installation (the standard library and the
   installed packages, so `import numpy` works); the modules that bypass audit events cannot be imported.
The parent (sandbox.py) adds the wall-clock limit and kills the process group."""

import errno
import json
import math
import os
import resource
import sys
import traceback

NOBODY = 65534
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
_DENIED_EVENTS = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "pty.",
    "ctypes.",
    "resource.setrlimit",
    "resource.prlimit",
    "os.chroot",
    "os.setns",
    "os.unshare",
)
_DENIED_MODULES = frozenset(
    {"ctypes", "_ctypes", "_posixsubprocess", "subprocess", "multiprocessing", "_multiprocessing"}
)
# Events whose first argument is a path: allowed in the scratch folder (and, for reads, in the installation).
_PATH_READS = {"os.listdir", "os.scandir", "glob.glob"}
_PATH_WRITES = {
    "os.remove",
    "os.rename",
    "os.mkdir",
    "os.rmdir",
    "os.chmod",
    "os.chown",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.utime",
    "os.chdir",
    "os.chflags",
    "os.lchflags",
    "os.lchmod",
    "shutil.copyfile",
    "shutil.copymode",
    "shutil.copystat",
    "shutil.copytree",
    "shutil.rmtree",
    "shutil.move",
    "shutil.make_archive",
    "shutil.unpack_archive",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _open_to_others(folder: str) -> bool:
    """Whether a user who owns nothing can reach and list `folder` (so nobody can still import from it)."""
    import stat

    path = os.path.realpath(folder)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH or (path == os.path.realpath(folder) and not mode & stat.S_IROTH):
            return False
        if path == os.sep:
            return True
        path = os.path.dirname(path)


def becomes_nobody() -> bool:
    """Whether the child drops from root to nobody (the parent gives nobody the scratch folder then)."""
    return os.geteuid() == 0 and all(_open_to_others(p) for p in (sys.prefix, sys.base_prefix))


def drop_privileges() -> str:
    """Who the code runs as, and whether it has a network: 'nobody+netns', 'nobody', 'netns' or 'none'."""
    how = []
    if becomes_nobody():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        how.append("nobody")
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
            how.append("netns")
    except Exception:  # no ctypes, or the kernel refuses: the audit hook still refuses sockets
        pass
    for name in ("ctypes", "_ctypes", "ctypes._endian", "subprocess", "_posixsubprocess"):
        sys.modules.pop(name, None)  # so that importing them again passes the audit hook's import check
    return "+".join(how) or "none"


def limit(limits: dict) -> None:
    for name, value in (
        ("RLIMIT_AS", limits["memory_bytes"]),
        ("RLIMIT_CPU", limits["cpu_s"]),
        ("RLIMIT_FSIZE", limits["file_bytes"]),
        ("RLIMIT_NOFILE", limits["open_files"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))


def guard(scratch: str) -> None:
    scratch = os.path.realpath(scratch)
    readable = tuple(
        {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    )
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep

    def allowed(path, write: bool) -> bool:
        if isinstance(path, int):
            return not write  # an descriptor already open (the standard streams)
        where = realpath(fsdecode(path))
        if where == scratch or where.startswith(scratch + sep):
            return True
        return not write and where.startswith(readable)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if path is None:
                return
            write = bool(flags & _WRITE_FLAGS) if mode is None else any(c in mode for c in "wax+")
            if not allowed(path, write):
                raise PermissionError(f"the grader sandbox allows no access to {path!r}")
        elif event == "import":
            if args[0] in _DENIED_MODULES:
                raise ImportError(f"the grader sandbox does not allow importing {args[0]}")
        elif event.startswith(_DENIED_EVENTS):
            raise PermissionError(f"the grader sandbox does not allow {event}")
        elif event in _PATH_READS or event in _PATH_WRITES:
            path = args[0] if args else "."
            if path is not None and not allowed(path, event in _PATH_WRITES):
                raise PermissionError(f"the grader sandbox allows no access to {path!r}")

    sys.addaudithook(hook)


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the code prints goes to stderr, which the parent reads to a bound
    isolation = drop_privileges()
    os.chdir(request["scratch"])
    limit(request["limits"])
    guard(request["scratch"])
    reply: dict = {"isolation": isolation}
    try:
        scope: dict = {"__name__": "grader"}
        exec(compile(request["source"], "grader.py", "exec"), scope)
        score = scope["grade"](request["sample"], request["item"])
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise TypeError(f"grade() must return a finite number, not {score!r}")
        reply["score"] = float(score)
    except MemoryError:
        reply["error"], reply["kind"] = "MemoryError: the grader went over its memory limit", "memory"
    except OSError as exc:
        if exc.errno != errno.EFBIG:  # Python ignores SIGXFSZ: a write past RLIMIT_FSIZE fails with EFBIG
            reply["error"] = f"{type(exc).__name__}: {exc}"
        else:
            reply["error"], reply["kind"] = "the grader wrote a file over its size limit", "file_size"
    except BaseException as exc:  # the user's error, whatever it is (SystemExit included), is the grade's error
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f"line {f.lineno}" for f in reversed(frames) if f.filename == "grader.py"), "")
        reply["error"] = f"{type(exc).__name__}: {exc}" + (f" ({where})" if where else "")
    answer.write(json.dumps(reply))
    answer.flush()


if __name__ == "__main__":
    main()
