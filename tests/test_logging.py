"""Logs and tracing: JSON lines that say which request, project, job and endpoint they are about, in the control
plane (real server), the trainer and the built-in engine (real processes)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

import httpx
import pytest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from service.logs import AccessLogMiddleware, ContextFilter, JsonFormatter, bind, context_fields, log_context
from tests.support import REPO, HoneServer, chat_dataset


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def records():
    """Records reaching a handler set up as configure_logging sets up the root's (filter on the handler)."""
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            captured.append(record)

    handler = Keep()
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("test.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield captured
    logger.removeHandler(handler)


# --- the control plane's log context, in-process ------------------------------------------------------------


def test_log_context_nests_and_ends_and_explicit_extra_wins(records):
    log = logging.getLogger("test.logging")
    with log_context(job_id="ftjob-a"):
        with log_context(endpoint_id="ep-b"):
            log.info("inner")
        log.info("outer")
        log.info("explicit", extra={"job_id": "ftjob-explicit"})
    log.info("after")
    bind(job_id="ftjob-nowhere")  # outside any context: nothing to add to, nothing sticks
    log.info("unbound")
    inner, outer, explicit, after, unbound = records
    assert not hasattr(unbound, "job_id")
    assert (inner.job_id, inner.endpoint_id) == ("ftjob-a", "ep-b")
    assert outer.job_id == "ftjob-a" and not hasattr(outer, "endpoint_id")
    assert explicit.job_id == "ftjob-explicit"
    assert not hasattr(after, "job_id") and context_fields() == {}
    line = json.loads(JsonFormatter().format(inner))
    assert {"ts", "level", "logger", "msg"} <= set(line) and line["job_id"] == "ftjob-a"


def test_log_context_is_per_task_and_follows_into_worker_threads(records):
    log = logging.getLogger("test.logging")

    async def request(name: str, delay: float):
        with log_context(request_id=name):
            await asyncio.sleep(delay)
            log.info("before", extra={"who": name})
            await asyncio.sleep(delay)
            # A sync handler's work runs in a worker thread with a copy of the request's context.
            await run_in_threadpool(lambda: (bind(project_id=f"proj-{name}"), log.info("thread", extra={"who": name})))
            log.info("after thread", extra={"who": name})

    async def main():
        await asyncio.gather(request("r1", 0.02), request("r2", 0.01), request("r3", 0.0))
        log.info("outside")

    asyncio.run(main())
    for record in records[:-1]:
        assert record.request_id == record.who, (record.msg, record.__dict__)
    assert all(r.project_id == f"proj-{r.who}" for r in records if r.msg == "after thread")
    assert not hasattr(records[-1], "request_id") and not hasattr(records[-1], "project_id")


def test_access_middleware_context_per_request_no_leak_and_streaming(records):
    log = logging.getLogger("test.logging")
    access: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            access.append(record)

    keep = Keep()
    keep.addFilter(ContextFilter())
    logging.getLogger("hone.access").addHandler(keep)
    logging.getLogger("hone.access").setLevel(logging.INFO)

    async def job(request: Request):
        request.state.project_id = "proj_x"  # as the auth dependency does
        log.info("in handler")
        return PlainTextResponse("ok")

    async def stream(request: Request):
        async def chunks():
            for i in range(3):
                log.info("chunk", extra={"i": i})
                yield f"part{i};"

        return StreamingResponse(chunks())

    app = AccessLogMiddleware(Starlette(routes=[Route("/jobs/{job_id}", job), Route("/stream", stream)]))

    async def main():
        # One task runs every request here (unlike uvicorn): the context must still not carry over.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            first = await client.get("/jobs/ftjob-1", headers={"x-request-id": "trace-1"})
            second = await client.get("/stream")
            log.info("between requests")
            return first, second

    try:
        first, second = asyncio.run(main())
    finally:
        logging.getLogger("hone.access").removeHandler(keep)
    assert first.headers["x-request-id"] == "trace-1"
    assert second.text == "part0;part1;part2;" and second.headers["x-request-id"].startswith("req_")
    handler_line, *chunk_lines, between = records
    assert (handler_line.request_id, handler_line.project_id, handler_line.job_id) == ("trace-1", "proj_x", "ftjob-1")
    assert [c.request_id for c in chunk_lines] == [second.headers["x-request-id"]] * 3
    assert all(not hasattr(c, "job_id") and not hasattr(c, "project_id") for c in chunk_lines)
    assert not hasattr(between, "request_id")
    assert (access[0].request_id, access[0].project_id, access[0].job_id, access[0].status) == (
        "trace-1",
        "proj_x",
        "ftjob-1",
        200,
    )
    assert access[1].request_id == second.headers["x-request-id"] and not hasattr(access[1], "job_id")


# --- the control plane, as a process -----------------------------------------------------------------------


def test_server_logs_carry_request_project_and_path_ids(tmp_path):
    server = HoneServer(tmp_path / "srv")
    try:
        project = server.new_project("logging")
        with project.http() as http:
            missing = http.get("/v1/fine_tuning/jobs/ftjob-nosuchjob", headers={"x-request-id": "trace-job-404"})
            assert missing.status_code == 404 and missing.headers["x-request-id"] == "trace-job-404"
            uploaded = http.post(
                "/v1/files",
                files={"file": ("t.jsonl", chat_dataset(10))},
                data={"purpose": "fine-tune"},
                headers={"x-request-id": "trace-upload"},
            )
            assert uploaded.status_code == 200 and uploaded.headers["x-request-id"] == "trace-upload"
            file_id = uploaded.json()["id"]
            assert http.get(f"/v1/files/{file_id}", headers={"x-request-id": "trace-file"}).status_code == 200
        refused = httpx.get(server.base_url + "/v1/fine_tuning/jobs/ftjob-x", headers={"x-request-id": "trace-401"})
        assert refused.status_code == 401
    finally:
        server.stop()
    records = json_lines(server.logs())
    access = {r["request_id"]: r for r in records if r["logger"] == "hone.access"}
    assert access["trace-job-404"] | {"duration_ms": 0, "ts": 0} == {
        "ts": 0,
        "level": "info",
        "logger": "hone.access",
        "msg": "request",
        "request_id": "trace-job-404",
        "method": "GET",
        "path": "/v1/fine_tuning/jobs/ftjob-nosuchjob",
        "status": 404,
        "duration_ms": 0,
        "project_id": project.project_id,
        "job_id": "ftjob-nosuchjob",
    }
    assert access["trace-file"]["file_id"] == file_id and access["trace-file"]["project_id"] == project.project_id
    # Refused before auth resolved a project: the path's id is still there, no project.
    assert access["trace-401"]["job_id"] == "ftjob-x" and access["trace-401"]["project_id"] is None
    # A line the handler logs (not the access line) carries the request's id and project too.
    [upload] = [r for r in records if r["msg"] == "file uploaded"]
    assert (upload["request_id"], upload["project_id"], upload["file_id"], upload["logger"]) == (
        "trace-upload",
        project.project_id,
        file_id,
        "hone.api",
    )
    # Lines outside requests carry no request's fields.
    ready = next(r for r in records if r["msg"] == "hone control plane ready")
    assert "request_id" not in ready and "project_id" not in ready


# --- the trainer's logging, as a process (a real job's log is checked in test_training.py) -----------------


def test_trainer_log_lines_carry_the_job(tmp_path):
    script = (
        "import logging, threading, warnings\n"
        "from trainer.logs import bind, configure_logging\n"
        "configure_logging()\n"
        "logging.getLogger('hone.trainer').info('before the spec')\n"
        "bind(job_id='ftjob-fromspec', attempt=2)\n"
        "t = threading.Thread(target=lambda: logging.getLogger('hone.trainer.report').warning('from a thread'))\n"
        "t.start(); t.join()\n"
        "warnings.warn('a library warning')\n"
        "raise RuntimeError('boom')\n"
    )
    env = {**os.environ, "HONE_JOB_ID": "ftjob-fromenv", "HONE_JOB_ATTEMPT": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is JSON, the crash's traceback included
    first, thread, warning, crash = parsed
    assert (first["msg"], first["job_id"], first["attempt"]) == ("before the spec", "ftjob-fromenv", 1)
    assert (thread["job_id"], thread["attempt"], thread["logger"]) == ("ftjob-fromspec", 2, "hone.trainer.report")
    assert warning["logger"] == "py.warnings" and "a library warning" in warning["msg"]
    assert warning["job_id"] == "ftjob-fromspec"
    assert crash["level"] == "critical" and "RuntimeError: boom" in crash["exc"] and crash["attempt"] == 2


# --- the built-in engine, as a process ---------------------------------------------------------------------


def test_engine_logs_are_json_with_engine_endpoint_request_and_adapter(tmp_path, monkeypatch):
    from tests.test_engine_protocol import SERVED, EngineProcess, make_adapter

    adapter = make_adapter(tmp_path / "adapter", seed=11)
    monkeypatch.setenv("HONE_ENDPOINT_ENGINE", "ep-logtest")
    monkeypatch.setenv("HONE_ENDPOINT_ID", "ep-logtest")
    engine = EngineProcess(tmp_path / "engine.log", max_loras=1, max_cpu_loras=1, max_lora_rank=16, max_model_len=128)
    name = "ft:hone-tiny:logging:x:ftjob-abc"
    try:
        engine.wait()
        with httpx.Client(base_url=engine.url, timeout=60) as http:
            assert (
                http.post(
                    "/v1/load_lora_adapter",
                    json={"lora_name": name, "lora_path": str(adapter)},
                    headers={"x-request-id": "trace-load"},
                ).status_code
                == 200
            )
            done = http.post(
                "/v1/completions",
                json={"model": name, "prompt": "hi", "max_tokens": 2},
                headers={"x-request-id": "trace-engine"},
            )
            assert done.status_code == 200, done.text
            streamed = http.post(
                "/v1/completions",
                json={"model": SERVED, "prompt": "hi", "max_tokens": 2, "stream": True},
                headers={"x-request-id": "trace-stream"},
            )
            assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
            assert http.post("/v1/unload_lora_adapter", json={"lora_name": name}).status_code == 200
            for _ in range(3):
                assert http.get("/health").status_code == 200
    finally:
        engine.stop()
    lines = [line for line in engine.logs().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert all(r["engine"] == "ep-logtest" and r["endpoint_id"] == "ep-logtest" for r in records)
    assert any(r["msg"].startswith(f"serving '{SERVED}'") for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "inference.access" and "request_id" in r}
    assert (access["trace-engine"]["path"], access["trace-engine"]["status"]) == ("/v1/completions", 200)
    assert access["trace-stream"]["status"] == 200
    assert not any(r.get("path") == "/health" for r in records)  # polls stay out of the log at INFO
    [loaded] = [r for r in records if r["msg"] == "LoRA adapter loaded"]
    assert loaded["adapter"] == name and loaded["request_id"] == "trace-load"
    assert loaded["lora_path"] == str(adapter)
    [unloaded] = [r for r in records if r["msg"] == "LoRA adapter unloaded"]
    assert unloaded["adapter"] == name and "request_id" not in unloaded


def test_engine_identity_without_an_endpoint_of_its_own():
    from inference.logs import ContextFilter as EngineFilter
    from inference.logs import identity_from_env

    assert identity_from_env({"HONE_ENDPOINT_ENGINE": "spare:hone-tiny"}) == {"engine": "spare:hone-tiny"}
    assert identity_from_env({}) == {}
    record = logging.LogRecord("inference", logging.INFO, __file__, 1, "m", (), None)
    EngineFilter({"engine": "base:hone-tiny"}).filter(record)
    assert record.engine == "base:hone-tiny" and not hasattr(record, "endpoint_id")


def test_local_engines_name_the_endpoint_in_the_engine_env():
    from service.engines.local import endpoint_of

    assert endpoint_of("ep-abc123") == "ep-abc123"
    assert endpoint_of("base:hone-tiny") is None and endpoint_of("spare:acme/tiny-chat") is None
