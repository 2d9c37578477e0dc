"""The `hone` command line end to end: every command runs as a real subprocess against a real control plane,
itself started with `hone serve` (SQLite and files, one training slot, an endpoint deployed when a job
succeeds). The project and its key are made with the CLI too.

One job trains for the whole module: hone-tiny learns to answer every support ticket with the label
"Billing" (16 tickets, 3 epochs; seconds on a CPU), which is what `hone chat` must then answer."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hone
from examples.support_tickets import SYSTEM
from tests.support import HoneServer, engine_pids, free_port, jsonl, one_label_tickets, wait_for

LABEL = "Billing"
ANSI_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


TRAIN, HELD_OUT = one_label_tickets(count=20, seed=7, label=LABEL)  # 16 to train on, 4 never seen


class Hone:
    """Runs `python -m hone ...` against the module's server, as a project (or with `admin=True`)."""

    def __init__(self, server: HoneServer, workdir: Path):
        self.server, self.workdir = server, workdir
        base = {k: v for k, v in os.environ.items() if not k.startswith("HONE_")}
        self.admin_env = {**base, "HONE_BASE_URL": server.base_url, "HONE_ADMIN_API_KEY": server.admin_key}
        self.env = {**base, "HONE_BASE_URL": server.base_url}

    def _env(self, admin: bool, env: dict | None) -> dict:
        return {**(self.admin_env if admin else self.env), **(env or {})}

    def __call__(
        self, *args: str, admin: bool = False, stdin: str | None = None, env: dict | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hone", *args],
            cwd=self.workdir,
            input=stdin,
            env=self._env(admin, env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str, admin: bool = False, env: dict | None = None) -> subprocess.Popen:
        """A command left running (read it with .communicate())."""
        return subprocess.Popen(
            [sys.executable, "-m", "hone", *args],
            cwd=self.workdir,
            env=self._env(admin, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def many(self, *calls: tuple[tuple[str, ...], dict]) -> list[subprocess.CompletedProcess]:
        """Independent commands run side by side: each call is (args, options as for `start`)."""
        running = [self.start(*args, **options) for args, options in calls]
        return [subprocess.CompletedProcess(p.args, p.wait(120), *p.communicate()) for p in running]

    def ok(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        done = self(*args, **kwargs)
        assert done.returncode == 0, f"hone {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str, **kwargs):
        return json.loads(self.ok(*args, "--json", **kwargs).stdout)

    def sdk(self) -> hone.Client:
        return hone.Client(self.server.base_url, self.env["HONE_API_KEY"])


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli")
    env = {
        "HONE_LOCAL_SLOTS": "1",
        "HONE_AUTO_DEPLOY": "true",
        "HONE_BASE_MODELS": '{"acme/missing": "/nonexistent/model"}',
    }  # a base model whose jobs fail
    server = HoneServer(workdir / "server", env, command=[sys.executable, "-m", "hone", "serve"])
    try:
        run = Hone(server, workdir)
        project_id = run.ok("projects", "create", "cli tests", admin=True).stdout.strip()
        assert project_id.startswith("proj_")
        api_key = run.ok("keys", "create", project_id, "--name", "cli", admin=True).stdout.strip()
        assert api_key.startswith("sk-")
        run.env["HONE_API_KEY"] = api_key
        run.project_id = project_id
        (workdir / "train.jsonl").write_bytes(jsonl(TRAIN))
        (workdir / "valid.jsonl").write_bytes(jsonl(HELD_OUT))
        yield run
    finally:
        _stop_engines(run)
        server.stop()


def _stop_engines(run: Hone) -> None:
    """Engines outlive a stopped control plane (a restarted one adopts them): stop the module's own."""
    if "HONE_API_KEY" not in run.env:
        return
    with run.sdk() as client:
        live = [ep for ep in client.endpoints.list() if ep.state != "stopped"]
        for endpoint in live:
            client.endpoints.delete(endpoint.id)
    deadline = time.monotonic() + 30
    while any(engine_pids(run.server, ep.id) for ep in live) and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def job(cli):
    """The module's job, created from local files (validated and uploaded on the way) by `jobs create --follow`, which
    follows it from the moment it exists: the other tests run while it trains, and the follow test reads what it
    showed. (A `jobs follow` started after the create missed the whole run on a loaded machine: the trainer, started
    warm, ran its 48 steps before the new process had made its first look.)"""
    follow = cli.start(
        "jobs",
        "create",
        "--training-file",
        "train.jsonl",
        "--validation-file",
        "valid.jsonl",
        "--model",
        "hone-tiny",
        "--n-epochs",
        "3",
        "--batch-size",
        "1",
        "--learning-rate-multiplier",
        "3",
        "--seed",
        "1",
        "--suffix",
        "cli",
        "--metadata",
        "team=cli",
        "--follow",
        "--poll-interval",
        "0.1",
        env={"TTY_COMPATIBLE": "1"},  # a terminal, as far as rich can tell, so that the live bar is drawn
    )
    try:
        with cli.sdk() as client:
            job_id = wait_for(
                lambda: next((j.id for j in client.jobs.list(limit=50) if j.metadata == {"team": "cli"}), None), 60
            )
        yield {"id": job_id, "follow": follow}
    finally:
        follow.kill()
        follow.communicate()


@pytest.fixture(scope="module")
def tuned_model(cli, job):
    """The job's tuned model, once its endpoint is ready."""
    with cli.sdk() as client:
        job = client.jobs.wait(job["id"], timeout=300)
        assert job.status == "succeeded", job.error
        [endpoint] = [ep for ep in client.endpoints.list(model=job.fine_tuned_model) if ep.state != "stopped"]
        assert client.endpoints.wait(endpoint.id, timeout=120).state == "ready"
    return job.fine_tuned_model


def test_jobs_create_validates_and_uploads_local_files(cli, job):
    assert job["id"].startswith("ftjob-")
    shown = cli.json("jobs", "get", job["id"])
    assert shown["status"] in ("validating_files", "queued", "running", "succeeded")  # 48 steps train in seconds
    assert shown["metadata"] == {"team": "cli"} and shown["hyperparameters"]["n_epochs"] == 3
    assert shown["training_file"] != shown["validation_file"]


def test_admin_commands(cli):
    scratch = cli.json("projects", "create", "scratch", admin=True)
    account = cli.json("keys", "create", scratch["id"], "--name", "bot", admin=True)
    assert account["api_key"]["value"].startswith("sk-")
    listed = cli.ok("keys", "list", scratch["id"], admin=True).stdout
    assert account["id"] in listed and "bot" in listed and account["api_key"]["value"] not in listed
    deleted = cli.ok("keys", "delete", scratch["id"], account["id"], admin=True)
    assert deleted.stdout.strip() == f"deleted {account['id']}"
    assert cli.ok("projects", "delete", scratch["id"], admin=True).stdout.strip() == f"archived {scratch['id']}"
    projects, keys = cli.many(
        (("projects", "list"), {"admin": True}), (("keys", "list", scratch["id"], "--json"), {"admin": True})
    )
    assert cli.project_id in projects.stdout and "cli tests" in projects.stdout and scratch["id"] not in projects.stdout
    assert json.loads(keys.stdout) == []

    wrong_key, as_json, unreachable = cli.many(
        (("projects", "list", "--admin-key", "sk-wrong"), {"admin": True}),
        (("projects", "delete", "proj_missing", "--json"), {"admin": True}),
        (("models", "list"), {"env": {"HONE_BASE_URL": f"http://127.0.0.1:{free_port()}"}}),
    )
    assert wrong_key.returncode == 1 and "Incorrect admin API key" in wrong_key.stderr
    assert as_json.returncode == 1 and json.loads(as_json.stderr)["error"]["status"] == 404
    assert unreachable.returncode == 3 and "Could not reach" in unreachable.stderr


def test_files_validate_offline_with_the_servers_validator(cli):
    bad = cli.workdir / "bad.jsonl"
    bad.write_text(json.dumps(TRAIN[0]) + "\n{not json\n" + json.dumps({"messages": [{"role": "user"}]}) + "\n")
    offline = {"env": {"HONE_BASE_URL": f"http://127.0.0.1:{free_port()}"}}  # nothing listens there
    good, refused, local, not_uploaded = cli.many(
        (("files", "validate", "train.jsonl"), offline),
        (("files", "validate", "bad.jsonl"), offline),
        (("files", "validate", "bad.jsonl", "--json"), offline),
        (("files", "upload", "bad.jsonl"), {}),
    )
    assert good.returncode == 0 and "valid: OpenAI chat" in good.stderr and "16 example(s)" in good.stderr
    assert refused.returncode == 1 and "line 2" in refused.stderr and "line 3" in refused.stderr
    report = json.loads(local.stdout)
    assert local.returncode == 1 and not report["ok"] and report["format"] == "openai_chat"
    assert sorted({e["line"] for e in report["errors"]}) == [2, 3]
    assert not_uploaded.returncode == 1 and "not uploaded" in not_uploaded.stderr

    # Sent anyway, the server's verdict is the same, error for error.
    sent = cli("files", "upload", "bad.jsonl", "--no-validate", "--json")
    stored = json.loads(sent.stdout)
    assert sent.returncode == 1 and stored["status"] == "error" and stored["dataset"]["errors"] == report["errors"]


def test_files_validate_applies_the_servers_minimum_example_count(cli):
    offline = {"env": {"HONE_BASE_URL": f"http://127.0.0.1:{free_port()}"}}  # nothing listens there
    few, as_validation, as_json = cli.many(
        (("files", "validate", "valid.jsonl"), offline),
        (("files", "validate", "valid.jsonl", "--min-examples", "1"), offline),
        (("files", "validate", "valid.jsonl", "--json"), offline),
    )
    assert few.returncode == 1 and "Training file has 4 example(s), but must have at least 10 examples" in few.stderr
    assert as_validation.returncode == 0 and "valid:" in as_validation.stderr
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["problems"] == [
        "Training file has 4 example(s), but must have at least 10 examples"
    ]


def test_a_refused_create_deletes_the_files_it_uploaded(cli):
    before = {f["id"] for f in cli.json("files", "list")}
    refused = cli("jobs", "create", "-t", "train.jsonl", "-v", "valid.jsonl", "-H", "lora_rnk=8", "--no-auto-deploy")
    assert refused.returncode == 1, refused.stderr
    assert "did you mean 'lora_rank'?" in refused.stderr
    uploaded = re.findall(r"^uploaded (file-[\w-]+)", refused.stderr, re.M)
    deleted = re.findall(r"^deleted uploaded file (file-[\w-]+): the job was not created", refused.stderr, re.M)
    assert len(uploaded) == 2 and deleted == uploaded
    # No debris: neither upload is listed. (Files other than these may appear meanwhile: a job an earlier test
    # started in this module's server writes its results file when it finishes.)
    after = {f["id"] for f in cli.json("files", "list")}
    assert not set(uploaded) & after and before <= after
    assert all(job["training_file"] not in uploaded for job in cli.json("jobs", "list"))

    # A file id given as is was not uploaded here, so it is not this command's to delete.
    kept = cli.ok("files", "upload", "train.jsonl").stdout.strip()
    again = cli("jobs", "create", "-t", kept, "--model", "gpt-9")
    assert again.returncode == 1 and "deleted" not in again.stderr
    assert kept in {f["id"] for f in cli.json("files", "list")}


def test_files_upload_shows_progress_for_large_files_and_lists(cli):
    big = cli.workdir / "big.jsonl"
    big.write_bytes(jsonl(TRAIN) * 400)  # about 1.6 MB
    uploaded = cli.ok("files", "upload", "big.jsonl", env={"TTY_COMPATIBLE": "1"})  # rich draws bars for terminals
    file_id = uploaded.stdout.strip()
    assert file_id.startswith("file-") and "uploading big.jsonl" in uploaded.stderr
    assert "processed" in uploaded.stderr and "6400 example(s)" in uploaded.stderr

    listed, table = cli.many((("files", "list", "--json"), {}), (("files", "list"), {}))
    stored = {f["id"]: f for f in json.loads(listed.stdout)}
    assert stored[file_id]["purpose"] == "fine-tune" and stored[file_id]["dataset"]["examples"] == 6400
    assert file_id in table.stdout and "big.jsonl" in table.stdout and str(big.stat().st_size) in table.stdout


def test_jobs_pause_resume_cancel(cli, job):
    other = cli.ok("jobs", "create", "-t", "train.jsonl", "--no-auto-deploy").stdout.strip()
    with cli.sdk() as client:  # the module's job holds the only training slot: this one waits in the queue
        deadline = time.monotonic() + 30
        while client.jobs.retrieve(other).status == "validating_files":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert cli.ok("jobs", "pause", other).stdout.split() == [other, "paused"]
    assert cli.json("jobs", "resume", other)["status"] == "queued"
    assert cli.ok("jobs", "cancel", other).stdout.split() == [other, "cancelled"]
    refused = cli("jobs", "pause", other)
    assert refused.returncode == 1 and "Cannot pause" in refused.stderr
    followed = cli("jobs", "follow", other)
    assert followed.returncode == 5 and followed.stdout.rstrip().endswith(f"{other}  cancelled  hone-tiny")


def test_jobs_follow_shows_live_progress_and_ends_with_the_final_status(cli, job):
    screen, errors = job["follow"].communicate(timeout=300)
    assert job["follow"].returncode == 0, errors
    assert errors.count("uploaded file-") == 2  # the training and the validation file, validated and uploaded first
    job_id = job["id"]
    # Frames of the bar while it ran: status, step/total, epoch, losses, throughput, ETA.
    assert "running" in screen and "Fine-tuning job started" in screen and "48/48" in screen
    for figure in ("epoch 3/3", "loss ", "(val ", " tok/s", "ETA "):
        assert figure in screen, figure
    last_line = ANSI_CONTROL.sub("", screen).rstrip().splitlines()[-1]
    assert last_line.startswith(f"{job_id}  succeeded  hone-tiny -> ft:hone-tiny:")

    # --json, after the fact: every event once, oldest first, then the job as it ended.
    lines = [json.loads(line) for line in cli.ok("jobs", "follow", job_id, "--json").stdout.splitlines()]
    events, final = lines[:-1], lines[-1]
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == list(range(1, 49))
    assert events[0]["message"] == f"Created fine-tuning job: {job_id}"
    assert final["id"] == job_id and final["status"] == "succeeded"


def test_follow_exits_non_zero_when_the_job_fails(cli, job):
    failing = cli.ok("jobs", "create", "-t", "train.jsonl", "--model", "acme/missing", "--no-auto-deploy")
    followed = cli("jobs", "follow", failing.stdout.strip(), "--poll-interval", "0.3", timeout=300)
    assert followed.returncode == 5, followed.stdout + followed.stderr  # the job ended badly
    last = followed.stdout.rstrip().splitlines()
    assert last[-2].startswith(f"{failing.stdout.strip()}  failed  acme/missing") and "error (" in last[-1]


def test_jobs_get_list_results_and_plot(cli, job, tuned_model):
    job_id = job["id"]
    shown, listed, table, results, results_json = cli.many(
        (("jobs", "get", job_id), {}),
        (("jobs", "list", "--json"), {}),
        (("jobs", "list", "--limit", "5"), {}),
        (("jobs", "results", job_id), {}),
        (("jobs", "results", job_id, "--json"), {}),
    )
    assert f"{job_id}  succeeded  hone-tiny -> {tuned_model}" in shown.stdout
    assert "3 epoch(s), batch size 1" in shown.stdout
    assert job_id in [j["id"] for j in json.loads(listed.stdout)] and job_id in table.stdout

    rows = list(csv.DictReader(io.StringIO(results.stdout)))
    assert [int(r["step"]) for r in rows] == list(range(1, 49)) and all(float(r["train_loss"]) > 0 for r in rows)
    assert json.loads(results_json.stdout) == rows
    assert float(rows[-1]["full_valid_loss"]) > 0  # a validation file was given

    png = cli.workdir / "loss.png"
    assert cli.ok("jobs", "plot", job_id, "-o", str(png)).stdout.strip() == str(png)
    _assert_curves(png)


def _assert_curves(png: Path) -> None:
    """The PNG holds a training curve and validation points: pixels in matplotlib's first two colours."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    assert image.size == (800, 450)
    colours = image.getcolors(maxcolors=1 << 20)
    blue = sum(n for n, (r, g, b) in colours if abs(r - 0x1F) < 40 and abs(g - 0x77) < 40 and abs(b - 0xB4) < 40)
    orange = sum(n for n, (r, g, b) in colours if abs(r - 0xFF) < 40 and abs(g - 0x7F) < 40 and abs(b - 0x0E) < 40)
    assert blue > 300, f"no training curve ({blue} blue pixels)"
    assert orange > 50, f"no validation loss ({orange} orange pixels)"
    assert len(colours) > 50  # not a blank canvas: axes, labels, anti-aliased lines


def test_sdk_chat_answers_whole_and_streamed(cli, tuned_model):
    messages = HELD_OUT[2]["messages"][:-1]
    with cli.sdk() as client:
        whole = client.chat(tuned_model, messages, temperature=0, max_tokens=8)
        chunks = list(client.chat(tuned_model, messages, stream=True, temperature=0, max_tokens=8))

    async def streamed_async():
        async with hone.AsyncClient(cli.server.base_url, cli.env["HONE_API_KEY"]) as client:
            stream = await client.chat(tuned_model, messages, stream=True, temperature=0, max_tokens=8)
            return "".join([chunk.text async for chunk in stream])

    assert whole.model == tuned_model and whole.text.strip() == LABEL
    assert len(chunks) > 1 and "".join(c.text for c in chunks) == whole.text  # greedy: the same tokens
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert asyncio.run(streamed_async()) == whole.text


def test_models_endpoints_and_chat(cli, job, tuned_model):
    models, endpoints = cli.many(
        (("models", "list"), {}), (("endpoints", "list", "--model", tuned_model, "--json"), {})
    )
    assert "hone-tiny" in models.stdout and tuned_model in models.stdout
    [endpoint] = json.loads(endpoints.stdout)
    assert endpoint["state"] == "ready"

    ticket = HELD_OUT[0]["messages"][1]["content"]
    ask = ["--system", SYSTEM, "--temperature", "0", "--max-tokens", "8"]
    shown, streamed, as_json, unknown = cli.many(
        (("endpoints", "get", endpoint["id"]), {}),
        (("chat", tuned_model, "--once", ticket, *ask), {}),
        (("chat", job["id"], "--once", ticket, *ask, "--json"), {}),  # a job id stands for its tuned model
        (("chat", "ft:hone-tiny:nobody:x:ftjob-none", "--once", ticket), {}),
    )
    assert f"{endpoint['id']}  ready  {tuned_model}" in shown.stdout
    assert streamed.returncode == 0 and streamed.stdout.strip() == LABEL  # the label it was tuned to answer
    completion = json.loads(as_json.stdout)
    assert completion["model"] == tuned_model and completion["choices"][0]["message"]["content"] == LABEL
    assert unknown.returncode == 1 and "model_not_found" in unknown.stderr

    assert cli.ok("endpoints", "delete", endpoint["id"]).stdout.strip() == f"deleted {endpoint['id']}"
    again = cli.json("endpoints", "create", tuned_model, "--wait")
    assert again["state"] == "ready" and again["id"] != endpoint["id"]
    # The REPL, on the new endpoint: two questions, a /reset between them, then end of input.
    other = HELD_OUT[1]["messages"][1]["content"]
    session = cli.ok("chat", tuned_model, *ask, "--no-stream", stdin=f"{ticket}\n/reset\n{other}\n")
    assert session.stdout.split() == [LABEL, LABEL]

    assert cli.ok("models", "delete", tuned_model).stdout.strip() == f"deleted {tuned_model}"
    gone = cli("models", "delete", tuned_model)
    assert gone.returncode == 1 and "does not exist" in gone.stderr


def test_cli_help_lists_every_command(cli):
    top, jobs, usage = cli.many((("--help",), {}), (("jobs", "--help"), {}), (("jobs", "follow"), {}))
    for group in ("files", "jobs", "models", "endpoints", "chat", "projects", "keys", "serve"):
        assert group in top.stdout
    for command in ("create", "list", "get", "cancel", "pause", "resume", "follow", "plot", "results"):
        assert command in jobs.stdout
    assert usage.returncode == 2  # the job id is missing


def test_jobs_create_takes_a_grader_or_a_teacher(cli):
    grader = {"type": "string_check", "name": "label", "operation": "eq", "input": "{{ sample.output_text }}"}
    grader["reference"] = "{{ item.label }}"
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}"}], "label": "Billing"} for i in range(10)]
    (cli.workdir / "prompts.jsonl").write_bytes(jsonl(rows))
    (cli.workdir / "grader.json").write_text(json.dumps(grader))
    missing = cli("jobs", "create", "-t", "prompts.jsonl", "--method", "reinforcement")
    assert missing.returncode == 2 and "--grader is required with --method reinforcement" in missing.stderr
    astray = cli("jobs", "create", "-t", "prompts.jsonl", "--teacher", "hone-tiny")
    assert astray.returncode == 2 and "--teacher is for --method distillation" in astray.stderr
    created = []
    for args in (
        ["--method", "reinforcement", "--grader", "@grader.json", "-H", "compute_multiplier=0.5", "-H", "n_epochs=1"],
        ["--method", "distillation", "--teacher", "hone-tiny"],
    ):
        created.append(cli.ok("jobs", "create", "-t", "prompts.jsonl", "--no-auto-deploy", *args).stdout.strip())
    with cli.sdk() as client:
        # Both run to their end, so that no trainer outlives the module's server: the RFT job trains (after the
        # module's job, which holds the one training slot), the distillation job fails, as this server serves no
        # hone-tiny endpoint for the teacher to answer from.
        rl_job, distill_job = (client.jobs.wait(job_id, timeout=600) for job_id in created)
    rl, distill = rl_job.method.model_dump(exclude_unset=True), distill_job.method.model_dump(exclude_unset=True)
    assert rl_job.status == "succeeded", rl_job.error
    assert distill_job.status == "failed" and distill_job.error.code == "teacher_failed"
    assert (
        rl["reinforcement"]["grader"] == grader and rl["reinforcement"]["hyperparameters"]["compute_multiplier"] == 0.5
    )
    assert distill["distillation"]["teacher"] == "hone-tiny"  # Hone's method: kept as openai keeps extras
