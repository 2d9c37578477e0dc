"""Server CPU per request of the hot API calls, in-process: the ASGI app called directly, no HTTP server.

`benchmarks/api_latency.py` measures the whole server (uvicorn's HTTP handling included) through loopback
sockets, on a machine whose speed and load swing; this harness isolates what Hone's own code costs per
request (routing, dependencies, the handler, the database, the JSON), so that a change to that code can be
measured against the one before in seconds, and profiled:

    .venv/bin/python benchmarks/api_cpu.py                       # SQLite, 10,000 jobs
    .venv/bin/python benchmarks/api_cpu.py --database postgres   # a fresh PostgreSQL database, dropped after
    .venv/bin/python benchmarks/api_cpu.py --profile list        # cProfile of list jobs, top 40 by own time

The server's JSON logs (its access log: one line a request, as `hone serve` writes them) go to stderr;
the figures go to stdout.

It builds the app from the same settings `hone serve` uses (no local trainer), fills --jobs jobs through the
API, then runs each operation with --concurrency concurrent callers on the event loop and prints the CPU time
of this process per request (time.process_time, which counts every thread), with `GET /healthz` measured in
the same run as the baseline. The callers' own cost (a dict and a few awaits) is part of the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class Caller:
    """Calls the ASGI app as uvicorn would, with a prebuilt scope per request."""

    def __init__(self, app: Any, headers: list[tuple[bytes, bytes]]):
        self.app, self.headers = app, headers

    async def call(self, method: str, path: str, body: bytes = b"", content_type: str | None = None):
        raw_path, _, query = path.partition("?")
        headers = list(self.headers)
        if body:
            headers += [(b"content-type", (content_type or "application/json").encode())]
            headers += [(b"content-length", str(len(body)).encode())]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        sent = False
        status, chunks = 0, []

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def multipart(filename: str, content: bytes, purpose: str) -> tuple[bytes, str]:
    boundary = "hone-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: application/jsonl\r\n\r\n".encode()
        + content
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def run_op(caller: Caller, concurrency: int, requests: int, make) -> tuple[float, int]:
    """CPU ms per request of `requests` calls spread over `concurrency` callers; returns (ms, errors)."""
    counter = iter(range(requests))
    errors = 0

    async def worker():
        nonlocal errors
        for i in counter:
            status, _ = await caller.call(*make(i))
            errors += status >= 400

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - start) * 1000 / requests, errors


async def main(args) -> None:
    from tests.support import PostgresDatabase, chat_dataset

    data_dir = Path(tempfile.mkdtemp(prefix="hone-apicpu-"))
    database = PostgresDatabase() if args.database == "postgres" else None
    env = {
        "HONE_DATA_DIR": str(data_dir),
        "HONE_ADMIN_API_KEY": "adm",
        "HONE_LOCAL_SLOTS": "0",
    }
    if database is not None:
        env["HONE_DATABASE_URL"] = database.url
    os.environ.update(env)
    from service.app import create_app
    from service.logs import configure_logging
    from service.settings import Settings

    settings = Settings()
    configure_logging(settings.server.log_level)  # as `hone serve`: the access log is part of every request
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            admin = Caller(app, [(b"authorization", b"Bearer adm")])
            _, body = await admin.call("POST", "/v1/organization/projects", json.dumps({"name": "bench"}).encode())
            project = json.loads(body)
            _, body = await admin.call(
                "POST",
                f"/v1/organization/projects/{project['id']}/service_accounts",
                json.dumps({"name": "bench"}).encode(),
            )
            key = json.loads(body)["api_key"]["value"]
            caller = Caller(app, [(b"authorization", f"Bearer {key}".encode())])
            upload, content_type = multipart("train.jsonl", chat_dataset(12), "fine-tune")
            status, body = await caller.call("POST", "/v1/files", upload, content_type)
            assert status == 200, body
            file_id = json.loads(body)["id"]
            job_body = json.dumps({"model": "hone-tiny", "training_file": file_id}).encode()
            started = time.perf_counter()
            await run_op(caller, 32, args.jobs, lambda i: ("POST", "/v1/fine_tuning/jobs", job_body))
            print(f"filled {args.jobs:,} jobs in {time.perf_counter() - started:.1f} s", flush=True)
            await asyncio.sleep(1.0)  # let the validation loop take its batches
            while True:
                _, body = await caller.call("GET", "/v1/fine_tuning/jobs?limit=1")
                if json.loads(body)["data"][0]["status"] != "validating_files":
                    break
                await asyncio.sleep(0.5)
            _, body = await caller.call("GET", "/v1/fine_tuning/jobs?limit=100")
            ids = [job["id"] for job in json.loads(body)["data"]] or [file_id]
            deep = ids[-1]
            ops = {
                "healthz": lambda i: ("GET", "/healthz"),
                "list": lambda i: ("GET", "/v1/fine_tuning/jobs?limit=20"),
                "deep": lambda i: ("GET", f"/v1/fine_tuning/jobs?limit=20&after={deep}"),
                "retrieve": lambda i: ("GET", f"/v1/fine_tuning/jobs/{ids[i % len(ids)]}"),
                "create": lambda i: ("POST", "/v1/fine_tuning/jobs", job_body),
            }
            chosen = args.ops.split(",") if args.ops else list(ops)
            for name in chosen:
                await run_op(caller, args.concurrency, 100, ops[name])  # warm
                if args.profile == name:
                    profiler = cProfile.Profile()
                    profiler.enable()
                ms, errors = await run_op(caller, args.concurrency, args.requests, ops[name])
                if args.profile == name:
                    profiler.disable()
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
                print(f"{name:10s} {ms:6.3f} ms CPU/request  errors {errors}", flush=True)
    finally:
        if database is not None:
            database.drop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--ops", default="")
    parser.add_argument("--profile", default="")
    asyncio.run(main(parser.parse_args()))
