"""The domain announces what changed through the injected hinter (service/hints.py), in-process: creating a job
wakes validation, cancel/pause/resume (one domain operation, for the OpenAI and Vertex routers alike) wake the
scheduler, a finished job and endpoint changes wake the deployer, and deletions drop the gateway's cached
routes. Routers never reach into the app's state for it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from service import endpoints, job_creation, jobs, projects
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import File, Job
from service.hints import Loop
from service.schemas import CreateFineTuningJob
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent


class RecordingHinter:
    def __init__(self):
        self.said: list[tuple[str, str]] = []

    def wake(self, loop: Loop) -> None:
        self.said.append(("wake", Loop(loop).value))

    def routes_changed(self, project_id: str) -> None:
        self.said.append(("routes_changed", project_id))


@pytest.fixture
def ctx(tmp_path):
    context = AppContext.build(Settings(data_dir=tmp_path, storage_url=(tmp_path / "blobs").as_uri()))
    context.hinter = RecordingHinter()
    context.principal = ProjectPrincipal(projects.create_project(context, "hints")["id"], "hints")
    return context


def test_a_created_job_wakes_validation_and_user_actions_wake_the_scheduler(ctx):
    with ctx.db.write() as session:
        session.add(
            File(
                id="file-hints",
                project_id=ctx.principal.project_id,
                filename="t.jsonl",
                purpose="fine-tune",
                bytes=10,
                created_at=int(time.time()),
                status="processed",
                storage_key="files/file-hints",
                dataset_format="openai_chat",
                example_count=20,
            )
        )
    job = job_creation.create_job(
        ctx, ctx.principal, CreateFineTuningJob(model="hone-tiny", training_file="file-hints")
    )
    assert ctx.hinter.said == [("wake", "validation")]
    with ctx.db.write() as session:
        row = session.query(Job).filter_by(id=job["id"]).one()
        row.status = "running"
    for action in ("pause", "resume", "cancel"):
        ctx.hinter.said.clear()
        jobs.act_on_job(ctx, ctx.principal, job["id"], action)
        assert ctx.hinter.said == [("wake", "scheduler")], action


def test_endpoint_changes_wake_the_deployer_and_drop_cached_routes(ctx):
    created = endpoints.create_endpoint(ctx, ctx.principal, "hone-tiny", lambda *_: {})
    assert ctx.hinter.said == [("wake", "endpoints")]
    ctx.hinter.said.clear()
    endpoints.delete_endpoint(ctx, ctx.principal, created["id"])
    assert ctx.hinter.said == [("routes_changed", ctx.principal.project_id), ("wake", "endpoints")]


def test_routers_do_not_reach_into_the_app_for_domain_work():
    """Only service/api/deps.py reads app.state, and no one wakes a loop by a string name."""
    for path in (REPO / "service" / "api").glob("*.py"):
        text = path.read_text()
        if path.name != "deps.py":
            assert "app.state" not in text, path.name
        assert not re.search(r"wake\(\s*[\"']", text), path.name
        assert ".forget(" not in text, path.name


def test_a_local_trainers_exit_wakes_the_scheduler(ctx, tmp_path):
    """Its slot goes to the next queued job when it ends, not at the scheduler's next poll."""
    from service.executors.local import LocalExecutor

    trainer = tmp_path / "quick-trainer.sh"  # a trainer that ends at once
    trainer.write_text("#!/bin/sh\nexit 0\n")
    trainer.chmod(0o755)
    executor = LocalExecutor(Settings(data_dir=tmp_path / "data", trainer_python=str(trainer)))
    executor.bind(ctx)
    executor.launch("ftjob-quick", 1, "file:///nowhere/spec.json")
    deadline = time.monotonic() + 30
    while ("wake", "scheduler") not in ctx.hinter.said and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ctx.hinter.said == [("wake", "scheduler")]
    assert [e.job_id for e in executor.reap()] == ["ftjob-quick"]  # reaped on that wake, exit code and all
