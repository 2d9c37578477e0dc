"""A plain `pip install` of Hone is the client side only: in a fresh virtual environment, with no extras, the SDK
imports and makes a client, the `hone` command runs and validates files offline, and nothing of the server's or
the trainer's is installed. `hone serve` says which extra it needs.

The wheel is built with this environment's setuptools (no build isolation) and installed from the local package
mirror and pip's cache: some twenty seconds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.support import REPO, chat_dataset

SERVER_SIDE = ("torch", "transformers", "fastapi", "uvicorn", "sqlalchemy", "boto3", "kubernetes", "matplotlib")


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_sdk_installs_and_imports_without_server_or_training_dependencies(tmp_path):
    source, wheels, venv = tmp_path / "source", tmp_path / "wheels", tmp_path / "venv"
    # Built from a copy: setuptools builds in the tree, and the repository must stay as it is.
    for name in ("hone", "hone_kernel", "service", "trainer", "inference"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, source)
    [wheel] = wheels.glob("hone-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one (--python): no pip bootstrap there.
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--disable-pip-version-check", wheel)

    probe = run(
        python,
        "-c",
        f"""
import importlib.metadata, importlib.util, json
import hone
client = hone.Client("http://127.0.0.1:9", "sk-test")
from hone_kernel.datasets import validate_bytes
print(json.dumps({{
    "client": type(client).__name__, "base_url": client.base_url,
    "importable": [m for m in {SERVER_SIDE!r} if importlib.util.find_spec(m)],
    "installed": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
    "examples": validate_bytes({chat_dataset(3)!r}).examples,
}}))
""",
        cwd=tmp_path,
    )  # not the repository: `import hone` must find the installed copy
    found = json.loads(probe.stdout)
    assert found["client"] == "Client" and found["base_url"] == "http://127.0.0.1:9" and found["examples"] == 3
    assert found["importable"] == []
    assert {"httpx", "pydantic", "typer", "rich", "hone"} <= set(found["installed"])
    assert not set(found["installed"]) & {"torch", "fastapi", "sqlalchemy", "boto3", "uvicorn", "kubernetes"}

    hone = venv / "bin" / "hone"
    assert "jobs" in run(hone, "--help", cwd=tmp_path).stdout
    (tmp_path / "train.jsonl").write_bytes(chat_dataset(12))
    assert "12 example(s)" in run(hone, "files", "validate", "train.jsonl", cwd=tmp_path).stderr
    serve = subprocess.run([hone, "serve"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert serve.returncode == 1 and "pip install 'hone[server]'" in serve.stderr
