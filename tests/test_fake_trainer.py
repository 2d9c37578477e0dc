"""The FAKE trainer (tests/fake_trainer) that control-plane tests run on keeps to the trainer contract: run as the
local executor runs it, it reports over HTTP, checkpoints on SIGTERM and exits 75, resumes from that checkpoint,
completes with exit 0, and never imports torch. It writes result.csv with the real trainer's code (trainer/outputs.py);
its copies of trainer/loop.py (the events the control plane reads, the Run interface) are checked against the real
module's source, without importing torch."""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hone_kernel.trainer_contract import ExitCode, FileRef, Hyperparameters, TrainSpec
from tests.support import FAKE_TRAINER, REPO, chat_dataset, free_port, wait_for
from trainer import outputs


def _source_names(tree: ast.Module) -> dict:
    """Run's method signatures, and the literal text of the events Run reports."""
    found: dict = {"events": set()}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "install_stop_handler":
            found["install_stop_handler"] = [a.arg for a in node.args.args]
        if isinstance(node, ast.ClassDef) and node.name == "Run":
            found["run"] = {f.name: [a.arg for a in f.args.args] for f in node.body if isinstance(f, ast.FunctionDef)}
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and ast.unparse(call.func) == "self.reporter.event":
                    found["events"].add(ast.unparse(call.args[0]))
    return found


def test_the_fake_copies_what_the_control_plane_reads_from_the_real_loop():
    real = _source_names(ast.parse((REPO / "trainer" / "loop.py").read_text()))
    fake = _source_names(ast.parse((REPO / "tests" / "fake_trainer" / "loop.py").read_text()))
    assert fake["install_stop_handler"] == real["install_stop_handler"]
    for method in ("__init__", "request_stop", "execute"):
        assert fake["run"][method] == real["run"][method], method
    # Every event text the fake reports is one the real trainer reports (tests match on them).
    assert fake["events"] <= real["events"], fake["events"] - real["events"]


class _ControlPlane(BaseHTTPRequestHandler):
    """Answers reports as the control plane does, and records them."""

    bodies: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).bodies.append((self.path.rsplit("/", 1)[-1], body))
        status = "succeeded" if self.path.endswith("/complete") else "running"
        reply = json.dumps({"status": status, "heartbeat_s": 1}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def _launch(spec_url: str, attempt: int) -> subprocess.Popen:
    """As service/executors/local.py launches a trainer, with the fake's interpreter."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HONE_JOB_ID": "ftjob-fake",
        "HONE_JOB_ATTEMPT": str(attempt),
        "FAKE_TRAINER_INTERPRETER": sys.executable,
        "FAKE_TRAINER_STEP_S": "0.05",
    }
    return subprocess.Popen(
        [str(FAKE_TRAINER), "-m", "trainer", "--spec", spec_url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_the_fake_stops_on_sigterm_with_a_checkpoint_and_resumes_from_it(tmp_path):
    _ControlPlane.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _ControlPlane)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    blobs = tmp_path / "blobs"
    (blobs / "files").mkdir(parents=True)
    (blobs / "files" / "train").write_bytes(chat_dataset(40))

    def spec(attempt: int) -> str:
        written = TrainSpec(
            job_id="ftjob-fake",
            attempt=attempt,
            fine_tuned_model="ft:hone-tiny:p::ftjob-fake",
            model_name="hone-tiny",
            model_source="builtin:hone-tiny",
            model_cache_dir=str(tmp_path / "unused"),
            storage_url=blobs.as_uri(),
            training_file=FileRef("files/train", "openai_chat"),
            validation_file=None,
            method="supervised",
            seed=3,
            output_prefix="jobs/ftjob-fake/",
            callback_url=f"http://127.0.0.1:{httpd.server_port}",
            token="t",
            hyperparameters=Hyperparameters(n_epochs=1, batch_size=1, learning_rate=1e-3),
        )
        (blobs / "jobs" / "ftjob-fake").mkdir(parents=True, exist_ok=True)
        (blobs / "jobs" / "ftjob-fake" / "spec.json").write_bytes(written.to_json())
        return (blobs / "jobs" / "ftjob-fake" / "spec.json").as_uri()

    def steps() -> list[int]:
        return [
            e["data"]["step"]
            for kind, body in _ControlPlane.bodies
            if kind == "report"
            for e in body["events"]
            if e["type"] == "metrics"
        ]

    try:
        first = _launch(spec(1), 1)
        wait_for(lambda: len(steps()) >= 3, timeout=60, what="three fake steps reported")
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=30)[0].decode()
        assert first.returncode == ExitCode.STOPPED, output
        stopped_at = max(steps())
        assert (blobs / "jobs" / "ftjob-fake" / "checkpoints" / f"step-{stopped_at}" / "COMPLETE").exists()
        assert any(
            c["step"] == stopped_at
            for kind, body in _ControlPlane.bodies
            if kind == "report"
            for c in body["checkpoints"]
        )
        assert all(json.loads(line)["job_id"] == "ftjob-fake" for line in output.splitlines())  # the real logs

        started = time.monotonic()
        second = _launch(spec(2), 2)
        output = second.communicate(timeout=60)[0].decode()
        assert second.returncode == ExitCode.OK, output
        assert time.monotonic() - started < 30
        events = [e["message"] for kind, body in _ControlPlane.bodies if kind == "report" for e in body["events"]]
        assert f"Resumed from checkpoint at step {stopped_at} (attempt 2)" in events
        assert sorted(set(steps())) == list(range(1, 41))
        [(kind, completion)] = [(k, b) for k, b in _ControlPlane.bodies if k == "complete"]
        assert completion["adapter_prefix"] == "jobs/ftjob-fake/adapter/" and completion["trained_tokens"] > 0
        rows = (blobs / "jobs" / "ftjob-fake" / "result.csv").read_text().splitlines()
        assert rows[0].split(",") == outputs.RESULT_COLUMNS and len(rows) == 41
    finally:
        httpd.shutdown()


def test_the_fake_cannot_import_torch():
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runpy; sys.argv = ['x', '--help'];"
            "runpy.run_module('tests.fake_trainer', run_name='not_main');"
            "import torch",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "ModuleNotFoundError: import of torch halted" in probe.stderr, probe.stderr
