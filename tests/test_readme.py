"""The README, tried from scratch: its ```bash blocks run as pasted, in order, in one shell.

Every ```bash block of README.md either runs, or says on the line just above its fence why it does not:

- `<!-- readme-test: not run (reason) -->`: it needs what this machine has not (a GPU, Docker, a Kubernetes
  cluster), or it is the suite itself (scripts/test.sh);
- `<!-- readme-test: background -->`: it starts a server, which runs in the background while the next blocks run,
  once it answers /readyz.

The runnable blocks are concatenated into one `bash` script (`set -euo pipefail`, so every variable a block uses
must have been set by a block before it), with a marker between blocks that names the failing block and its README
line. The script runs in a fresh folder that holds the repository's tracked files and its .venv (symlinks), so what
the snippets write (the data folder, loss.png, an adapter) lands there, with no HONE_* or AWS_* variable set and no
.venv on the PATH: as a new shell on a fresh clone after scripts/setup.sh. Two things differ, both said here: the
server's port is a free one (HONE_PORT, and the README's `127.0.0.1:8000` replaced by it), and the server gets the
suite's test settings (fast polls, the shared built hone-tiny and warm interpreter) as every test server does.
Then what the snippets made is checked through the API: the job succeeded, the endpoints serve, the chats answered.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import MODEL_CACHE, REPO, free_port, warm_socket

README = REPO / "README.md"
MARKER = re.compile(r"^<!-- readme-test: (?:(?P<background>background)|not run \((?P<reason>[^()]*\S[^()]*)\)) -->$")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[^\s`]*)")
# Fences a reader would paste into a shell: only ```bash is run here, so the others are refused.
SHELL_LANGS = {"sh", "shell", "console", "zsh", "shell-session", "terminal"}
BLOCK_MARK = "@@readme-test block"


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    mode: str  # "run", "background" or "not run"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"README.md line {self.line}"


def bash_blocks(text: str) -> list[Block]:
    """The ```bash blocks, in order, each with what its marker line says; fails on a marker that marks nothing
    and on a shell block under another name."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "readme-test" in line:
            assert MARKER.match(line.strip()), f"README.md line {i + 1}: a readme-test marker this test cannot read"
            following = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            assert following and following["lang"] == "bash", (
                f"README.md line {i + 1}: a readme-test marker not just above a ```bash fence"
            )
        opening = FENCE.match(line)
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening["indent"], opening["fence"], opening["lang"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        assert end is not None, f"README.md line {i + 1}: a fence never closed"
        assert lang not in SHELL_LANGS, f"README.md line {i + 1}: ```{lang}: write shell snippets as ```bash"
        if lang == "bash":
            body = "\n".join(row[len(indent) :] if row.startswith(indent) else row for row in lines[i + 1 : end])
            marker = MARKER.match(lines[i - 1].strip()) if i > 0 else None
            if marker is None:
                blocks.append(Block(i + 1, body, "run"))
            elif marker["background"]:
                blocks.append(Block(i + 1, body, "background"))
            else:
                blocks.append(Block(i + 1, body, "not run", marker["reason"].strip()))
        i = end + 1
    return blocks


def test_every_bash_block_runs_or_says_why_not():
    """Cheap, no server: the README's shell blocks are all ```bash and each is run or marked with a reason, so a
    new block cannot slip through unrun; the suite itself is never run from here; every block, run or not, is
    bash that parses (`bash -n`)."""
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 10, [b.where for b in blocks]
    for block in blocks:
        parsed = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
        assert parsed.returncode == 0, f"{block.where}: {parsed.stderr}"
        if block.mode == "not run":
            assert len(block.reason) >= 10, f"{block.where}: say why it is not run"
        else:
            assert "scripts/test.sh" not in block.text, f"{block.where} runs the suite: mark it not run"
    background = [b for b in blocks if b.mode == "background"]
    assert [b for b in background if "hone serve" in b.text], "the block that starts the server runs in the background"
    run = [b for b in blocks if b.mode == "run"]
    assert any("hone chat" in b.text for b in run) and any("hone jobs create" in b.text for b in run)


# --- the run --------------------------------------------------------------------------------------------------


def fresh_folder(root: Path) -> Path:
    """A folder as a fresh clone after scripts/setup.sh: symlinks to the repository's tracked top-level entries
    and its .venv (untracked files, a data folder or a loss.png of the repository's, are not there)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    names = {path.split("/", 1)[0] for path in tracked.decode().split("\0") if path}
    work = root / "clone"
    work.mkdir()
    for name in sorted(names | {".venv"}):
        if (REPO / name).exists():
            (work / name).symlink_to(REPO / name)
    return work


def setup_is_current() -> bool:
    """Whether scripts/setup.sh would install nothing (its stamp is pyproject.toml's and structured-deps'). Run in
    the fresh folder, an install would make the shared .venv's editable install point there."""
    stamp = REPO / ".venv" / ".hone-installed"
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + (REPO / "scripts/structured-deps.txt").read_bytes())
    return stamp.exists() and stamp.read_text().strip() == want.hexdigest()


def shell_env(port: int, home: Path) -> dict[str, str]:
    """A new shell's environment: no HONE_* or AWS_* variable, no virtualenv on the PATH, an empty home (the
    snippets add shell completion to ~/.bashrc); then the free port, and the settings every test server gets
    (tests/support.py, HoneServer)."""
    venv_bin = str(REPO / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_")) and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin)
    # matplotlib's font cache (seconds of CPU to build) stays the user's own
    env.setdefault("MPLCONFIGDIR", str(Path.home() / ".config" / "matplotlib"))
    env |= {
        "HOME": str(home),
        "HONE_PORT": str(port),
        "HONE_JOB_VALIDATION_POLL_S": "0.5",
        "HONE_SCHEDULER_POLL_S": "0.3",
        "HONE_ENDPOINT_POLL_S": "0.3",
        "HONE_TRAINER_THREADS": "1",
        "HONE_ENGINE_THREADS": "1",
        "HONE_MODEL_CACHE_DIR": str(MODEL_CACHE),
        "HONE_WARM_START_SOCKET": str(warm_socket()),
    }
    return env


STATE = ["PROJECT", "API_KEY", "FILE", "JOB", "MODEL", "OTHER", "IMPORTED", "CKPT", "EP"]


def script(blocks: list[Block], port: int, logs: Path, state: Path) -> str:
    """The runnable blocks as one bash script, each after a marker (on stdout and stderr) that names it."""
    ready = f"http://127.0.0.1:{port}/readyz"
    parts = [
        "set -euo pipefail",
        """trap 'echo "readme-test: failed in $README_BLOCK (exit $?)" >&2' ERR""",
    ]
    for n, block in enumerate(blocks):
        if block.mode == "not run":
            continue
        text = block.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        where = shlex.quote(f"block {n} ({block.where})")
        parts.append(f'README_BLOCK={where}; echo "{BLOCK_MARK} {n}"; echo "{BLOCK_MARK} {n} at $SECONDS s" >&2')
        if block.mode == "run":
            parts.append(text)
            continue
        log = shlex.quote(str(logs / f"background-{n}.log"))
        parts.append(
            f"(\n{text}\n) > {log} 2>&1 &\n"
            "README_BACKGROUND=$!\n"
            f"for _ in $(seq 600); do\n"
            f"  curl -sf -o /dev/null {ready} && break\n"
            f'  kill -0 $README_BACKGROUND 2>/dev/null || {{ echo "readme-test: it exited" >&2; tail -40 {log} >&2; exit 1; }}\n'
            "  sleep 0.2\n"
            "done\n"
            f"curl -sf -o /dev/null {ready}"
        )
    names = " ".join(STATE)
    parts.append(f'for v in {names}; do printf \'%s=%s\\n\' "$v" "${{!v-}}"; done > {shlex.quote(str(state))}')
    return "\n".join(parts) + "\n"


def block_times(stderr: str, blocks: list[Block]) -> str:
    """When each block started (from its marker on stderr), for the run's summary."""
    starts = [(int(n), int(s)) for n, s in re.findall(rf"^{BLOCK_MARK} (\d+) at (\d+) s$", stderr, re.MULTILINE)]
    return ", ".join(f"line {blocks[n].line} at {s} s" for n, s in starts)


def outputs_by_block(stdout: str) -> dict[int, list[str]]:
    """Each block's stdout lines, by its number."""
    found: dict[int, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith(BLOCK_MARK):
            current = int(line.rsplit(" ", 1)[1])
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def stop_everything(proc: subprocess.Popen, root: Path) -> None:
    """The shell's process group (the server in it) stopped, SIGTERM then SIGKILL; then every process writing under
    `root` (trainers and engines forked from the warm interpreter, outside that group) killed with its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            outputs = {os.readlink(entry / "fd" / fd) for fd in ("1", "2")}
        except OSError:
            continue
        if any(out.startswith(str(root)) for out in outputs):
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)


def test_readme_snippets_run_as_pasted(tmp_path):
    if not setup_is_current():
        pytest.fail("the .venv is older than pyproject.toml: run scripts/setup.sh (scripts/test.sh does) first")
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    port = free_port()
    root = tmp_path
    work = fresh_folder(root)
    home = root / "home"
    home.mkdir()
    state = root / "state"
    (root / "script.sh").write_text(script(blocks, port, root, state))
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(root / "script.sh")],
        cwd=work,
        env=shell_env(port, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        try:
            stdout, stderr = proc.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"the README's blocks ran over 420 s; stderr's end:\n{stderr[-4000:]}")
        elapsed = time.monotonic() - started
        failed = re.findall(r"readme-test: failed in (.*)", stderr)
        assert proc.returncode == 0, (
            f"the README's blocks failed ({failed[-1] if failed else f'exit {proc.returncode}'}); "
            f"stdout's end:\n{stdout[-3000:]}\nstderr's end:\n{stderr[-5000:]}"
        )
        print(f"README blocks ran in {elapsed:.0f} s: {block_times(stderr, blocks)}")
        made = dict(line.split("=", 1) for line in state.read_text().splitlines())
        check_what_the_snippets_made(blocks, outputs_by_block(stdout), made, port, work)
        assert 'eval "$(hone completion bash)"' in (home / ".bashrc").read_text()
        assert "complete" in (home / ".config/fish/completions/hone.fish").read_text()
    finally:
        stop_everything(proc, root)


def block_output(blocks: list[Block], outputs: dict[int, list[str]], needle: str) -> list[str]:
    """The stdout of the one run block whose text holds `needle`."""
    (n,) = [n for n, b in enumerate(blocks) if b.mode == "run" and needle in b.text]
    assert n in outputs, f"block {n} ({blocks[n].where}) did not run"
    return outputs[n]


def last_line(lines: list[str]) -> str:
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def check_what_the_snippets_made(blocks, outputs, made, port, work):
    base = f"http://127.0.0.1:{port}"
    key = made["API_KEY"]
    assert key.startswith("sk-") and made["PROJECT"].startswith("proj_"), made
    project = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    admin = httpx.Client(base_url=base, headers={"Authorization": "Bearer sk-admin-change-me"}, timeout=30)

    # Projects and keys: the grant is there.
    grants = admin.get(f"/v1/organization/projects/{made['PROJECT']}/dataset_grants").json()["data"]
    assert grants and all(f'grants add "$PROJECT" {g["uri"]}' in README.read_text() for g in grants), grants

    # The quickstart's CLI path: the job succeeded, its model is the one the snippet took, and it answered.
    job = project.get(f"/v1/fine_tuning/jobs/{made['JOB']}").json()
    assert job["status"] == "succeeded" and job["training_file"] == made["FILE"], job
    assert job["fine_tuned_model"] == made["MODEL"] and made["MODEL"].startswith("ft:hone-tiny:"), made
    assert (work / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    answer = last_line(block_output(blocks, outputs, 'hone chat "$MODEL"'))
    assert answer and made["MODEL"] not in answer, f"no answer from the tuned model: {answer!r}"
    print(f"the quickstart's tuned model answered {answer!r}")

    # Sharing it: the other project may use it.
    shared = admin.get(f"/v1/fine_tuning/checkpoints/{made['MODEL']}/permissions").json()["data"]
    assert [p["project_id"] for p in shared] == [made["OTHER"]]

    # Bring your own adapter: imported from the download, served, answered, continued.
    assert (work / "my-adapter" / "adapter_config.json").is_file()
    assert re.fullmatch(r"ft:hone-tiny:[^:]+:[^:]+:ftimport-\w+", made["IMPORTED"]), made["IMPORTED"]
    endpoints = project.get("/v1/endpoints", params={"model": made["IMPORTED"]}).json()["data"]
    assert [e["state"] for e in endpoints] == ["ready"], endpoints
    lines = block_output(blocks, outputs, 'hone chat "$IMPORTED"')
    continued = last_line(lines)
    assert continued.startswith("ftjob-"), lines
    answer = last_line(lines[:-1])
    assert answer and not answer.startswith(("ep-", "─")) and made["IMPORTED"] not in answer, lines
    print(f"the imported model answered {answer!r}")
    assert project.get(f"/v1/fine_tuning/jobs/{continued}").json()["model"] == made["IMPORTED"]

    # Serving: the checkpoint's endpoint was made and deleted.
    assert made["CKPT"].startswith("ftckpt_"), made
    endpoint = project.get(f"/v1/endpoints/{made['EP']}").json()
    assert endpoint["model"] != made["MODEL"] and endpoint["state"] == "stopped", endpoint
