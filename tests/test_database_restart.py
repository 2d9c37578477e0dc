"""PostgreSQL restarted while a job trains: the control plane answers 503 `database_unavailable` while it is
down, reconnects when it is back, and the job finishes with every event and checkpoint; the trainer rides the
outage out (its reports are retried), so no attempt is lost.

The trainer is the FAKE one (tests/fake_trainer: the real entry point and reporter, whose retries are the point
here; no torch, fake steps of 0.25 s, so training spans the outage as a real one does).

The cluster is the test's own (initdb on a free port, as the `postgres` user: initdb refuses root), never the
shared one on 5432, which other tests use."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support import HoneServer, all_events, chat_line, fake_trainer_env, free_port, jsonl, wait_job

PG_BIN = Path("/usr/lib/postgresql/15/bin")
STEPS_PER_EPOCH = 24


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, owned by the `postgres` user."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="hone-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres(
            PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"
        )
        self.start()

    def _as_postgres(self, *args, timeout: float = 120) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, args)],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres():
    cluster = PrivatePostgres()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_postgres_restart_mid_job_the_job_succeeds_and_the_api_answers_503_meanwhile(private_postgres, tmp_path):
    server = HoneServer(
        tmp_path / "srv",
        {"HONE_DATABASE_URL": private_postgres.url, "HONE_LOCAL_SLOTS": "1", **fake_trainer_env(step_s=0.25)},
    )
    try:
        project = server.new_project("restart")
        client = project.openai()
        rows = [
            chat_line(f"Add {i} and {i} please" + " now" * 12, f"The sum is {2 * i}.") for i in range(STEPS_PER_EPOCH)
        ]
        train = client.files.create(file=("train.jsonl", jsonl(rows)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny",
            training_file=train.id,
            seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 1}}},
        )

        def training(j):  # a few steps reported: the trainer is past loading, mid-epoch
            steps = [e for e in all_events(client, j.id) if e.type == "metrics"]
            return j.status == "running" and len(steps) >= 2

        wait_job(client, job.id, training, timeout=240)

        private_postgres.stop("fast")  # cuts every connection the control plane holds
        down_at = time.monotonic()
        try:
            with project.http() as http:
                resp = http.get(f"/v1/fine_tuning/jobs/{job.id}")
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "database_unavailable"
            assert resp.json()["error"]["type"] == "server_error"
            assert resp.headers["retry-after"] == "5"
            time.sleep(max(0.0, 5 - (time.monotonic() - down_at)))  # the trainer keeps training meanwhile
        finally:
            private_postgres.start()

        # The API answers again at once: the outage retired the dead connections, and new ones are made.
        started = time.monotonic()
        assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
        assert time.monotonic() - started < 10

        done = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=300)
        events = all_events(client, job.id)
        messages = [e.message for e in events]
        steps = sorted(e.data["step"] for e in events if e.type == "metrics")
        assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # every step's report, once
        assert not [m for m in messages if m.startswith(("Trainer exited", "Fine-tuning job resumed"))], messages
        ckpts = sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id))
        assert ckpts == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
        assert messages[-1] == "The job has successfully completed"
        assert done.fine_tuned_model in {m.id for m in client.models.list()}
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert not [r for r in lines if r["msg"] == "unhandled error"]  # no request ended in a 500: they answered 503
    # Each loop says once that the database is gone (no traceback per step) and once that it is back.
    failed = Counter(r["loop"] for r in lines if r["msg"].startswith("background loop step failed"))
    assert failed and max(failed.values()) <= 2, failed  # not one per step (about 15 each in 5 s)
    assert {r.get("code") for r in lines if r["msg"].startswith("background loop step failed")} == {
        "database_unavailable"
    }
    assert {r["loop"] for r in lines if r["msg"] == "background loop recovered"} == set(failed)


def test_a_trainer_exit_seen_while_the_database_is_down_is_recorded_once_it_is_back(tmp_path):
    """The executor forgets a run once reaped: an exit whose write failed used to be lost, leaving its job
    `running` for ever. Here the database is a real SQLite file that cannot be opened, then the real one."""
    from sqlalchemy import select

    from service.context import AppContext
    from service.db import Database
    from service.db.tables import Job, Project
    from service.executors.local import LocalExecutor
    from service.scheduler import Scheduler
    from service.settings import Settings

    crasher = tmp_path / "storage-error.sh"  # a trainer whose storage failed after its retries
    crasher.write_text("#!/bin/sh\necho 'storage failed writing jobs/x' >&2\nexit 74\n")
    crasher.chmod(0o755)
    settings = Settings(
        data_dir=tmp_path / "data", admin_api_key="adm", trainer_python=str(crasher), max_job_attempts=1
    )
    ctx = AppContext.build(settings)
    executor = LocalExecutor(settings)
    ref = executor.launch("ftjob-x", 1, "file:///nowhere/jobs/ftjob-x/spec.json")
    with ctx.db.write() as session:
        session.add(Project(id="proj_a", name="a", slug="a", created_at=0))
        session.flush()
        session.add(
            Job(
                id="ftjob-x",
                project_id="proj_a",
                model="hone-tiny",
                base_model="hone-tiny",
                status="running",
                created_at=0,
                training_file="file-x",
                method={"type": "supervised"},
                seed=1,
                result_files=[],
                attempts=1,
                executor_ref=ref,
            )
        )
    executor._runs["ftjob-x"].process.wait(30)
    scheduler = Scheduler(ctx, executor)

    database, ctx.db = ctx.db, Database(f"sqlite:///{tmp_path / 'missing' / 'hone.db'}")  # cannot be opened
    try:
        with pytest.raises(Exception) as raised:
            scheduler.tick()
        assert "unable to open database file" in str(raised.value)
        assert executor.running() == {}  # reaped: only the scheduler remembers the exit now
    finally:
        ctx.db.dispose()
        ctx.db = database
    scheduler.tick()
    with ctx.db.read() as session:
        job = session.execute(select(Job).where(Job.id == "ftjob-x")).scalar_one()
    assert job.status == "failed" and job.error["code"] == "trainer_failed"
    assert "exited with code 74 (storage unavailable)" in job.error["message"]
    assert b"storage failed" in ctx.storage.read_bytes("jobs/ftjob-x/logs/attempt-1.log")
    ctx.db.dispose()
