"""The `wandb` integration really logs: a job on hone-tiny with it writes a W&B run (offline here: no project key,
no internet), published as a result file and read back with wandb's own record format; the admin API for a
project's W&B key answers it only redacted; a key that W&B refuses warns and training goes on."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import struct
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psutil
import pytest

from tests.support import (
    HoneServer,
    PostgresDatabase,
    all_events,
    chat_dataset,
    chat_line,
    free_port,
    jsonl,
    trainer_pids,
    wait_job,
    wait_past_step,
)

WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # a W&B-shaped key (40 hex)


@pytest.fixture(scope="module")
def trainer_server(tmp_path_factory):
    srv = HoneServer(tmp_path_factory.mktemp("wandb"), {"HONE_LOCAL_SLOTS": "1"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    postgres = PostgresDatabase()
    srv = HoneServer(tmp_path_factory.mktemp("wandb-pg"), {"HONE_LOCAL_SLOTS": "0", "HONE_DATABASE_URL": postgres.url})
    yield srv
    srv.stop()
    postgres.drop()


# --- reading a W&B run back: the .wandb file is wandb's record log (a LevelDB-style log of protobuf Records) ----


def read_wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a W&B run log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE/LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _item_key(item) -> str:
    return ".".join(item.nested_key) if item.nested_key else item.key


class WandbRun:
    """The run as W&B would show it: run header, merged config, final summary, and history per step."""

    def __init__(self, records: list):
        kinds = [r.WhichOneof("record_type") for r in records]
        [self.run] = [r.run for r, k in zip(records, kinds) if k == "run"]
        self.config, self.summary, self.history = {}, {}, []
        for record, kind in zip(records, kinds):
            if kind == "run":
                self.config |= {i.key: json.loads(i.value_json) for i in record.run.config.update}
            elif kind == "config":
                self.config |= {i.key: json.loads(i.value_json) for i in record.config.update}
            elif kind == "summary":
                self.summary |= {_item_key(i): json.loads(i.value_json) for i in record.summary.update}
            elif kind == "history":
                self.history.append({_item_key(i): json.loads(i.value_json) for i in record.history.item})


def offline_run(client, job, tmp_path: Path) -> tuple[WandbRun, object]:
    """Downloads the job's offline run archive (a result file), unpacks it and reads the run's record log."""
    files = {f: client.files.retrieve(f) for f in job.result_files}
    [archive] = [f for f in files.values() if f.filename == "wandb-offline-run.tar.gz"]
    assert archive.purpose == "fine-tune-results" and archive.bytes > 0
    raw = base64.b64decode(client.files.content(archive.id).read())  # result files come base64-encoded, as OpenAI's
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    [folder] = list(tmp_path.iterdir())
    assert folder.name.startswith("offline-run-") and folder.name.endswith(job.id)
    return WandbRun(read_wandb_records(folder / f"run-{job.id}.wandb")), archive


def result_rows(client, job) -> dict[int, dict]:
    [csv_file] = [f for f in job.result_files if client.files.retrieve(f).filename == "step_metrics.csv"]
    text = base64.b64decode(client.files.content(csv_file).read()).decode()
    return {int(r["step"]): r for r in csv.DictReader(io.StringIO(text))}


def wandb_integration(**fields) -> list[dict]:
    return [{"type": "wandb", "wandb": fields}]


def start(client, n: int, hyperparameters: dict, validation: int = 0, data: bytes | None = None, **create):
    train = client.files.create(file=("train.jsonl", data or chat_dataset(n)), purpose="fine-tune")
    if validation:
        create["validation_file"] = client.files.create(
            file=("valid.jsonl", chat_dataset(validation)), purpose="fine-tune"
        ).id
    return client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=train.id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        **create,
    )


# --- offline: the run is a result file ---------------------------------------------------------------------


def test_offline_run_logs_every_step_config_and_model_name(trainer_server, tmp_path):
    client = trainer_server.new_project("wandb offline").openai()
    job = start(
        client,
        20,
        {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.5},
        validation=4,
        seed=3,
        integrations=wandb_integration(project="hone-tests", name="tiny-run", entity="acme", tags=["ci", "tiny"]),
    )
    done = wait_job(client, job.id, lambda j: j.status == "succeeded")
    assert len(done.result_files) == 2
    run, archive = offline_run(client, done, tmp_path)

    events = all_events(client, job.id)
    [mode] = [e for e in events if e.message.startswith("Logging to Weights & Biases")]
    assert mode.message.startswith("Logging to Weights & Biases offline (no W&B key is configured for this project)")
    assert mode.data["wandb"]["mode"] == "offline" and not [e for e in events if e.level == "warn"]

    assert (run.run.run_id, run.run.project, run.run.entity) == (job.id, "hone-tests", "acme")
    assert run.run.display_name == "tiny-run" and list(run.run.tags) == ["ci", "tiny"]
    hp = run.config["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["tuning_mode"]) == (2, 4, "lora")
    spec = json.loads((trainer_server.data_dir / "blobs" / "jobs" / job.id / "spec.json").read_text())
    assert hp == spec["hyperparameters"]  # as resolved for the trainer (learning rate = base x multiplier 1.5)
    assert (
        spec["integrations"]
        == wandb_integration(project="hone-tests", name="tiny-run", entity="acme", tags=["ci", "tiny"])
        and spec["wandb_api_key"] is None
    )
    assert (run.config["job_id"], run.config["base_model"], run.config["method"], run.config["seed"]) == (
        job.id,
        "hone-tiny",
        "supervised",
        3,
    )
    assert run.config["fine_tuned_model"] == done.fine_tuned_model
    assert run.summary["fine_tuned_model"] == done.fine_tuned_model

    # Every step once, with exactly the figures of the job's metrics events (and result.csv's, to its rounding).
    metrics = {e.data["step"]: e.data for e in events if e.type == "metrics"}
    assert [h["_step"] for h in run.history] == sorted(metrics) == list(range(1, 11))  # 20 / 4 per step x 2
    rows = result_rows(client, done)
    for point in run.history:
        step = point["_step"]
        assert point["train_loss"] == metrics[step]["train_loss"]
        assert point["train_mean_token_accuracy"] == metrics[step]["train_mean_token_accuracy"]
        assert point["train_loss"] == pytest.approx(float(rows[step]["train_loss"]), abs=1e-6)
        assert point.get("valid_loss") == metrics[step].get("valid_loss")
    assert run.history[-1]["full_valid_loss"] == metrics[10]["full_valid_loss"]
    assert "total_steps" not in run.history[0]


def test_resumed_attempt_continues_the_run_without_duplicate_steps(trainer_server, tmp_path):
    client = trainer_server.new_project("wandb resume").openai()
    # As the SIGKILL test in test_training: 50 longer examples an epoch, so that the kill lands past the first
    # checkpoint and well before the job ends even when steps are quick.
    per_epoch = 50
    long_rows = jsonl(
        [chat_line(f"Add {i} and {i} please" + " now" * 12, f"The sum is {2 * i}.") for i in range(per_epoch)]
    )
    job = start(
        client,
        per_epoch,
        {"n_epochs": 2, "batch_size": 1},
        data=long_rows,
        seed=5,
        integrations=wandb_integration(project="hone-tests"),
    )
    wait_past_step(client, job.id, per_epoch + 2)
    pids = trainer_pids(job.id)  # the trainer and W&B's service process, which writes to the same log
    [pid] = [p for p in pids if psutil.Process(p).ppid() not in pids]
    os.kill(pid, signal.SIGKILL)
    # W&B's service process goes with the trainer that started it (it watches its parent's pid).
    deadline = time.monotonic() + 15
    while (left := _wandb_services_of(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []
    done = wait_job(client, job.id, lambda j: j.status == "succeeded")

    events = all_events(client, job.id)
    assert f"Resumed from checkpoint at step {per_epoch} (attempt 2)" in [e.message for e in events]
    opened = [e.data["wandb"] for e in events if e.message.startswith("Logging to Weights & Biases offline")]
    assert opened[-1]["attempt"] == 2 and opened[-1]["run_id"] == job.id  # the same run, continued
    run, _ = offline_run(client, done, tmp_path)
    assert run.run.display_name == job.id  # the name defaults to the job id; so does the run id
    # The second attempt's run holds every step once: those before its checkpoint restored, the rest as trained.
    assert [h["_step"] for h in run.history] == list(range(1, 2 * per_epoch + 1))
    rows = result_rows(client, done)
    for point in run.history:
        assert point["train_loss"] == pytest.approx(float(rows[point["_step"]]["train_loss"]), abs=1e-6)
    assert run.summary["fine_tuned_model"] == done.fine_tuned_model


def _wandb_services_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"wandb-core") and str(pid).encode() in cmd:
            found.append(int(entry.name))
    return found


# --- a project's W&B key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_admin_sets_reads_redacted_and_deletes_a_projects_wandb_key(backend, request):
    server = request.getfixturevalue("trainer_server" if backend == "sqlite" else "pg_server")
    project = server.new_project("wandb key")
    path = f"/v1/organization/projects/{project.project_id}/integrations/wandb"
    with server.admin() as admin:
        assert admin.get(path).status_code == 404
        answers = [admin.put(path, json={"api_key": WANDB_KEY})]
        assert answers[0].status_code == 200
        body = answers[0].json()
        assert body["object"] == "organization.project.integration.wandb" and body["project_id"] == project.project_id
        assert body["redacted_api_key"] == "0123***4567" and body["base_url"] is None
        answers.append(admin.get(path))
        assert answers[-1].json() == body
        answers.append(admin.put(path, json={"api_key": WANDB_KEY, "base_url": "https://wandb.example.com/"}))
        assert answers[-1].json()["base_url"] == "https://wandb.example.com"
        assert answers[-1].json()["created_at"] == body["created_at"]

        for bad, param in (
            ({"api_key": WANDB_KEY, "host": "x"}, "host"),
            ({"api_key": "has space"}, "api_key"),
            ({}, "api_key"),
            ({"api_key": WANDB_KEY, "base_url": "ftp://x"}, "base_url"),
        ):
            answers.append(admin.put(path, json=bad))
            assert answers[-1].status_code == 400 and answers[-1].json()["error"]["param"] == param, bad
        answers.append(
            admin.put("/v1/organization/projects/proj_missing/integrations/wandb", json={"api_key": WANDB_KEY})
        )
        assert answers[-1].status_code == 404
        with project.http() as http:  # a project key is not the admin key
            answers.append(http.put(path, json={"api_key": WANDB_KEY}))
            assert answers[-1].status_code in (401, 403)

        answers.append(admin.delete(path))
        assert answers[-1].json() == {
            "object": "organization.project.integration.wandb.deleted",
            "project_id": project.project_id,
            "deleted": True,
        }
        assert admin.get(path).status_code == 404 and admin.delete(path).status_code == 404
    assert all(WANDB_KEY not in a.text for a in answers)

    # The Hone SDK's methods for it.
    import hone

    sdk = hone.Client(base_url=server.base_url, api_key="unused", admin_key=server.admin_key)
    configured = sdk.projects.set_wandb_key(project.project_id, WANDB_KEY, base_url="http://wandb.internal:8080")
    assert (configured.redacted_api_key, configured.base_url) == ("0123***4567", "http://wandb.internal:8080")
    assert sdk.projects.wandb_key(project.project_id).redacted_api_key == "0123***4567"
    assert sdk.projects.delete_wandb_key(project.project_id).deleted is True
    with pytest.raises(hone.NotFoundError):
        sdk.projects.wandb_key(project.project_id)
    assert WANDB_KEY not in server.logs()


class RefusingWandb(BaseHTTPRequestHandler):
    """A W&B server that refuses every key (there is no internet here): it records what credentials came."""

    seen: list[str] = []

    def do_POST(self):
        self.seen.append(self.headers.get("authorization", ""))
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"errors": [{"message": "invalid api key"}]}'
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


def test_a_refused_key_warns_and_training_goes_on(trainer_server):
    wandb_server = HTTPServer(("127.0.0.1", free_port()), RefusingWandb)
    threading.Thread(target=wandb_server.serve_forever, daemon=True).start()
    try:
        project = trainer_server.new_project("wandb online")
        with trainer_server.admin() as admin:
            admin.put(
                f"/v1/organization/projects/{project.project_id}/integrations/wandb",
                json={"api_key": WANDB_KEY, "base_url": f"http://127.0.0.1:{wandb_server.server_port}"},
            )
        client = project.openai()
        job = start(client, 10, {"n_epochs": 1, "batch_size": 5}, integrations=wandb_integration(project="p"))
        done = wait_job(client, job.id, lambda j: j.status == "succeeded")
    finally:
        wandb_server.shutdown()
        wandb_server.server_close()
    # The key reached W&B through the trainer's spec (HTTP basic auth, user "api")...
    assert f"Basic {base64.b64encode(f'api:{WANDB_KEY}'.encode()).decode()}" in RefusingWandb.seen
    # ...W&B refused it: a warning, no run, and the job trained and succeeded all the same.
    events = all_events(client, job.id)
    [warning] = [e for e in events if e.level == "warn"]
    assert warning.message.startswith("Weights & Biases logging stopped") and "401" in warning.message
    assert warning.message.endswith("the job goes on without it.")
    assert [e.data["step"] for e in events if e.type == "metrics"] == [1, 2]
    assert len(done.result_files) == 1  # online runs are not archived
    assert all(WANDB_KEY not in e.model_dump_json() for e in events) and WANDB_KEY not in done.model_dump_json()
    deadline = time.monotonic() + 10
    log_path = trainer_server.data_dir / "blobs" / "jobs" / job.id / "logs" / "attempt-1.log"
    while not log_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert WANDB_KEY not in log_path.read_text() and WANDB_KEY not in trainer_server.logs()
