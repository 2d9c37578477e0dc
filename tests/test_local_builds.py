"""The local engine backend runs a built-in model's builder (a process) when the folder may need it, not before every
engine it starts or spare it hands over: once, and again only when another build replaced the folder."""

from __future__ import annotations

import os
import subprocess

from service.engines import EngineSpec
from service.engines.local import LocalEngines
from service.settings import Settings


def test_the_builder_runs_once_per_folder_and_again_when_the_folder_was_replaced(tmp_path, monkeypatch):
    runs: list[list[str]] = []

    def run(argv, **kwargs):
        runs.append(argv)
        (tmp_path / "model").mkdir(exist_ok=True)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr("service.engines.local.subprocess.run", run)
    engines = LocalEngines(Settings(data_dir=tmp_path / "data"))
    spec = EngineSpec(
        "ep-1", "builtin", str(tmp_path / "model"), "hone-tiny", 1, 1, 16, model_source="builtin:hone-tiny"
    )
    engines._build_if_builtin(spec)
    engines._build_if_builtin(spec)
    assert len(runs) == 1 and runs[0][-2:] == ["hone-tiny", str(tmp_path / "model")]

    (tmp_path / "rebuilt").mkdir()  # another build renamed into its place
    os.rename(tmp_path / "model", tmp_path / "old")
    os.rename(tmp_path / "rebuilt", tmp_path / "model")
    engines._build_if_builtin(spec)
    assert len(runs) == 2

    engines._build_if_builtin(EngineSpec("ep-2", "builtin", "/models/x", "x", 1, 1, 16, model_source=None))
    assert len(runs) == 2  # not a built-in model
