"""The `hone` command line in-process (Typer's CliRunner, no subprocess per command): --version, shell completion,
the files/jobs commands added for issue 24 (files get|download|delete, jobs events|checkpoints|logs, jobs list's
filters), follow's phase line, the exit codes of the README's table, and the chat session's local / commands.

The server is a real control plane (SQLite and files) on the fake trainer (tests/fake_trainer: the real trainer's
entry point, reports, storage and exit codes; no torch), one training slot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

import hone
from hone.cli import COMPLETE_VAR, app
from hone.cli.chat import HELP, Conversation, _line_reader
from tests.support import HoneServer, chat_dataset, fake_trainer_env, free_port, wait_for

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env, prog_name="hone")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HoneServer(
        tmp_path_factory.mktemp("cli-commands"),
        {"HONE_LOCAL_SLOTS": "1", "HONE_LIVE_LOG_INTERVAL_S": "0.2", **fake_trainer_env()},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def env(server):
    project = server.new_project("cli commands")
    return {"HONE_BASE_URL": server.base_url, "HONE_API_KEY": project.api_key, "HONE_ADMIN_API_KEY": ""}


@pytest.fixture(scope="module")
def trained(server, env):
    """A job the fake trainer ran to its end (two epochs, a checkpoint each), and `jobs follow` of it from the start."""
    with hone.Client(server.base_url, env["HONE_API_KEY"]) as client:
        file = client.files.create(chat_dataset(12), filename="train.jsonl")
        job = client.jobs.create("hone-tiny", file.id, hyperparameters={"n_epochs": 2}, auto_deploy=False)
    followed = run("jobs", "follow", job.id, "--poll-interval", "0.2", env=env)
    return {"job": job, "file": file, "follow": followed}


def test_version_and_completion_scripts():
    version = run("--version")
    assert version.exit_code == 0 and version.stdout.strip() == f"hone {hone.__version__}"
    for shell in ("bash", "zsh", "fish"):
        script = run("completion", shell)
        assert script.exit_code == 0 and COMPLETE_VAR in script.stdout and "hone" in script.stdout, shell
    assert run("completion", "tcsh").exit_code == 2


def test_completion_answers_from_the_commands():
    """What the bash script asks `hone` (with _HONE_COMPLETE set) is answered from the command tree."""
    from typer._completion_classes import completion_init

    completion_init()
    asked = runner.invoke(
        app,
        [],
        env={COMPLETE_VAR: "complete_bash", "COMP_WORDS": "hone jobs ", "COMP_CWORD": "2"},
        prog_name="hone",
        complete_var=COMPLETE_VAR,
    )
    offered = asked.stdout.split()
    assert {"create", "follow", "events", "checkpoints", "logs"} <= set(offered), asked.stdout


def test_follow_shows_the_phase_at_once_then_ends_with_the_final_status(trained):
    followed, job = trained["follow"], trained["job"]
    assert followed.exit_code == 0, followed.output
    phases = re.findall(r"^\d\d:\d\d:\d\d  (validating files|queued.*|running.*|succeeded)$", followed.stdout, re.M)
    # The first look prints where the job is, before any step: never a silent bar while it waits and starts.
    assert phases and phases[-1] == "succeeded", followed.stdout
    lines = followed.stdout.splitlines()
    first_phase = next(i for i, line in enumerate(lines) if line.endswith(f"  {phases[0]}"))
    first_step = next(i for i, line in enumerate(lines) if "  Step 1/" in line)
    if phases[0] == "running":
        # On a loaded machine the fake trainer can have taken steps before the follower's first look: that look
        # prints the steps so far, then where the job is.
        assert first_step < first_phase
    else:
        waiting = ("validating files", "queued", "running: starting trainer...")
        assert phases[0] in waiting or phases[0].startswith("queued, position"), phases
        assert first_phase < first_step  # where it is, before any step
    assert followed.stdout.rstrip().splitlines()[-1].startswith(f"{job.id}  succeeded  hone-tiny -> ft:hone-tiny:")


def test_jobs_list_filters_events_checkpoints_and_logs(trained, env, server):
    job_id = trained["job"].id
    listed = json.loads(run("jobs", "list", "--status", "succeeded", "--json", env=env).stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert json.loads(run("jobs", "list", "--status", "queued", "--json", env=env).stdout) == []
    assert json.loads(run("jobs", "list", "--model", "acme/other", "--json", env=env).stdout) == []
    assert job_id in run("jobs", "list", "--model", "hone-tiny", env=env).stdout
    wrong = run("jobs", "list", "--status", "done", env=env)
    assert wrong.exit_code == 2 and "'done' is not a job status" in wrong.output

    events = run("jobs", "events", job_id, env=env)
    assert events.exit_code == 0 and f"Created fine-tuning job: {job_id}" in events.stdout
    assert events.stdout.splitlines()[-1].endswith("The job has successfully completed")  # oldest first
    as_json = json.loads(run("jobs", "events", job_id, "--metrics", "--json", env=env).stdout)
    assert any(e["type"] == "metrics" for e in as_json) and as_json[0]["message"].startswith("Created")

    checkpoints = json.loads(run("jobs", "checkpoints", job_id, "--json", env=env).stdout)
    assert checkpoints and all(c["fine_tuning_job_id"] == job_id for c in checkpoints)
    table = run("jobs", "checkpoints", job_id, env=env).stdout
    assert checkpoints[0]["fine_tuned_model_checkpoint"] in table

    logs = run("jobs", "logs", job_id, env=env)
    assert logs.exit_code == 0 and logs.stdout.strip(), logs.output  # what the trainer printed
    with hone.Client(server.base_url, env["HONE_API_KEY"]) as client:
        assert client.jobs.logs(job_id) == client.jobs.logs(job_id, attempt=1) == logs.stdout
    missing = run("jobs", "logs", job_id, "--attempt", "2", env=env)
    assert missing.exit_code == 1 and "no attempt 2" in missing.stderr
    stranger = {**env, "HONE_API_KEY": server.new_project("stranger").api_key}
    hidden = run("jobs", "logs", job_id, env=stranger)  # another project's job: as if it did not exist
    assert hidden.exit_code == 1 and "No such fine-tuning job" in hidden.stderr


def test_a_running_trainers_log_is_read_as_it_grows_and_followed_to_its_end(trained, env, server):
    """While a job trains, its log so far is readable (copied every HONE_LIVE_LOG_INTERVAL_S, 0.2 s here), marked
    not complete; `jobs logs --follow` prints it as it grows and stops once the job ended and its whole log (kept when
    the trainer has exited, which may be after the job says `succeeded`) is printed."""
    http = httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {env['HONE_API_KEY']}"}, timeout=30
    )
    with hone.Client(server.base_url, env["HONE_API_KEY"]) as client, http:
        file = client.files.create(chat_dataset(12), filename="long.jsonl")
        job = client.jobs.create("hone-tiny", file.id, hyperparameters={"n_epochs": 40}, auto_deploy=False)
        follower = subprocess.Popen(
            [sys.executable, "-m", "hone", "jobs", "logs", job.id, "--follow", "--poll-interval", "0.2"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def partial_log():
            reply = http.get(f"/v1/fine_tuning/jobs/{job.id}/logs")
            return reply if reply.status_code == 200 and '"fake step"' in reply.text else None

        early = wait_for(partial_log, 60, 0.1, "a running trainer's log")
        assert early.headers["x-hone-log-complete"] == "false" and early.headers["x-hone-attempt"] == "1", (
            client.jobs.retrieve(job.id),
            early.text[-300:],
        )
        later = wait_for(
            lambda: (r := partial_log()) is not None and len(r.text) > len(early.text) and r, 30, 0.1, "a longer log"
        )
        assert later.text.startswith(early.text)  # it grows; what was read stays
        stdout, stderr = follower.communicate(timeout=120)
        assert follower.returncode == 0, stderr
        assert client.jobs.retrieve(job.id).status == "succeeded"  # --follow ended with the job, not before
        whole = http.get(f"/v1/fine_tuning/jobs/{job.id}/logs")
        assert whole.headers["x-hone-log-complete"] == "true"
        assert client.jobs.log(job.id) == hone.types.JobLog(attempt=1, text=whole.text, complete=True)
        assert stdout == whole.text and early.text in stdout  # followed from the start to the whole log
        lines = [json.loads(line) for line in stdout.splitlines()]  # the trainer's JSON lines, none cut
        steps = [line["step"] for line in lines if line["msg"] == "fake step"]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) > 100  # every step's line, once, in order
    refused = run("jobs", "logs", job.id, "--follow", "--json", env=env)
    assert refused.exit_code == 2 and "--follow" in refused.output


def test_files_get_download_and_delete(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_bytes(chat_dataset(11))
    file_id = run("files", "upload", "data.jsonl", env=env).stdout.strip()
    shown = run("files", "get", file_id, env=env)
    assert shown.exit_code == 0 and "data.jsonl" in shown.stdout and "11 example(s)" in shown.stdout
    assert json.loads(run("files", "get", file_id, "--json", env=env).stdout)["dataset"]["examples"] == 11

    saved = run("files", "download", file_id, "-o", "copy.jsonl", env=env)
    assert saved.exit_code == 0 and (tmp_path / "copy.jsonl").read_bytes() == chat_dataset(11)
    to_stdout = run("files", "download", file_id, "-o", "-", env=env)
    assert to_stdout.stdout_bytes == chat_dataset(11)

    assert run("files", "delete", file_id, env=env).stdout.strip() == f"deleted {file_id}"
    gone = run("files", "get", file_id, "--json", env=env)
    assert gone.exit_code == 1 and json.loads(gone.stderr)["error"]["status"] == 404


def test_exit_codes(env, monkeypatch):
    """The README's table: 1 refused (4xx), 2 usage, 3 unreachable, 5 ended badly, 130 interrupted."""
    assert run("jobs", "get", "ftjob-missing", env=env).exit_code == 1
    assert run("jobs", "get", env=env).exit_code == 2  # the job id is missing
    unreachable = {**env, "HONE_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    down = run("jobs", "list", env=unreachable)
    assert down.exit_code == 3 and "Could not reach" in down.stderr

    with hone.Client(env["HONE_BASE_URL"], env["HONE_API_KEY"]) as client:
        file = client.files.create(chat_dataset(12), filename="train.jsonl")
        job = client.jobs.create("hone-tiny", file.id, auto_deploy=False)
        client.jobs.cancel(job.id)
    cancelled = run("jobs", "follow", job.id, env=env)
    assert cancelled.exit_code == 5 and f"{job.id}  cancelled" in cancelled.stdout

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hone.client.Client, "__init__", interrupted)
    stopped = run("models", "list", env=env)
    assert stopped.exit_code == 130 and "interrupted" in stopped.stderr


def test_chat_commands_stay_local():
    sent, said = [], []
    conversation = Conversation(
        "hone-tiny", None, ask=lambda model, messages: sent.append((model, list(messages))) or "ok", say=said.append
    )
    for line in ("/help", "/model ft:hone-tiny:p:x:ftjob-1", "/system Be brief.", "/bogus", "hello", "//etc/hosts"):
        assert conversation.handle(line)
    assert said[0] == HELP and said[1] == "model: ft:hone-tiny:p:x:ftjob-1"
    assert said[3].startswith("error: unknown command /bogus")
    # Only the two prompts reached the model, with the new model and system message; `//` sends one `/`.
    assert [model for model, _ in sent] == ["ft:hone-tiny:p:x:ftjob-1"] * 2
    assert sent[1][1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "/etc/hosts"},
    ]
    conversation.handle("/clear")
    assert conversation.messages() == [{"role": "system", "content": "Be brief."}]
    assert conversation.handle("/exit") is False and len(sent) == 2


def test_chat_history_is_kept_across_sessions(tmp_path, monkeypatch):
    import readline

    history = tmp_path / "cache" / "chat_history"
    monkeypatch.setenv("HONE_CHAT_HISTORY", str(history))
    readline.clear_history()
    _, save = _line_reader(interactive=True)
    readline.add_history("what is my plan?")
    save()
    assert "what is my plan?" in history.read_text()
    readline.clear_history()
    _line_reader(interactive=True)  # the next session reads it back
    assert readline.get_history_item(readline.get_current_history_length()) == "what is my plan?"
