"""Preflight (`POST /v1/fine_tuning/jobs/preflight`): what a job would be, without creating it. A real server on the
FAKE trainer (tests/fake_trainer: real entry point, reports and exit codes, fake steps, no torch; what is checked
here is what the control plane resolves and answers, not what a trainer learns); jobs created afterwards are
compared with the preflight's answer once the scheduler resolved them."""

from __future__ import annotations

import json
import struct

import pytest

from tests.support import HoneServer, chat_line, fake_trainer_env, jsonl, wait_for


def _fake_safetensors(folder, shape):
    """A local base model's weights file as the memory check reads it: a safetensors header (no weights: only the
    header is read), declaring one tensor of `shape`."""
    folder.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"w.weight": {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    big = _fake_safetensors(base / "big", [50_000, 100_000])  # 5B parameters: 10 GB in LoRA, 40 GB fully tuned
    env = {
        **fake_trainer_env(step_s=0.02),
        "HONE_LOCAL_SLOTS": "1",
        "HONE_TRAINER_MEMORY_GB": "40",
        "HONE_TRAINER_TOKENS_PER_S": "100",
        "HONE_BASE_MODELS": json.dumps({"acme/big": str(big)}),
    }
    srv = HoneServer(tmp_path_factory.mktemp("preflight"), env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def project(server):
    return server.new_project("preflight")


def _upload(http, rows) -> str:
    answer = http.post("/v1/files", files={"file": ("t.jsonl", jsonl(rows))}, data={"purpose": "fine-tune"})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def test_preflight_resolves_what_the_job_then_trains_with(project):
    http = project.http()
    long_answer = " ".join(["word"] * 400)  # ~2,000 bytes: over a max_length of 256 tokens
    rows = [chat_line(f"question {i}", f"answer {i}") for i in range(20)] + [chat_line("long", long_answer)] * 3
    file_id = _upload(http, rows)
    body = {
        "model": "hone-tiny",
        "training_file": file_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"max_length": 256, "n_epochs": 2}}},
    }
    answer = http.post("/v1/fine_tuning/jobs/preflight", json=body)
    assert answer.status_code == 200, answer.text
    pre = answer.json()
    assert pre["object"] == "fine_tuning.job.preflight" and pre["base_model"] == "hone-tiny"
    assert pre["training_examples"] == 23
    tokens = pre["tokens"]
    assert tokens["examples_truncated"] == 3 and tokens["max_length"] == 256 and tokens["longest_example"] > 256
    assert tokens["total"] == 2 * tokens["per_epoch"] and 3 * 256 < tokens["per_epoch"] < 3 * 256 + 20 * 40
    assert pre["time"]["tokens_per_second"] == 100 and "HONE_TRAINER_TOKENS_PER_S" in pre["time"]["basis"]
    assert pre["time"]["estimated_seconds"] == -(-tokens["total"] // 100)
    assert pre["memory"]["fits"] is None and "local folder" in pre["memory"]["basis"]  # hone-tiny is built, not read
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == []  # nothing created

    job = http.post("/v1/fine_tuning/jobs", json=body).json()
    assert job["hyperparameters"]["batch_size"] == "auto"  # resolved when the scheduler claims it
    wait_for(lambda: http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "succeeded", 60)
    done = http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["hyperparameters"] == pre["hyperparameters"]
    assert done["method"] == pre["method"]

    # The next preflight on hone-tiny takes the throughput that job reported.
    again = http.post("/v1/fine_tuning/jobs/preflight", json=body).json()
    assert "median tokens/s of the latest 1 job" in again["time"]["basis"]


def test_preflight_refuses_what_a_create_refuses(project, other_project_key):
    http = project.http()
    file_id = _upload(http, [chat_line(f"q{i}", f"a{i}") for i in range(12)])
    too_few = _upload(http, [chat_line("q", "a")] * 3)
    stranger_file = _upload(other_project_key.http(), [chat_line(f"q{i}", f"a{i}") for i in range(12)])
    full = {"type": "supervised", "supervised": {"hyperparameters": {"tuning_mode": "full"}}}
    bodies = [
        {"model": "hone-tiny", "training_file": too_few},
        {"model": "hone-tiny", "training_file": stranger_file},
        {"model": "no-such-model", "training_file": file_id},
        {"model": "hone-tiny", "training_file": file_id, "hyperparameters": {"lora_rank": 4096}},
        {"model": "acme/big", "training_file": file_id, "method": full},  # 40 GB of weights: over 80% of 40 GB
        {"model": "hone-tiny", "training_file": file_id, "surprise": 1},
    ]
    before = http.get("/v1/fine_tuning/jobs").json()["data"]
    for body in bodies:
        pre = http.post("/v1/fine_tuning/jobs/preflight", json=body)
        create = http.post("/v1/fine_tuning/jobs", json=body)
        assert pre.status_code == create.status_code == 400, (body, pre.text, create.text)
        assert pre.json() == create.json(), body
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == before

    # What fits is told: LoRA holds the 5B base in 10 GB of the 32 usable.
    pre = http.post("/v1/fine_tuning/jobs/preflight", json={"model": "acme/big", "training_file": file_id}).json()
    memory = pre["memory"]
    assert (memory["fits"], memory["tuning_mode"], memory["parameters"]) == (True, "lora", 5_000_000_000)
    assert (memory["weights_gb"], memory["trainer_memory_gb"], memory["usable_gb"]) == (10.0, 40.0, 32.0)


@pytest.fixture(scope="module")
def other_project_key(server):
    return server.new_project("stranger")


def test_queue_positions_count_the_jobs_ahead(server):
    """One slot: a long job runs, the rest wait, higher priority first and FIFO within one."""
    http = server.new_project("queue").http()
    file_id = _upload(http, [chat_line(f"q{i}", f"a{i}") for i in range(12)])
    slow = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}}

    def create(priority=0):
        body = {"model": "hone-tiny", "training_file": file_id, "method": slow, "priority": priority}
        return http.post("/v1/fine_tuning/jobs", json=body).json()["id"]

    def job(job_id):
        return http.get(f"/v1/fine_tuning/jobs/{job_id}").json()

    running = create()
    wait_for(lambda: job(running)["status"] == "running", 30)
    assert job(running)["queue_position"] is None
    first, second = create(), create()
    urgent = create(priority=5)
    wait_for(lambda: all(job(j)["status"] == "queued" for j in (first, second, urgent)), 30)
    assert [job(j)["queue_position"] for j in (urgent, first, second)] == [1, 2, 3]
    listed = {j["id"]: j["queue_position"] for j in http.get("/v1/fine_tuning/jobs").json()["data"]}
    assert listed == {running: None, urgent: 1, first: 2, second: 3}

    base = {"model": "hone-tiny", "training_file": file_id}
    queue = http.post("/v1/fine_tuning/jobs/preflight", json=base).json()["queue"]
    assert queue == {"jobs_ahead": 3, "position": 4, "running": 1}
    queue = http.post("/v1/fine_tuning/jobs/preflight", json={**base, "priority": 1}).json()["queue"]
    assert queue == {"jobs_ahead": 1, "position": 2, "running": 1}  # behind the priority-5 job only
    for j in (running, first, second, urgent):
        http.post(f"/v1/fine_tuning/jobs/{j}/cancel")


def test_the_sdk_and_cli_ask_a_preflight(server, project):
    """`client.jobs.preflight` (typed) and `hone jobs create --preflight` answer the route's figures and create
    nothing; a refusal is the SDK's typed error and the CLI's exit 1."""
    from typer.testing import CliRunner

    import hone
    from hone.cli import app

    http = project.http()
    file_id = _upload(http, [chat_line(f"q{i}", f"a{i}") for i in range(12)])
    with hone.Client(server.base_url, project.api_key) as client:
        pre = client.jobs.preflight("hone-tiny", file_id, hyperparameters={"n_epochs": 2}, seed=3)
        assert isinstance(pre, hone.types.Preflight) and pre.hyperparameters.n_epochs == 2
        assert pre.training_examples == 12 and pre.tokens.total == 2 * pre.tokens.per_epoch
        with pytest.raises(hone.BadRequestError):
            client.jobs.preflight("acme/missing", file_id)
    env = {"HONE_BASE_URL": server.base_url, "HONE_API_KEY": project.api_key}
    shown = CliRunner().invoke(
        app, ["jobs", "create", "-t", file_id, "--n-epochs", "2", "--preflight"], env=env, prog_name="hone"
    )
    assert shown.exit_code == 0, shown.output
    assert "12 examples, 2 epoch(s)" in shown.output and "job(s) ahead" in shown.output
    as_json = CliRunner().invoke(
        app, ["jobs", "create", "-t", file_id, "--preflight", "--json"], env=env, prog_name="hone"
    )
    assert json.loads(as_json.output)["object"] == "fine_tuning.job.preflight"
    refused = CliRunner().invoke(
        app, ["jobs", "create", "-t", file_id, "--model", "acme/missing", "--preflight"], env=env, prog_name="hone"
    )
    assert refused.exit_code == 1
    assert not [j for j in http.get("/v1/fine_tuning/jobs").json()["data"] if j["training_file"] == file_id]
