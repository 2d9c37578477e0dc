"""What code a benchmark measured: `commit abc1234`, and whether the measured folders had uncommitted changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_revision(*folders: str) -> str:
    folders = folders or ("service",)
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *folders],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    where = " or ".join(f"{f}/" for f in folders)
    return f"commit {head or 'unknown'}" + (f" with uncommitted changes under {where}" if dirty else "")
