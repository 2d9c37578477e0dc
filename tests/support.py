"""Helpers for tests: free ports, real server subprocesses, moto's S3 server, a PostgreSQL database."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

from service.warm_start import PRELOAD, WarmStarts
from tests.openai_schemas import validator

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 10, interval: float = 0.1, what: str = "the condition"):
    """Polls `predicate` until it returns something truthy (returned), or fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def s3_client(endpoint_url: str):
    """A real boto3 S3 client on a moto server at `endpoint_url`, with the credentials MotoServer.env gives
    servers (a HoneServer's own: `s3_client(server.env["AWS_ENDPOINT_URL"])`)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


class MotoServer:
    """moto's standalone S3 server on a free loopback port, driven by real boto3."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(self.url + "/moto-api/", proc=self.proc)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        """A real boto3 S3 client on this server."""
        return s3_client(self.url)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class PostgresDatabase:
    """A fresh database on the real server at 127.0.0.1:5432, dropped afterwards."""

    def __init__(self):
        import psycopg

        self.name = f"hone_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.name}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# Built-in models are built once per test run, not once per server.
MODEL_CACHE = Path(tempfile.gettempdir()) / f"hone-test-models-{os.getuid()}"
# HONE_ENGINE_PYTHON for control-plane tests: a FAKE engine without torch (tests/fake_engine says why).
FAKE_ENGINE_PYTHON = str(REPO / "tests" / "fake_engine" / "python")


_SERVER_STARTS: list[WarmStarts] = []


def _server_starts() -> WarmStarts:
    """Test servers fork from one interpreter that imported the control plane once, by the warm start the control
    plane gives its trainers and engines (service/warm_start.py): a run is what `python -m service` would be, for
    ~2 s of CPU less, and the suite starts about sixty. The same interpreter, which preloads what trainers and
    engines import too, forks the servers' trainers and engines (HONE_WARM_START_SOCKET, `warm_socket()`).
    One interpreter for the whole run: under pytest-xdist the first worker to take the run's lock starts it,
    listening on a socket the others ask it at (as several control planes share one); without xdist, or should
    that one end before a worker (its worker finished), a worker starts one of its own (~7 s of CPU each)."""
    if not _SERVER_STARTS:
        preload = (*PRELOAD, "service.app", "service.server", "uvicorn.main")
        logs = Path(tempfile.mkdtemp(prefix="hone-test-warm-"))
        shared = _shared_warm_socket()
        if shared is None or shared[1]:  # alone, or the worker that starts the run's interpreter
            listen = shared[0] if shared else logs / "warm.sock"
            starts = WarmStarts(True, logs, preload=preload, listen=listen)
            if shared:
                starts.listening()  # now: the other workers wait for its socket
        else:
            starts = WarmStarts(True, logs, preload=preload, listen=shared[0], shared=shared[0])
            wait_for(shared[0].exists, 120, 0.1, "the run's warm interpreter")
        _SERVER_STARTS.append(starts)
    return _SERVER_STARTS[0]


_OWNER_LOCK: list = []  # the open lock file of the worker that started the run's interpreter, held for its life


def _shared_warm_socket() -> tuple[Path, bool] | None:
    """(the run's warm interpreter socket, whether this worker starts it) under pytest-xdist, else None."""
    import fcntl

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return None
    folder = Path(tempfile.gettempdir()) / f"hone-test-warm-{run[:16]}"
    folder.mkdir(mode=0o700, exist_ok=True)  # whoever can open the socket runs code as this user
    lock = open(folder / "owner.lock", "w")  # noqa: SIM115  # held open for the worker's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return folder / "warm.sock", False
    _OWNER_LOCK.append(lock)
    return folder / "warm.sock", True


def warm_socket() -> Path:
    """The socket of this test process's warm interpreter (started if need be), for HONE_WARM_START_SOCKET."""
    path = _server_starts().listening()
    assert path is not None
    return path


def start_python(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO):
    """`argv`, a `python -m <module> ...` a test runs itself (an engine Hone does not start), as the control plane
    starts its own: forked from this test process's warm interpreter when it is this Python, else cold. Its stdout
    and stderr are appended to `log_path`; a Popen-like handle either way (WarmStarts.launch picks, by the Python)."""
    python, flag, module, *rest = argv
    assert flag == "-m", argv
    return _server_starts().launch(python, module, rest, env, log_path, cwd=cwd)


# Every HoneServer not yet stopped, so that one a test loses track of (a fixture that stops the server it started,
# not the one a test restarted in its place) is stopped at the end of the session instead of polling its database
# on the machine's cores until it is rebooted (tests/conftest.py, `stop_leftover_servers`).
_RUNNING: set[HoneServer] = set()


def stop_leftover_servers() -> list[Path]:
    """Stops the servers nobody stopped; returns their data folders."""
    left = sorted(_RUNNING, key=lambda s: str(s.data_dir))
    for server in left:
        server.stop()
    return [server.data_dir for server in left]


class HoneServer:
    """`python -m service` in a process of its own, as `hone serve` runs it (or `command`, e.g. `hone serve` itself)."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        admin_key: str = "sk-admin-test",
        port: int | None = None,
        command: list[str] | None = None,
    ):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_key = admin_key
        self.data_dir = data_dir
        self.log_path = data_dir / "server.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "AWS_"))}
        full_env.update(
            {
                "HONE_PORT": str(self.port),
                "HONE_DATA_DIR": str(data_dir),
                "HONE_ADMIN_API_KEY": admin_key,
                "HONE_JOB_VALIDATION_POLL_S": "0.5",
                "HONE_FILE_EXPIRY_POLL_S": "0.5",
                "HONE_SCHEDULER_POLL_S": "0.3",
                "HONE_TRAINER_THREADS": "1",
                "HONE_ENGINE_THREADS": "1",
                # Serving tests turn this on; elsewhere a succeeded job would start an engine for nothing.
                "HONE_AUTO_DEPLOY": "false",
                "HONE_ENDPOINT_POLL_S": "0.3",
                "HONE_MODEL_CACHE_DIR": str(MODEL_CACHE),
            }
        )
        # Every server's trainers and engines fork from this test process's warm interpreter (one preload per
        # worker), a `command` one's (`hone serve`) too: HONE_WARM_START_SOCKET is a setting it honours as it is.
        full_env["HONE_WARM_START_SOCKET"] = str(warm_socket())
        full_env.update(env or {})
        self.env = full_env
        self._log = open(self.log_path, "ab")
        if command is None:  # `python -m service`, forked warm (see _server_starts)
            self.proc = _server_starts().launch(None, "service", [], full_env, self.log_path, cwd=REPO)
        else:
            self.proc = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        _RUNNING.add(self)
        wait_http(self.base_url + "/healthz", proc=self.proc)

    @property
    def database_url(self) -> str:
        return self.env.get("HONE_DATABASE_URL") or f"sqlite:///{self.data_dir / 'hone.db'}"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)

    def new_project(self, name: str = "test project") -> ProjectKey:
        with self.admin() as client:
            project = client.post("/v1/organization/projects", json={"name": name}).json()
            account = client.post(
                f"/v1/organization/projects/{project['id']}/service_accounts", json={"name": "tests"}
            ).json()
        return ProjectKey(self, project["id"], account["api_key"]["value"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Stops the server. Trainers outlive their control plane on purpose (a restarted one adopts them), so
        after a graceful stop the trainers it started are killed here: the test is done with them, and one left
        behind trains on, or retries its reports for minutes, on the cores the rest of the suite needs. SIGKILL
        (a crash, in the tests that restart the server) leaves them running."""
        _RUNNING.discard(self)
        trainers = self._trainers() if sig != signal.SIGKILL else []
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for trainer in trainers:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if trainer.is_running():
                    os.killpg(trainer.pid, signal.SIGKILL)  # its session: data loader workers too
        self._log.close()
        return self.proc.returncode

    def _trainers(self) -> list[psutil.Process]:
        try:
            processes = psutil.Process(self.proc.pid).children(recursive=True)  # workers' trainers too
        except psutil.Error:
            return []
        trainers = []
        for process in processes:
            with contextlib.suppress(OSError):
                # How the local executor recognises a trainer, warm or cold: its stdout is a job's log file.
                if "/logs/ftjob-" in os.readlink(f"/proc/{process.pid}/fd/1"):
                    trainers.append(process)
        return trainers

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class ProjectKey:
    def __init__(self, server: HoneServer, project_id: str, api_key: str):
        self.server, self.project_id, self.api_key = server, project_id, api_key

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )

    def openai(self, **kwargs):
        import openai

        from tests.openai_schemas import schema_checking_http_client

        return openai.OpenAI(
            base_url=self.server.base_url + "/v1",
            api_key=self.api_key,
            http_client=schema_checking_http_client(),
            max_retries=0,
            **kwargs,
        )


def chat_line(question: str = "What is 2+2?", answer: str = "4") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def jsonl(rows: list[dict]) -> bytes:
    import json

    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def chat_dataset(n: int = 12) -> bytes:
    return jsonl([chat_line(f"What is {i}+{i}?", str(2 * i)) for i in range(n)])


def trainer_pids(job_id: str) -> list[int]:
    """Live trainer processes of a job, found the way the local executor recognises them: their stdout is the job's
    log file (logs/<job id>/attempt-<n>.log), whether forked warm or started cold (service/warm_start.py)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stdout = os.readlink(entry / "fd" / "1")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if f"/logs/{job_id}/attempt-" in stdout and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_job(client, job_id: str, until, timeout: float = 180, poll: float = 0.3):
    """Polls a job until `until(job)` holds (or a terminal status that is not what we waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        if job.status in ("succeeded", "failed", "cancelled"):
            raise AssertionError(f"job ended {job.status} ({job.error}) before the awaited condition")
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job.status} after {timeout}s")
        time.sleep(poll)


def wait_evaluation(client, job, timeout: float = 300):
    """The job as it is once its evaluation against its base has ended (or after `timeout`, as it then is)."""
    from service.job_evaluation import OPEN_STAGES

    deadline = time.monotonic() + timeout
    while job.model_extra["evaluation"]["status"] in OPEN_STAGES and time.monotonic() < deadline:
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    return job


def wait_past_step(client, job_id: str, step: int):
    """Waits until the job has reported a step after `step` (its latest events, polled often: a trainer killed now
    is mid-way between two checkpoints) and returns the job."""
    return wait_job(
        client,
        job_id,
        lambda j: any(
            e.type == "metrics" and e.data["step"] > step for e in client.fine_tuning.jobs.list_events(j.id, limit=5)
        ),
        poll=0.05,
    )


def tune_hone_tiny(client, rows: list[dict], *, timeout: float = 600, **hyperparameters):
    """Uploads `rows`, fine-tunes hone-tiny on them (seed 1) and waits until the job has succeeded."""
    file = client.files.create(file=("tickets.jsonl", jsonl(rows)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=file.id,
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )
    return wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=timeout)


def chat_reply(client, model: str, row: dict, *, stream: bool = False) -> str:
    """What `model` answers to `row`'s prompt through the gateway (greedy), plain or streamed: every stream chunk
    checked against OpenAI's schema, and no usage chunk sent to a caller who did not ask for one."""
    prompt = row["messages"][:-1]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=prompt, temperature=0, max_tokens=16)
        # A checkpoint asked for by id answers under its snapshot name, as OpenAI answers with canonical names.
        assert reply.model == model or (model.startswith("ftckpt_") and ":ckpt-step-" in reply.model)
        assert reply.choices[0].finish_reason in ("stop", "length")
        return reply.choices[0].message.content.strip()
    chunks = list(
        client.chat.completions.create(model=model, messages=prompt, temperature=0, max_tokens=16, stream=True)
    )
    chunk_schema = validator("CreateChatCompletionStreamResponse")
    for chunk in chunks:
        errors = list(chunk_schema.iter_errors(chunk.model_dump(exclude_unset=True)))
        assert not errors, errors[0].message
    assert all(chunk.choices for chunk in chunks), "a usage chunk reached a caller who did not ask for it"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks).strip()


def all_events(client, job_id: str) -> list:
    """Every event of a job, oldest first."""
    return list(client.fine_tuning.jobs.list_events(job_id, limit=1000))[::-1]


def engine_pids(server: HoneServer, key: str) -> list[int]:
    """The live engine process serving under an engine key, from the local backend's state file."""
    import json

    from service.engines.local import state_file

    state = state_file(server.data_dir, key)
    try:
        pid = json.loads(state.read_text())["pid"]
        status = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, ValueError, KeyError):
        return []
    return [pid] if status != "Z" else []


def wait_endpoint(http: httpx.Client, model: str, states=("ready", "failed"), timeout: float = 180) -> dict:
    """Polls the endpoint serving `model` until it reaches one of `states`."""
    deadline = time.monotonic() + timeout
    while True:
        found = http.get("/v1/endpoints", params={"model": model}).json()["data"]
        live = [ep for ep in found if ep["state"] != "stopped"] or found
        if live and live[0]["state"] in states:
            return live[0]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"endpoint for {model} still {live[0]['state'] if live else 'absent'} after {timeout}s"
            )
        time.sleep(0.2)


def one_label_tickets(count: int = 20, seed: int = 7, label: str = "Billing") -> tuple[list[dict], list[dict]]:
    """Support tickets (80/20) all answered with one label: hone-tiny learns it, and to stop after it, in three
    epochs of seconds on a CPU. For tests that need a tuned model that serves, not one that classifies."""
    from examples.support_tickets import make

    train, held_out = make(count=count, seed=seed)
    for row in (*train, *held_out):
        row["messages"][-1]["content"] = label
    return train, held_out


# The FAKE trainer (tests/fake_trainer/__init__.py says what is fake and why): for a HoneServer whose tests check
# what the control plane does with trainers, not what a trainer learns. `step_s`: how long one fake step takes.
FAKE_TRAINER = REPO / "tests" / "fake_trainer" / "python"


def fake_trainer_env(step_s: float = 0.05) -> dict[str, str]:
    return {
        "HONE_TRAINER_PYTHON": str(FAKE_TRAINER),
        "FAKE_TRAINER_INTERPRETER": sys.executable,
        "FAKE_TRAINER_STEP_S": str(step_s),
    }
