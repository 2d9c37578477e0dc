"""A trainer that cannot hang, and reads that never break (issue 16).

Real servers, real trainer subprocesses, real signals: a diverging run fails at once and frees the slot, a frozen
trainer (SIGSTOP) is killed for its silence and the attempt counted, a cancel ends a frozen trainer, a crashed
thread ends its process, and rows holding NaN or odd shapes still read. Divergence is the real trainer's to find
(`robust_server`); stalls, cancels and the queue are the control plane's, shown with the FAKE trainer
(`fake_robust_server`, tests/fake_trainer: the real entry point, reporter and heartbeats, no torch, fake steps)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import create_engine, insert, update

from service.db.tables import Checkpoint, Job, JobEvent
from tests.support import (
    REPO,
    HoneServer,
    all_events,
    chat_line,
    fake_trainer_env,
    free_port,
    jsonl,
    one_label_tickets,
    trainer_pids,
    wait_for,
    wait_job,
)

STALL_TIMEOUT_S = 12  # trainers beat every 2 s (a sixth of it): a healthy one is never silent this long


@pytest.fixture(scope="module")
def robust_server(tmp_path_factory):
    # One slot, so a second job really waits behind the first; two attempts, so a stall twice fails the job.
    srv = HoneServer(
        tmp_path_factory.mktemp("robustness"),
        {"HONE_LOCAL_SLOTS": "1", "HONE_MAX_JOB_ATTEMPTS": "2", "HONE_TRAINER_STALL_TIMEOUT_S": str(STALL_TIMEOUT_S)},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fake_robust_server(tmp_path_factory):
    """As `robust_server`, on the FAKE trainer (its heartbeats are the real Reporter's)."""
    srv = HoneServer(
        tmp_path_factory.mktemp("robustness-fake"),
        {
            "HONE_LOCAL_SLOTS": "1",
            "HONE_MAX_JOB_ATTEMPTS": "2",
            "HONE_TRAINER_STALL_TIMEOUT_S": str(STALL_TIMEOUT_S),
            **fake_trainer_env(),
        },
    )
    yield srv
    srv.stop()


def start_job(client, rows: list[dict], **hyperparameters):
    train = client.files.create(file=("train.jsonl", jsonl(rows)), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=train.id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )


def long_rows(n: int = 60) -> list[dict]:
    return [chat_line(f"Add {i} and {i} please" + " now" * 20, f"The sum is {2 * i}.") for i in range(n)]


def wait_trainer(client, job_id: str, other_than: int | None = None) -> int:
    """The pid of the job's running trainer (a new one when `other_than` is given)."""

    def found():
        if client.fine_tuning.jobs.retrieve(job_id).status != "running":
            return None
        pids = [p for p in trainer_pids(job_id) if p != other_than]
        return pids[0] if pids else None

    return wait_for(found, timeout=120, what="a running trainer")


def started_at(client, job_id: str) -> int:
    return next(e.created_at for e in all_events(client, job_id) if e.message == "Fine-tuning job started")


def test_diverging_job_fails_within_a_minute_and_the_next_job_runs(robust_server):
    client = robust_server.new_project("diverge").openai()
    bad = start_job(client, long_rows(), learning_rate_multiplier=1e6, n_epochs=3, batch_size=2)
    train, _ = one_label_tickets(count=20, seed=11)
    good = start_job(client, train, n_epochs=1, batch_size=4)  # queued behind the bad one: one slot

    failed = wait_job(client, bad.id, lambda j: j.status == "failed", timeout=120)
    assert failed.finished_at - started_at(client, bad.id) <= 60
    assert failed.error.code == "training_diverged"
    assert "Training diverged at step " in failed.error.message
    assert "learning_rate_multiplier" in failed.error.message
    assert failed.fine_tuned_model is None
    assert not (robust_server.data_dir / "blobs" / "jobs" / bad.id / "adapter").exists()  # no NaN adapter published
    wait_for(lambda: trainer_pids(bad.id) == [], timeout=10, what="the diverged trainer's exit")

    wait_job(client, good.id, lambda j: j.status == "succeeded", timeout=180)
    assert started_at(client, good.id) >= failed.finished_at  # it waited for the slot, and got it
    messages = [e.message for e in all_events(client, good.id)]
    assert not any("stalled" in m for m in messages)  # a healthy trainer's heartbeats kept it alive


def test_frozen_trainer_is_killed_and_counted_as_trainer_stalled(fake_robust_server):
    client = fake_robust_server.new_project("stall").openai()
    job = start_job(client, long_rows(), n_epochs=20, batch_size=1)
    first = wait_trainer(client, job.id)
    os.kill(first, signal.SIGSTOP)  # a real hang: every thread frozen, the reporter's too
    frozen_at = time.monotonic()

    second = wait_trainer(client, job.id, other_than=first)  # killed, requeued, relaunched
    assert STALL_TIMEOUT_S - 1 <= time.monotonic() - frozen_at <= STALL_TIMEOUT_S + 30
    assert first not in trainer_pids(job.id)
    os.kill(second, signal.SIGSTOP)

    failed = wait_job(client, job.id, lambda j: j.status == "failed", timeout=STALL_TIMEOUT_S + 60)
    assert failed.error.code == "trainer_stalled"
    assert "2 trainer crashes" in failed.error.message and "stalled" in failed.error.message
    events = all_events(client, job.id)
    stalls = [e for e in events if e.data and e.data.get("code") == "trainer_stalled"]
    assert len(stalls) == 2 and all(e.level == "warn" and e.data["silent_s"] >= STALL_TIMEOUT_S for e in stalls)
    assert any(
        e.message.startswith("Trainer stalled (no report for ") and "attempt 2 of 2" in e.message for e in events
    )
    wait_for(lambda: trainer_pids(job.id) == [], timeout=10, what="the frozen trainer's end")


def test_cancel_ends_a_frozen_trainer(fake_robust_server):
    client = fake_robust_server.new_project("cancel frozen").openai()
    job = start_job(client, long_rows(), n_epochs=20, batch_size=1)
    pid = wait_trainer(client, job.id)
    os.kill(pid, signal.SIGSTOP)  # deaf to SIGTERM until continued
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    wait_for(lambda: trainer_pids(job.id) == [], timeout=5, what="the frozen trainer's end after cancel")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert not any("stalled" in e.message for e in all_events(client, job.id))


CRASH_SCRIPT = """
import threading, time
from trainer.__main__ import exit_on_thread_crash
from trainer.logs import configure_logging
configure_logging()
exit_on_thread_crash()
threading.Thread(target=lambda: 1 / 0, name="reporter").start()
time.sleep(60)
"""


def test_a_crashed_thread_ends_the_trainer_process():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 70, proc.stderr  # EX_SOFTWARE: the scheduler counts it as a crash
    assert time.monotonic() - started < 30
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith(b"{")]
    assert any(
        r["msg"].startswith("thread reporter crashed: ZeroDivisionError") and r["level"] == "critical" for r in lines
    ), proc.stderr


class _ControlPlane(BaseHTTPRequestHandler):
    """Records the reports a Reporter sends and answers as the control plane does, heartbeat interval included."""

    bodies: list = []
    raw: list = []

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["content-length"]))
        type(self).raw.append(raw)
        type(self).bodies.append(json.loads(raw))
        reply = json.dumps({"status": "running", "heartbeat_s": 0.2}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_reporter_sends_nan_as_null_and_beats_only_while_the_main_thread_lives():
    from trainer.reporting import Reporter, main_thread

    _ControlPlane.bodies, _ControlPlane.raw = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _ControlPlane)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    reporter = Reporter(f"http://127.0.0.1:{httpd.server_port}", "token", "ftjob-r")
    try:
        reporter.event(
            "Step 2/9: training loss=nan", type="metrics", data={"step": 2, "train_loss": math.nan}, key="step:2"
        )
        reporter.progress(train_loss=math.inf, step=2)
        assert reporter.flush(timeout=10)  # a NaN used to kill the reporter thread, and this waited forever
        assert not any(b"NaN" in raw or b"Infinity" in raw for raw in _ControlPlane.raw)  # valid JSON only
        sent = [b for b in _ControlPlane.bodies if b["events"]]
        assert sent[0]["events"][0]["data"] == {"step": 2, "train_loss": None}
        assert any(b["progress"] == {"train_loss": None, "step": 2} for b in _ControlPlane.bodies)

        with main_thread.busy():  # e.g. one long training step: beats go on at the control plane's pace
            before = len(_ControlPlane.bodies)
            time.sleep(2)
            beats = _ControlPlane.bodies[before:]
        assert len(beats) >= 4 and all(b == {"events": [], "checkpoints": [], "progress": {}} for b in beats)

        time.sleep(0.5)  # the main thread does nothing now (as if hung): silence, whatever the reporter thread does
        idle_from = len(_ControlPlane.bodies)
        time.sleep(2)
        assert len(_ControlPlane.bodies) == idle_from
    finally:
        reporter.close()
        httpd.shutdown()


class _RefusingControlPlane(_ControlPlane):
    """Refuses (400) any report holding an event whose message says "bad", as a control plane refuses a
    malformed report; answers the rest."""

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["content-length"]))
        body = json.loads(raw)
        bad = any("bad" in e["message"] for e in body.get("events", []))
        if not bad:
            type(self).bodies.append(body)
        reply = json.dumps({"error": "refused"} if bad else {"status": "running", "heartbeat_s": 0.2}).encode()
        self.send_response(400 if bad else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def test_a_refused_report_is_dropped_and_an_unreachable_control_plane_is_given_up():
    from trainer.reporting import Refused, Reporter

    _RefusingControlPlane.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _RefusingControlPlane)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    reporter = Reporter(f"http://127.0.0.1:{httpd.server_port}", "token", "ftjob-r", give_up_after_s=1.5)
    try:
        reporter.event("a bad one", key="bad")
        assert reporter.flush(timeout=10)  # it used to be resent forever, holding back every report behind it
        reporter.event("a good one", key="good")
        assert reporter.flush(timeout=10)
        assert [e["message"] for b in _RefusingControlPlane.bodies for e in b["events"]] == ["a good one"]
        with pytest.raises(Refused):  # a final call refused ends the attempt (a crash) instead of looping
            reporter.call("/complete", {"events": [{"message": "bad"}]})
        assert not reporter.superseded

        httpd.shutdown()
        httpd.server_close()  # gone for good: connections are refused from now on
        started = time.monotonic()
        reporter.event("after the control plane left", key="late")
        assert reporter.flush(timeout=30)  # returns once the reporter gives up (superseded)
        assert reporter.superseded and reporter.lost
        assert 1.5 <= time.monotonic() - started < 15
        assert reporter.call("/complete", {}) == {}  # the run reads this as superseded and exits
    finally:
        reporter.close()


def test_reads_of_a_malformed_row_keep_answering(server, project, client):
    train = client.files.create(
        file=("train.jsonl", jsonl([chat_line(str(i), str(i)) for i in range(12)])), purpose="fine-tune"
    )
    odd = client.fine_tuning.jobs.create(model="hone-tiny", training_file=train.id)
    nan = client.fine_tuning.jobs.create(model="hone-tiny", training_file=train.id)
    # Rows as an older version, a by-hand fix or a bug could leave them (HONE_LOCAL_SLOTS=0: nothing trains).
    odd_row = {
        "method": {"type": 7, "supervised": "lots"},
        "result_files": "file-x",
        "integrations": {"a": 1},
        "error": ["not", "an", "object"],
        "live_metrics": [1, 2],
    }
    # PostgreSQL's json type refuses NaN and Infinity outright; SQLite keeps whatever it is given.
    not_finite = server.backend == "sqlite-fs"
    nan_row = {
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "learning_rate_multiplier": math.inf if not_finite else "much",
                    "n_epochs": math.nan if not_finite else None,
                }
            },
        },
        "live_metrics": {"train_loss": math.nan if not_finite else "x"},
    }
    engine = create_engine(server.database_url)
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == odd.id).values(**odd_row))
        conn.execute(update(Job).where(Job.id == nan.id).values(**nan_row))
        conn.execute(
            insert(JobEvent).values(
                id=f"ftevent-{nan.id[-12:]}x",
                job_id=nan.id,
                created_at=2,
                level="info",
                message="odd",
                type="metrics",
                data={"train_loss": math.nan} if not_finite else [1, 2],
            )
        )
        conn.execute(
            insert(Checkpoint).values(
                id=f"ftckpt_{nan.id[-8:]}x",
                job_id=nan.id,
                created_at=2,
                step_number=3,
                fine_tuned_model_checkpoint="c",
                metrics={"train_loss": math.inf} if not_finite else "odd",
                storage_prefix=f"jobs/{nan.id}/checkpoints/x/",
            )
        )
    engine.dispose()

    with project.http() as http:
        got = http.get(f"/v1/fine_tuning/jobs/{odd.id}")
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["hyperparameters"] == {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
        assert (body["result_files"], body["integrations"], body["error"]) == ([], [], None)

        got = http.get(f"/v1/fine_tuning/jobs/{nan.id}")
        assert got.status_code == 200, got.text
        hp = got.json()["hyperparameters"]
        assert hp["learning_rate_multiplier"] == (None if not_finite else "much")
        assert hp["n_epochs"] is None and hp["batch_size"] == "auto"

        listed = http.get("/v1/fine_tuning/jobs", params={"limit": 100})
        assert listed.status_code == 200, listed.text
        assert {odd.id, nan.id} <= {j["id"] for j in listed.json()["data"]}

        events = http.get(f"/v1/fine_tuning/jobs/{nan.id}/events")
        assert events.status_code == 200, events.text
        odd_event = next(e for e in events.json()["data"] if e["message"] == "odd")
        assert odd_event["data"] == ({"train_loss": None} if not_finite else {})

        ckpts = http.get(f"/v1/fine_tuning/jobs/{nan.id}/checkpoints")
        assert ckpts.status_code == 200, ckpts.text
        assert ckpts.json()["data"][0]["metrics"] == ({"train_loss": None} if not_finite else {})

        for job_id in (odd.id, nan.id):
            cancelled = http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"


def test_a_queued_row_that_makes_no_spec_fails_alone_and_the_queue_moves_on(fake_robust_server):
    project = fake_robust_server.new_project("bad row")
    client = project.openai()
    blocker = start_job(client, long_rows(), n_epochs=20, batch_size=1)  # holds the only slot meanwhile
    wait_trainer(client, blocker.id)
    bad = start_job(client, long_rows(12), n_epochs=1)
    train, _ = one_label_tickets(count=20, seed=13)
    good = start_job(client, train, n_epochs=1, batch_size=4)
    wait_for(lambda: client.fine_tuning.jobs.retrieve(bad.id).status == "queued", what="the bad job queued")
    engine = create_engine(fake_robust_server.database_url)
    with engine.begin() as conn:  # a method no trainer spec can be made from
        conn.execute(
            update(Job)
            .where(Job.id == bad.id)
            .values(method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "lots"}}})
        )
    engine.dispose()
    client.fine_tuning.jobs.cancel(blocker.id)

    with project.http() as http:  # raw reads: the row's odd method is not OpenAI's shape
        failed = wait_for(
            lambda: (j := http.get(f"/v1/fine_tuning/jobs/{bad.id}").json())["status"] == "failed" and j,
            timeout=60,
            what="the bad job failed",
        )
    assert failed["error"]["code"] == "invalid_job" and "malformed" in failed["error"]["message"]
    assert wait_job(client, good.id, lambda j: j.status == "succeeded", timeout=180).fine_tuned_model
