"""Load held: many concurrent clients of mixed API traffic against one Hone server, counting every error.

Starts `python -m service` on loopback (through tests.support.HoneServer, SQLite or PostgreSQL), trains one
small hone-tiny job that auto-deploys, then restarts the server with no training slots (HONE_LOCAL_SLOTS=0) so
that the jobs the load creates queue as a backlog instead of swamping the two cores with trainers; the restarted
server brings the tuned model's endpoint back. Then --clients closed-loop clients run for --duration seconds:

  * chat clients (--chat-share of them): streamed chat completions of the tuned model through the gateway
    (`POST /v1/chat/completions`, stream=True, read to `data: [DONE]`, every event parsed);
  * API clients (the rest): a weighted mix of control-plane calls (API_MIX), the polling an SDK or a dashboard
    does (retrieve job, list events, list jobs, models, files) with about one write in seven (upload a file,
    create a job, and cancel every second job created right after), plus a deliberate 404 (a job id that does
    not exist), which counts as an error only if it answers anything but 404;
  * pollers (--poller-share of them): retrieve a job every 3-5 s on one keep-alive connection reused while
    idle up to 5 s, as httpx and the openai SDK do: what an SDK user's status loop sends, and the case that
    fails when the server closes idle connections as soon as clients may still reuse them.

Two populations rather than one mix: the built-in engine serves one sequence at a time, so a chat request in a
closed loop waits behind every other; mixed into each client's loop it would hold most clients in the engine's
queue and leave the control plane idle. Split, both are loaded at once, as a service with users of both kinds is.

Prints throughput overall and per route, p50/p99 latency per route (and time to first token for the stream),
errors by route and status (any non-2xx except the deliberate 404s, connection errors, timeouts, malformed
bodies or streams), the server's CPU time and peak RSS over the run (from /proc), and PASS/MISS for the goal:
0 errors. A miss never makes it exit non-zero; only a benchmark that could not run does.

    .venv/bin/python benchmarks/load.py                        # 200 clients x 60 s on SQLite (~3 min with setup)
    .venv/bin/python benchmarks/load.py --database postgres    # the same on PostgreSQL at 127.0.0.1:5432
    .venv/bin/python benchmarks/load.py --quick                # 40 clients x 10 s, a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.api_latency import (  # noqa: E402
    CORES,
    UPLOAD_BODY,
    UPLOAD_TYPE,
    RawConnection,
    calibrate,
    cpu_seconds,
    machine_cpu_seconds,
)
from benchmarks.revision import git_revision  # noqa: E402
from tests.support import HoneServer, PostgresDatabase, chat_dataset, jsonl, one_label_tickets, wait_endpoint, wait_job  # noqa: E402

LABEL = "Billing"
# Control-plane calls of an API client, by weight (percent of its requests). Cancel is not drawn: it follows
# every second "create job".
API_MIX = {
    "retrieve job": 22,
    "list events": 16,
    "list jobs": 12,
    "retrieve model": 8,
    "list models": 8,
    "list files": 8,
    "retrieve file": 8,
    "upload file": 7,
    "create job": 7,
    "missing job (404)": 4,
}
DELIBERATE = {"missing job (404)": 404}


@dataclass
class Stats:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ttft_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)  # (route, what) -> count
    first_error: dict[str, str] = field(default_factory=dict)
    answers: Counter = field(default_factory=Counter)  # streamed answer text -> count
    jobs_created: int = 0
    jobs_cancelled: int = 0

    def error(self, route: str, what: str, detail: str) -> None:
        self.errors[(route, what)] += 1
        self.first_error.setdefault(f"{route}: {what}", detail[:300])


class Malformed(Exception):
    """A 2xx answer whose body is not what the API promises."""


# --- requests ---------------------------------------------------------------------------------------------------


async def call_json(
    conn: RawConnection,
    method: str,
    target: str,
    rid: str,
    body: bytes = b"",
    content_type: str | None = None,
    expect: int = 200,
) -> tuple[int, dict | None, bytes]:
    status, payload = await conn.request(method, target, rid, body, content_type)
    if status != expect:
        return status, None, payload
    try:
        return status, json.loads(payload), payload
    except ValueError as exc:
        raise Malformed(f"{target}: body is not JSON: {payload[:200]!r}") from exc


async def stream_chat(conn: RawConnection, body: bytes, rid: str) -> tuple[int, float | None, str, bytes]:
    """POSTs a streamed chat completion and reads every SSE event to `data: [DONE]`.
    Returns (status, seconds to the first content event, the answer text, the error body if not 200)."""
    await conn.ensure()
    start = time.perf_counter()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\n{conn._fixed}x-request-id: {rid}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    reader, writer = conn._reader, conn._writer
    writer.write(head.encode() + body)
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        headers = {
            k.strip().lower(): v.strip().lower()
            for k, _, v in (line.partition(b":") for line in raw.split(b"\r\n")[1:] if line)
        }
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            payload = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            if status == 200:
                raise Malformed(f"a 200 stream that is not chunked: {payload[:200]!r}")
            if headers.get(b"connection") == b"close":
                await conn.close()
            conn._last_used = time.monotonic()
            return status, None, "", payload
        if status == 200 and not headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            raise Malformed(f"content-type {headers.get(b'content-type')!r}")
        buffer, ttft, text, done = b"", None, [], False
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: ") or done:
                    raise Malformed(f"unexpected event {event[:200]!r}" + (" after [DONE]" if done else ""))
                data = event[6:]
                if data == b"[DONE]":
                    done = True
                    continue
                parsed = json.loads(data)  # ValueError: malformed
                if parsed.get("error"):
                    raise Malformed(f"error event {data[:200]!r}")
                for choice in parsed.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        ttft = ttft if ttft is not None else time.perf_counter() - start
                        text.append(piece)
        if not done or buffer.strip():
            raise Malformed(f"stream ended without data: [DONE] (left over: {buffer[:200]!r})")
    except BaseException:
        await conn.close()
        raise
    conn._last_used = time.monotonic()
    return status, ttft, "".join(text), b""


# --- clients ----------------------------------------------------------------------------------------------------


@dataclass
class Shared:
    """What the clients know of the project: ids to retrieve, filled as the load creates more."""

    job_ids: list[str]
    file_ids: list[str]
    model_ids: list[str]
    event_job_ids: list[str]
    training_files: list[str]  # purpose fine-tune, valid: what new jobs train on


async def timed(stats: Stats, route: str, window: tuple[float, float], timeout: float, action) -> object:
    """Runs one request, records its latency or its error under `route` if it started inside the window."""
    start = time.perf_counter()
    measured = window[0] <= time.monotonic() < window[1]
    try:
        status, result = await asyncio.wait_for(action(), timeout)
    except TimeoutError:
        status, result = "timeout", f"no full answer within {timeout:g} s"
    except Malformed as exc:
        status, result = "malformed", str(exc)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        status, result = f"connection: {type(exc).__name__}", str(exc)
    elapsed = (time.perf_counter() - start) * 1000
    ok = status == DELIBERATE.get(route, 200)
    if measured:
        if ok:
            stats.latencies_ms[route].append(elapsed)
        else:
            stats.error(route, f"HTTP {status}" if isinstance(status, int) else status, str(result))
    return result if ok else None


async def api_client(
    n: int,
    conn: RawConnection,
    shared: Shared,
    stats: Stats,
    window,
    deadline: float,
    timeout: float,
    rng: random.Random,
) -> None:
    routes, weights = list(API_MIX), list(API_MIX.values())
    created = 0
    i = 0
    while time.monotonic() < deadline:
        i += 1
        route, rid = rng.choices(routes, weights)[0], f"load-{n}-{i}"

        async def get(target: str, expect: int = 200):
            status, data, payload = await call_json(conn, "GET", target, rid, expect=expect)
            return status, data if data is not None else payload

        if route == "retrieve job":
            job_id = rng.choice(shared.job_ids)
            await timed(stats, route, window, timeout, lambda: get(f"/v1/fine_tuning/jobs/{job_id}"))
        elif route == "list events":
            job_id = rng.choice(shared.event_job_ids)
            await timed(stats, route, window, timeout, lambda: get(f"/v1/fine_tuning/jobs/{job_id}/events"))
        elif route == "list jobs":
            await timed(stats, route, window, timeout, lambda: get("/v1/fine_tuning/jobs?limit=20"))
        elif route == "retrieve model":
            await timed(stats, route, window, timeout, lambda: get(f"/v1/models/{rng.choice(shared.model_ids)}"))
        elif route == "list models":
            await timed(stats, route, window, timeout, lambda: get("/v1/models"))
        elif route == "list files":
            await timed(stats, route, window, timeout, lambda: get("/v1/files?limit=20"))
        elif route == "retrieve file":
            await timed(stats, route, window, timeout, lambda: get(f"/v1/files/{rng.choice(shared.file_ids)}"))
        elif route == "missing job (404)":
            await timed(
                stats, route, window, timeout, lambda: get(f"/v1/fine_tuning/jobs/ftjob-missing{n}x{i}", expect=404)
            )
        elif route == "upload file":

            async def upload():
                status, data, payload = await call_json(conn, "POST", "/v1/files", rid, UPLOAD_BODY, UPLOAD_TYPE)
                return status, data if data is not None else payload

            data = await timed(stats, route, window, timeout, upload)
            if data:
                shared.file_ids.append(data["id"])
        elif route == "create job":
            body = json.dumps({"model": "hone-tiny", "training_file": rng.choice(shared.training_files)}).encode()

            async def create():
                status, data, payload = await call_json(
                    conn, "POST", "/v1/fine_tuning/jobs", rid, body, "application/json"
                )
                return status, data if data is not None else payload

            job = await timed(stats, route, window, timeout, create)
            if job:
                stats.jobs_created += 1
                shared.job_ids.append(job["id"])
                created += 1
                if created % 2 == 0:  # every second job is cancelled right away; the others queue

                    async def cancel():
                        status, data, payload = await call_json(
                            conn, "POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", rid + "-cancel"
                        )
                        return status, data if data is not None else payload

                    if await timed(stats, "cancel job", window, timeout, cancel):
                        stats.jobs_cancelled += 1


POLL_ROUTE = "poll job (idle 3-5 s)"


async def poller_client(
    n: int,
    conn: RawConnection,
    shared: Shared,
    stats: Stats,
    window,
    deadline: float,
    timeout: float,
    rng: random.Random,
) -> None:
    """A status-polling loop as an SDK user writes it: retrieve a job, wait 3-5 s, again, on one keep-alive
    connection reused while idle up to 5 s, as httpx (the openai SDK's client) does by default."""
    conn.MAX_IDLE_S = 5.0
    i = 0
    while time.monotonic() < deadline:
        i += 1
        target = f"/v1/fine_tuning/jobs/{rng.choice(shared.job_ids)}"

        async def poll():
            status, data, payload = await call_json(conn, "GET", target, f"poll-{n}-{i}")
            return status, data if data is not None else payload

        await timed(stats, POLL_ROUTE, window, timeout, poll)
        await asyncio.sleep(min(rng.uniform(3.0, 5.0), max(0.0, deadline - time.monotonic())))


async def chat_client(
    n: int,
    conn: RawConnection,
    model: str,
    stats: Stats,
    window,
    deadline: float,
    timeout: float,
    max_tokens: int,
    questions: list[list[dict]],
    rng: random.Random,
) -> None:
    i = 0
    while time.monotonic() < deadline:
        i += 1
        body = json.dumps(
            {
                "model": model,
                "messages": rng.choice(questions),
                "stream": True,
                "temperature": 0,
                "max_tokens": max_tokens,
            }
        ).encode()

        async def chat():
            measured = window[0] <= time.monotonic() < window[1]
            status, ttft, text, payload = await stream_chat(conn, body, f"chat-{n}-{i}")
            if status == 200:
                if measured:
                    stats.answers[text.strip()] += 1
                    if ttft is not None:
                        stats.ttft_ms.append(ttft * 1000)
                return status, text
            return status, payload

        await timed(stats, "chat completion (stream)", window, timeout, chat)


# --- /proc sampling ---------------------------------------------------------------------------------------------


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_tree(root: int) -> dict[int, str]:
    """The server and its descendants, pid -> "engine" (`python -m inference`) or "server" (uvicorn workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root: "server"}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                tree[pid] = "engine" if b"inference" in cmdline else "server"
                frontier.append(pid)
    return tree


def cpu_by_kind(tree: dict[int, str]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in tree}


def postgres_sessions(database: str | None) -> int:
    """Sessions PostgreSQL has opened for `database` so far (connections the server's pool opened)."""
    if not database:
        return 0
    import psycopg

    from tests.support import PG_ADMIN_URL

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


def postgres_backends(database: str | None) -> dict[int, float]:
    """CPU seconds so far of the PostgreSQL backends serving `database` (their title names it)."""
    if not database:
        return {}
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f" {database} ".encode() in (entry / "cmdline").read_bytes():
                found[int(entry.name)] = cpu_seconds([int(entry.name)])
        except OSError:
            continue
    return found


async def sample_rss(root: int, peaks: dict[str, int], stop: asyncio.Event) -> None:
    """Peak of the summed RSS of the server's processes (and of the engines'), sampled every 0.25 s."""
    tree, refreshed = process_tree(root), time.monotonic()
    while not stop.is_set():
        if time.monotonic() - refreshed > 5:
            tree, refreshed = process_tree(root), time.monotonic()
        for kind in ("server", "engine"):
            peaks[kind] = max(peaks.get(kind, 0), sum(rss_kib(p) for p, k in tree.items() if k == kind))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


# --- the run ----------------------------------------------------------------------------------------------------


def train_served_model(server: HoneServer) -> tuple[str, str, list[dict]]:
    """A project, one small job on tickets all answered with one label, auto-deployed. Returns (api key,
    tuned model name, held-out questions)."""
    project = server.new_project("load")
    client = project.openai()
    train, held_out = one_label_tickets(count=20, seed=7, label=LABEL)
    file = client.files.create(file=("tickets.jsonl", jsonl(train)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=file.id,
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
    )
    job = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=600)
    with project.http() as http:
        endpoint = wait_endpoint(http, job.fine_tuned_model, timeout=300)
    if endpoint["state"] != "ready":
        raise RuntimeError(f"the tuned model's endpoint failed: {endpoint.get('error')}")
    return project.api_key, job.fine_tuned_model, [row["messages"][:-1] for row in (*train, *held_out)]


def prepare_shared(server: HoneServer, api_key: str, model: str) -> Shared:
    """Waits for the restarted server to serve the model again, and collects ids to retrieve."""
    import httpx

    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as http:
        wait_endpoint(http, model, states=("ready", "failed"), timeout=300)
        deadline = time.monotonic() + 120
        while True:  # the first answer may still be a 503 while the gateway's route warms
            reply = http.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": "My invoice is wrong"}],
                },
            )
            if reply.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tuned model does not answer after the restart: {reply.text[:300]}")
            time.sleep(0.5)
        files = [
            http.post(
                "/v1/files", files={"file": ("seed.jsonl", chat_dataset(12))}, data={"purpose": "fine-tune"}
            ).json()["id"]
            for _ in range(4)
        ]
        jobs = [
            http.post("/v1/fine_tuning/jobs", json={"model": "hone-tiny", "training_file": f}).json()["id"]
            for f in files
        ]
        trained = http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        all_files = [f["id"] for f in http.get("/v1/files").json()["data"]]
    trained_ids = [j["id"] for j in trained if j["status"] == "succeeded"]
    return Shared(
        job_ids=jobs + trained_ids,
        file_ids=files + [f for f in all_files if f not in files],
        model_ids=[model, "hone-tiny"],
        event_job_ids=trained_ids + jobs,
        training_files=files,
    )


async def drive(
    args,
    server: HoneServer,
    api_key: str,
    model: str,
    shared: Shared,
    questions: list[list[dict]],
    pg_database: str | None,
) -> dict:
    stats = Stats()
    rng = random.Random(args.seed)
    chat_clients = round(args.clients * args.chat_share)
    pollers = round(args.clients * args.poller_share)
    host, port = "127.0.0.1", server.port
    conns = [RawConnection(host, port, api_key) for _ in range(args.clients)]
    start = time.monotonic()
    window = (start + args.warmup, start + args.warmup + args.duration)
    peaks: dict[str, int] = {}
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server.proc.pid, peaks, stop))
    tasks = []
    for n, conn in enumerate(conns):
        client_rng = random.Random(rng.random())
        if n < chat_clients:
            tasks.append(
                chat_client(
                    n, conn, model, stats, window, window[1], args.timeout, args.max_tokens, questions, client_rng
                )
            )
        elif n < chat_clients + pollers:
            tasks.append(poller_client(n, conn, shared, stats, window, window[1], args.timeout, client_rng))
        else:
            tasks.append(api_client(n, conn, shared, stats, window, window[1], args.timeout, client_rng))
    measured: dict = {}

    async def mark() -> None:
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        tree = process_tree(server.proc.pid)
        measured.update(
            t0=time.perf_counter(),
            tree=tree,
            cpu0=cpu_by_kind(tree),
            cli0=time.process_time(),
            pg0=postgres_backends(pg_database),
            sessions0=postgres_sessions(pg_database),
            machine0=machine_cpu_seconds(),
        )
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        measured.update(
            t1=time.perf_counter(),
            cpu1=cpu_by_kind(tree),
            cli1=time.process_time(),
            pg1=postgres_backends(pg_database),
            sessions1=postgres_sessions(pg_database),
            machine1=machine_cpu_seconds(),
        )

    await asyncio.gather(mark(), *tasks)
    drained_s = time.monotonic() - window[1]
    stop.set()
    await sampler
    for conn in conns:
        await conn.close()
    hwm_kib = sum(rss_kib(p, "VmHWM") for p, k in measured["tree"].items() if k == "server")
    measured.update(
        stats=stats, peaks=peaks, hwm_kib=hwm_kib, drained_s=drained_s, chat_clients=chat_clients, pollers=pollers
    )
    return measured


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[max(1, min(len(values), -(-int(p * len(values)) // 100))) - 1]


def report(args, m: dict, log_path: Path, log_offset: int) -> None:
    stats: Stats = m["stats"]
    wall = m["t1"] - m["t0"]
    total_ok = sum(len(v) for v in stats.latencies_ms.values())
    total_err = sum(stats.errors.values())
    print(
        f"\nMeasured window {wall:.1f} s (after {args.warmup:g} s of warm-up; requests started in it are counted, "
        f"the last ones finished {m['drained_s']:.1f} s after it); {args.clients} clients: "
        f"{m['chat_clients']} streaming chat, {m['pollers']} polling a job every 3-5 s, "
        f"{args.clients - m['chat_clients'] - m['pollers']} control plane."
    )
    print(
        f"\nThroughput: {(total_ok + total_err) / wall:.1f} requests/s overall ({total_ok:,} answered as expected, "
        f"{total_err:,} errors)"
    )
    head = f"{'route':<28}{'n':>7}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
    print(head + "\n" + "-" * len(head))
    errors_by_route = Counter()
    for (route, _), count in stats.errors.items():
        errors_by_route[route] += count
    routes = ["chat completion (stream)", *API_MIX, "cancel job", POLL_ROUTE]
    for route in routes:
        lat = stats.latencies_ms.get(route, [])
        n = len(lat) + errors_by_route[route]
        print(
            f"{route:<28}{n:>7}{n / wall:>8.1f}{pct(lat, 50):>9.1f}{pct(lat, 99):>9.1f}"
            f"{max(lat or [float('nan')]):>9.1f}{errors_by_route[route]:>8}"
        )
    print(
        f"{'  stream: first content':<28}{len(stats.ttft_ms):>7}{'':>8}{pct(stats.ttft_ms, 50):>9.1f}"
        f"{pct(stats.ttft_ms, 99):>9.1f}{max(stats.ttft_ms or [float('nan')]):>9.1f}"
    )
    if stats.errors:
        print("\nErrors by route and status:")
        for (route, what), count in sorted(stats.errors.items()):
            print(f"  {route:<28}{what:<34}{count:>6}")
        print("First of each kind:")
        for key, detail in stats.first_error.items():
            print(f"  {key}: {detail}")
    answers = ", ".join(f"{text!r} x{count}" for text, count in stats.answers.most_common(3))
    print(
        f"\nStreamed answers (most common): {answers or 'none'}; jobs created {stats.jobs_created} "
        f"over the whole run, warm-up included (cancelled right after: {stats.jobs_cancelled}; the rest stay "
        "queued: the server has no training slots)"
    )

    spent = {
        kind: sum(m["cpu1"][p] - m["cpu0"][p] for p, k in m["tree"].items() if k == kind)
        for kind in ("server", "engine")
    }
    count = Counter(m["tree"].values())
    cli_cpu = m["cli1"] - m["cli0"]
    busy = m["machine1"][0] - m["machine0"][0]
    pg_cpu = sum(cpu - m["pg0"].get(pid, 0.0) for pid, cpu in m["pg1"].items())
    other = busy - spent["server"] - spent["engine"] - cli_cpu - pg_cpu
    print(
        f"\nServer ({count['server']} process{'es' if count['server'] > 1 else ''}): {spent['server']:.1f} s CPU "
        f"in {wall:.1f} s ({100 * spent['server'] / wall:.0f}% of one core, "
        f"{1000 * spent['server'] / max(1, total_ok + total_err):.2f} ms a request); peak RSS "
        f"{m['peaks'].get('server', 0) / 1024:.0f} MiB during the run "
        f"(VmHWM since start {m['hwm_kib'] / 1024:.0f} MiB)"
    )
    print(
        f"Engine ({count['engine']} process{'es' if count['engine'] != 1 else ''}): {spent['engine']:.1f} s CPU, "
        f"peak RSS {m['peaks'].get('engine', 0) / 1024:.0f} MiB; load generator: {cli_cpu:.1f} s CPU"
        + (
            f"; PostgreSQL backends ({len(m['pg1'])} at the end): {pg_cpu:.1f} s CPU (not counting those that "
            f"exited meanwhile), "
            f"{m['sessions1'] - m['sessions0']} sessions opened during the run"
            if m["pg1"]
            else ""
        )
    )
    print(
        f"Machine: {busy:.1f} of {wall * CORES:.1f} core-seconds busy ({100 * busy / (wall * CORES):.0f}%), "
        f"{other:.1f} of them ({100 * other / (wall * CORES):.0f}% of the machine) by other processes"
    )
    with open(log_path, "rb") as fh:  # the restarted server's lines only
        fh.seek(log_offset)
        log = fh.read().decode(errors="replace")
    server_problems = {
        k: log.count(k) for k in ("Traceback", '"level": "ERROR"', "database is locked", "QueuePool limit")
    }
    print("Server log: " + ", ".join(f"{k!r} x{v}" for k, v in server_problems.items()))
    verdict = "PASS" if total_err == 0 else "MISS"
    print(
        f"\nGoal: 0 errors with {args.clients} clients for {args.duration:g} s on {args.database}: "
        f"{total_err} errors  {verdict}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 clients for 10 s, 2 s warm-up")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 200; quick 40)")
    parser.add_argument("--duration", type=float, help="measured seconds (default 60; quick 10)")
    parser.add_argument("--warmup", type=float, help="seconds of load before measuring (default 5; quick 2)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--chat-share", type=float, default=0.25, help="share of clients that stream chat (0.25)")
    parser.add_argument(
        "--poller-share",
        type=float,
        default=0.1,
        help="share of clients that poll a job every 3-5 s on an idle keep-alive connection (0.1)",
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each chat completion (16)")
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds a request may take before it counts as a timeout (60)"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server (repeatable)",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the data dir and server logs")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    args.clients = args.clients or (40 if args.quick else 200)
    args.duration = args.duration or (10.0 if args.quick else 60.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 5.0)
    try:
        args.server_env = dict(item.split("=", 1) for item in args.server_env)
    except ValueError:
        parser.error("--server-env takes NAME=VALUE")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    print("Hone load benchmark")
    print(
        f"  python {platform.python_version()} on {platform.machine()}, {CORES} CPU core(s) usable; "
        f"the server on loopback, {args.database}, filesystem blobs, built-in engine"
    )
    print(f"  code: {git_revision('service', 'inference')}")
    print(
        f"  clients={args.clients} (chat share {args.chat_share:g}, pollers {args.poller_share:g}) "
        f"duration={args.duration:g}s "
        f"warmup={args.warmup:g}s max_tokens={args.max_tokens} timeout={args.timeout:g}s"
    )
    print(
        "  API client mix (percent): "
        + ", ".join(f"{k} {v}" for k, v in API_MIX.items())
        + "; every second job created is cancelled right after"
    )
    data_dir = Path(tempfile.mkdtemp(prefix="hone-load-"))
    postgres = PostgresDatabase() if args.database == "postgres" else None
    env = {"HONE_AUTO_DEPLOY": "true", **({"HONE_DATABASE_URL": postgres.url} if postgres else {}), **args.server_env}
    server = None
    try:
        calibration = calibrate()
        print("Training the served model (one small hone-tiny job, auto-deployed) ...", flush=True)
        t = time.perf_counter()
        server = HoneServer(data_dir / "data", {**env, "HONE_LOCAL_SLOTS": "1"})
        api_key, model, questions = train_served_model(server)
        port = server.port
        server.stop()
        log_offset = server.log_path.stat().st_size
        print(
            f"  {model} served after {time.perf_counter() - t:.0f} s; restarting the server with "
            "HONE_LOCAL_SLOTS=0 (the load's jobs queue) ...",
            flush=True,
        )
        server = HoneServer(data_dir / "data", {**env, "HONE_LOCAL_SLOTS": "0"}, port=port)
        shared = prepare_shared(server, api_key, model)
        print(
            f"  serving again; driving {args.clients} clients for {args.warmup:g} + {args.duration:g} s ...", flush=True
        )
        measured = asyncio.run(
            drive(args, server, api_key, model, shared, questions, postgres.name if postgres else None)
        )
    except BaseException:
        print(f"Data dir kept for inspection: {data_dir}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            rc = server.stop()
            print(f"Server stopped (exit status {rc})")
        if postgres is not None:
            postgres.drop()
    report(args, measured, server.log_path, log_offset)
    print(f"Calibration, a fixed pure-Python loop: {calibration:.1f} ms at the start, {calibrate():.1f} ms at the end")
    print(f"Total runtime: {time.perf_counter() - started:.0f} s")
    if args.keep_data:
        print(f"Data dir kept: {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
