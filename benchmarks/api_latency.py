"""API latency benchmark for the Hone control plane (SQLite or PostgreSQL, filesystem blobs).

Starts `python -m service` on loopback in a temporary data dir (through tests.support.HoneServer), on
SQLite (the default) or on a fresh PostgreSQL database at 127.0.0.1:5432 (`--database postgres`, dropped
afterwards), with `--workers` server processes (HONE_WORKERS) and no local trainer (HONE_LOCAL_SLOTS=0: the
jobs it creates would otherwise start one, which takes a core away from the server while it is measured),
creates a project, fills it with --jobs fine-tuning jobs through the API, then measures latency
percentiles and throughput of the main endpoints with --concurrency closed-loop clients:

    create file, create job, list jobs (newest first, and from a cursor deep in the list),
    retrieve job, and GET /healthz (no auth, no database) as a baseline.

Each operation's p50 is also printed as a multiple of the /healthz p50 measured in the same run,
so that figures can be compared across machines. Server-side time per request is read back from
the server's JSON access log (`duration_ms`, matched through the x-request-id header), and the
CPU time per request of the server (its process and the worker processes under it) and of this load
generator from /proc.

The load generator is asyncio. By default it speaks HTTP/1.1 over keep-alive connections itself
(`--client raw`, one connection per client, ~0.1-0.3 ms of CPU a request) because httpx.AsyncClient
costs 1.5-3.5 ms of CPU a request, more than the server spends on /healthz, and on a small machine
that turns the client into the bottleneck; `--client httpx` measures through httpx.AsyncClient
instead, and `--client both` does both. Both send byte-identical requests.

    .venv/bin/python benchmarks/api_latency.py            # 10,000 jobs, 2,000 requests per operation
    .venv/bin/python benchmarks/api_latency.py --quick    # 1,000 jobs, 300 requests per operation
    .venv/bin/python benchmarks/api_latency.py --database postgres --workers 2

A missed goal is printed as MISS; the script never exits non-zero for a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.revision import git_revision  # noqa: E402
from service.settings import FIELDS  # noqa: E402
from tests.support import HoneServer, PostgresDatabase, chat_dataset  # noqa: E402

_POLLS = ("job_validation_poll_s", "scheduler_poll_s", "file_expiry_poll_s", "endpoint_poll_s")

# (operation tag, measure, limit in ms): the goals this benchmark checks, at --concurrency. "cpu" is the
# server's CPU milliseconds per request (all its processes); "p99" the client-measured 99th percentile.
GOALS = [
    ("list", "cpu", 1.0),
    ("listdeep", "cpu", 1.0),
    ("retrieve", "cpu", 0.6),
    ("job", "cpu", 2.0),
    ("list", "p99", 60.0),
    ("listdeep", "p99", 60.0),
    ("job", "p99", 100.0),
]

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
BOUNDARY = "hone-bench-7f3a9c1e"
TRAINING_FILE = chat_dataset(12)  # 12 valid chat lines: enough (>= 10) to start a job
UPLOAD_BODY = (
    (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.jsonl"\r\n'
        f"Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    + TRAINING_FILE
    + f"\r\n--{BOUNDARY}--\r\n".encode()
)
UPLOAD_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# --- HTTP clients: one tiny interface, two implementations ---------------------------------


class RawConnection:
    """One keep-alive HTTP/1.1 connection, driven by a single worker at a time."""

    def __init__(self, host: str, port: int, auth: str | None):
        self.host, self.port = host, port
        self._fixed = f"Host: {host}:{port}\r\n" + (f"Authorization: Bearer {auth}\r\n" if auth else "")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_used = 0.0

    # uvicorn closes keep-alive connections idle for 5 s (timeout_keep_alive); reconnect before that.
    MAX_IDLE_S = 3.0

    async def ensure(self) -> None:
        """Opens the connection, or a fresh one if this one sat idle long enough for the server to drop it."""
        if self._writer is not None and time.monotonic() - self._last_used > self.MAX_IDLE_S:
            await self.close()
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, target: str, request_id: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, bytes]:
        await self.ensure()
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed}x-request-id: {request_id}\r\n"
        if body or method != "GET":
            head += f"Content-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length, chunked, close = 0, False, False
            for line in raw.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                payload = b""
                while True:
                    size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    payload += await self._reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                payload = await self._reader.readexactly(length)
        except BaseException:
            await self.close()
            raise
        self._last_used = time.monotonic()
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = self._reader = None


class HttpxConnection:
    """The same interface over a shared httpx.AsyncClient (its pool does the connections)."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client

    async def request(
        self, method: str, target: str, request_id: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, bytes]:
        headers = {"x-request-id": request_id}
        if content_type:
            headers["content-type"] = content_type
        response = await self.client.request(method, target, headers=headers, content=body or None)
        return response.status_code, response.content

    async def ensure(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Clients:
    """Hands out one connection per worker for the chosen client kind."""

    def __init__(self, kind: str, base_url: str, api_key: str, pool: int):
        self.kind = kind
        url = httpx.URL(base_url)
        self.host, self.port, self.api_key = url.host, url.port, api_key
        self._httpx = None
        if kind == "httpx":
            self._httpx = httpx.AsyncClient(
                base_url=base_url,
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=120,
                limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            )
        self._idle: list = []

    def take(self):
        if self._idle:
            return self._idle.pop()
        if self._httpx is not None:
            return HttpxConnection(self._httpx)
        return RawConnection(self.host, self.port, self.api_key)

    def give(self, conn) -> None:
        self._idle.append(conn)

    async def close(self) -> None:
        for conn in self._idle:
            await conn.close()
        self._idle.clear()
        if self._httpx is not None:
            await self._httpx.aclose()


# --- measurement --------------------------------------------------------------------------


@dataclass
class Op:
    label: str
    tag: str
    method: str
    target: Callable[[int], str]
    body: bytes = b""
    content_type: str | None = None


@dataclass
class Result:
    label: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    server_ms: list[float] = field(default_factory=list)  # duration_ms from the access log
    other_cpu_s: float = 0.0  # CPU the rest of the machine used meanwhile (neither server nor client)
    steal_s: float = 0.0  # CPU time the hypervisor gave to someone else

    @property
    def n(self) -> int:
        return len(self.latencies_ms)

    def pct(self, p: float, values: list[float] | None = None) -> float:
        """Nearest-rank percentile of the client latencies (or of `values`)."""
        values = sorted(self.latencies_ms if values is None else values)
        if not values:
            return float("nan")
        rank = max(1, min(len(values), -(-p * len(values) // 100)))
        return values[int(rank) - 1]

    @property
    def rps(self) -> float:
        return (self.n + self.errors) / self.wall_s if self.wall_s else float("nan")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    steal = values[7] if len(values) > 7 else 0
    busy = sum(values[:8]) - idle - steal  # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, steal / tick


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def server_pids(pid: int) -> list[int]:
    """The server process and its uvicorn workers (HONE_WORKERS > 1 spawns them as multiprocessing children)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (fields := _stat(int(entry.name))) is None or int(fields[1]) != pid:
            continue
        try:
            if b"multiprocessing" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes (all their threads), from /proc."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is None:
            return float("nan")
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def drive(clients: Clients, op: Op, total: int, concurrency: int, id_prefix: str, result: Result | None) -> None:
    """`total` requests from `concurrency` closed-loop workers: each sends its next request as soon
    as its previous one is answered. Latency is the client-side time from send to full response."""
    counter = iter(range(total))

    async def worker() -> None:
        conn = clients.take()
        try:
            for i in counter:
                target = op.target(i)
                await conn.ensure()  # connecting is not part of the measured latency
                start = time.perf_counter()
                try:
                    status, payload = await conn.request(
                        op.method, target, f"{id_prefix}-{i}", op.body, op.content_type
                    )
                    elapsed = (time.perf_counter() - start) * 1000
                    ok, detail = status == 200, f"HTTP {status}: {payload[:300]!r}"
                except (OSError, asyncio.IncompleteReadError, httpx.HTTPError) as exc:
                    elapsed, ok, detail = 0.0, False, f"{type(exc).__name__}: {exc}"
                if result is None:
                    if not ok:
                        raise RuntimeError(f"{op.label}: warm-up request failed: {detail}")
                elif ok:
                    result.latencies_ms.append(elapsed)
                else:
                    result.errors += 1
                    result.first_error = result.first_error or detail
        finally:
            clients.give(conn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def start_profiler(profile_dir: Path | None, tag: str, server_pid: int) -> subprocess.Popen | None:
    """py-spy sampling the server (and its workers) into `profile_dir/<tag>.txt`, as collapsed stacks. Only the
    thread holding the GIL is sampled: with 40 worker threads, the others mostly wait for it inside C calls
    (sqlite3, locks), which would read as if those calls cost the time."""
    if profile_dir is None:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(server_pid),
            "--subprocesses",
            "--nonblocking",
            "--gil",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(profile_dir / f"{tag}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attaching takes a moment; samples before the load starts are idle and not recorded
    return proc


def stop_profiler(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        proc.wait(30)


async def measure(
    clients: Clients,
    op: Op,
    tag: str,
    total: int,
    concurrency: int,
    warmup: int,
    server_pid: int,
    profile_dir: Path | None = None,
) -> Result:
    if warmup:
        await drive(clients, op, warmup, min(concurrency, warmup), f"warm-{tag}", None)
    result = Result(op.label, concurrency)
    profiler = start_profiler(profile_dir, tag, server_pid)
    pids = server_pids(server_pid)
    (busy0, steal0), cpu0, srv0 = machine_cpu_seconds(), time.process_time(), cpu_seconds(pids)
    t0 = time.perf_counter()
    try:
        await drive(clients, op, total, concurrency, f"bench-{tag}", result)
    finally:
        stop_profiler(profiler)
    result.wall_s = time.perf_counter() - t0
    result.client_cpu_s = time.process_time() - cpu0
    result.server_cpu_s = cpu_seconds(pids) - srv0
    busy1, steal1 = machine_cpu_seconds()
    result.other_cpu_s = max(0.0, busy1 - busy0 - result.client_cpu_s - result.server_cpu_s)
    result.steal_s = steal1 - steal0
    return result


# --- setup: filling and walking the job list ----------------------------------------------


async def api_json(
    conn: RawConnection,
    method: str,
    target: str,
    body: bytes = b"",
    content_type: str | None = None,
    request_id: str = "setup",
) -> dict:
    status, payload = await conn.request(method, target, request_id, body, content_type)
    if status != 200:
        raise RuntimeError(f"{method} {target}: HTTP {status}: {payload[:300]!r}")
    return json.loads(payload)


def job_body(training_file: str) -> bytes:
    return json.dumps({"model": "hone-tiny", "training_file": training_file}).encode()


async def fill_jobs(clients: Clients, training_file: str, count: int, concurrency: int) -> None:
    counter = iter(range(count))
    done = 0
    progress_every = max(1, count // 10)
    body = job_body(training_file)

    async def worker() -> None:
        nonlocal done
        conn = clients.take()
        try:
            for i in counter:
                await api_json(conn, "POST", "/v1/fine_tuning/jobs", body, "application/json", f"fill-{i}")
                done += 1
                if done % progress_every == 0:
                    print(f"  ... {done:>6,} jobs", flush=True)
        finally:
            clients.give(conn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def wait_validated(conn: RawConnection, timeout: float = 900) -> float:
    """Waits until the background validation loop has moved every job out of validating_files
    (it works oldest first, so the newest job leaving that state means all have), so that no
    measurement races its write transactions. Returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        page = await api_json(conn, "GET", "/v1/fine_tuning/jobs?limit=1")
        if not page["data"] or page["data"][0]["status"] != "validating_files":
            return time.perf_counter() - start
        await asyncio.sleep(0.25)
    raise TimeoutError("jobs were still validating after the timeout")


async def walk_jobs(conn: RawConnection) -> list[str]:
    """Every job id, newest first, page by page through the `after` cursor."""
    ids: list[str] = []
    while True:
        query = {"limit": 100} | ({"after": ids[-1]} if ids else {})
        page = await api_json(conn, "GET", f"/v1/fine_tuning/jobs?{urlencode(query)}")
        ids.extend(j["id"] for j in page["data"])
        if not page["has_more"]:
            return ids


# --- server-side times from the access log --------------------------------------------------


def attach_server_times(log_path: Path, results: dict[str, Result]) -> None:
    by_tag: dict[str, list[float]] = {}
    with open(log_path, errors="replace") as fh:
        for line in fh:
            if '"bench-' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            rid = entry.get("request_id") or ""
            if entry.get("msg") == "request" and rid.startswith("bench-") and entry.get("status") == 200:
                by_tag.setdefault(rid[len("bench-") :].rsplit("-", 1)[0], []).append(float(entry["duration_ms"]))
    for tag, result in results.items():
        result.server_ms = by_tag.get(tag, [])


def clean_shutdown(log_path: Path) -> bool:
    return "Application shutdown complete" in log_path.read_text(errors="replace")[-4000:]


# --- report -------------------------------------------------------------------------------


def print_table(title: str, results: dict[str, Result], baseline_p50: float) -> None:
    print(f"\n{title}")
    head = (
        f"{'operation':<26}{'conc':>5}{'n':>6}{'err':>4}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'req/s':>7}{'p50/hz':>8}{'srv p50':>9}{'srv p99':>9}{'srv cpu':>9}{'cli cpu':>9}"
        f"{'other':>7}"
    )
    print(head)
    print(
        f"{'':<26}{'':>5}{'':>6}{'':>4}{'':>9}{'':>9}{'':>9}{'':>9}{'':>7}{'':>8}{'ms':>9}{'ms':>9}"
        f"{'ms/req':>9}{'ms/req':>9}{'cpu %':>7}"
    )
    print("-" * len(head))
    for result in results.values():
        done = max(1, result.n + result.errors)
        ratio = result.pct(50) / baseline_p50 if baseline_p50 else float("nan")
        print(
            f"{result.label:<26}{result.concurrency:>5}{result.n:>6}{result.errors:>4}"
            f"{result.pct(50):>9.2f}{result.pct(90):>9.2f}{result.pct(99):>9.2f}"
            f"{max(result.latencies_ms or [float('nan')]):>9.2f}{result.rps:>7.0f}{ratio:>7.1f}x"
            f"{result.pct(50, result.server_ms):>9.2f}{result.pct(99, result.server_ms):>9.2f}"
            f"{result.server_cpu_s * 1000 / done:>9.2f}{result.client_cpu_s * 1000 / done:>9.2f}"
            f"{100 * (result.other_cpu_s + result.steal_s) / (result.wall_s * CORES):>7.1f}"
        )
    for result in results.values():
        if result.errors:
            print(f"  ! {result.label}: {result.errors} failed request(s); first: {result.first_error}")


def print_goals(title: str, results: dict[str, Result], suffix: str = "") -> None:
    print(f"\n{title}")
    for tag, measure, limit in GOALS:
        result = results.get(tag + suffix)
        if result is None or not result.n:
            print(f"  {tag}: not measured")
            continue
        if measure == "cpu":
            value = result.server_cpu_s * 1000 / max(1, result.n + result.errors)
            what, aside = "server CPU/req", ""
        else:
            p = int(measure[1:])
            value, what = result.pct(p), measure
            aside = f"   (server-side {measure}: {result.pct(p, result.server_ms):.2f} ms)"
        verdict = "PASS" if value <= limit and not result.errors else "MISS"
        note = f" ({result.errors} errors)" if result.errors else ""
        print(f"  {result.label:<24} {what:>14} <= {limit:>5g} ms: {value:8.2f} ms  {verdict}{note}{aside}")


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller run: 1,000 jobs, 300 requests per operation (explicit options still win)",
    )
    parser.add_argument("--jobs", type=int, help="jobs to fill before measuring (default 10000; quick 1000)")
    parser.add_argument("--requests", type=int, help="measured requests per operation (default 2000; quick 300)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--fill-concurrency", type=int, default=32, help="concurrent clients while filling")
    parser.add_argument("--warmup", type=int, default=64, help="unmeasured requests before each operation")
    parser.add_argument(
        "--deep",
        type=float,
        default=0.9,
        help="where the `after` cursor sits in the newest-first list, as a fraction (default 0.9)",
    )
    parser.add_argument(
        "--serial",
        type=int,
        default=None,
        help="requests per operation in an extra single-client pass (default requests/10; 0: skip)",
    )
    parser.add_argument(
        "--client",
        choices=("raw", "httpx", "both"),
        default="raw",
        help="load generator: raw asyncio HTTP/1.1 (default), httpx.AsyncClient, or both",
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite (a file in the data dir, the default) or postgres: a fresh database on "
        "127.0.0.1:5432, as the tests make them, dropped afterwards",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (HONE_WORKERS, default 1)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server process (repeatable), e.g. HONE_LOG_LEVEL=WARNING",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile the server with py-spy while each operation is measured (32-client pass): "
        "collapsed stacks in DIR/<client>-<operation>.txt. Sampling costs CPU: the figures "
        "of a profiled run are not comparable with others",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir (and server.log)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    args.jobs = args.jobs if args.jobs is not None else (1000 if args.quick else 10000)
    args.requests = args.requests if args.requests is not None else (300 if args.quick else 2000)
    if args.serial is None:
        args.serial = max(50, args.requests // 10)
    try:
        args.server_env = dict(item.split("=", 1) for item in args.server_env)
    except ValueError:
        parser.error("--server-env takes NAME=VALUE")
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    return args


@dataclass
class Run:
    results: dict[str, dict[str, Result]] = field(default_factory=dict)  # table title -> tag -> result
    fill_s: float = 0.0
    jobs_listed: int = 0
    calibration_ms: list[float] = field(default_factory=list)


def calibrate() -> float:
    """Milliseconds for a fixed pure-Python workload (best of 5): how fast this machine runs Python now."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        json.dumps([{"i": i, "s": str(i)} for i in range(2000)])
        best = min(best, time.perf_counter() - start)
    return best * 1000


async def bench(server: HoneServer, api_key: str, args: argparse.Namespace, run: Run) -> None:
    rng = random.Random(args.seed)
    setup_clients = Clients("raw", server.base_url, api_key, args.fill_concurrency)
    setup = setup_clients.take()
    try:
        training_file = (await api_json(setup, "POST", "/v1/files", UPLOAD_BODY, UPLOAD_TYPE))["id"]

        print(
            f"Filling {args.jobs:,} jobs through POST /v1/fine_tuning/jobs with {args.fill_concurrency} clients ...",
            flush=True,
        )
        t0 = time.perf_counter()
        await fill_jobs(setup_clients, training_file, args.jobs, args.fill_concurrency)
        run.fill_s = time.perf_counter() - t0
        print(f"Filled {args.jobs:,} jobs in {run.fill_s:.1f} s ({args.jobs / run.fill_s:.0f} jobs/s)", flush=True)
        drain_s = await wait_validated(setup)
        print(f"The validation loop finished its backlog {drain_s:.1f} s after filling", flush=True)

        all_ids = await walk_jobs(setup)
        run.jobs_listed = len(all_ids)
        print(f"Walked the list through `after`: {len(all_ids):,} jobs in the project", flush=True)
        deep = min(len(all_ids) - 2, int(len(all_ids) * args.deep))
        cursor = all_ids[deep]
        probe = await api_json(setup, "GET", f"/v1/fine_tuning/jobs?limit=20&after={cursor}")
        assert probe["data"][0]["id"] == all_ids[deep + 1], "the cursor page does not follow the cursor"

        picks = [rng.choice(all_ids) for _ in range(max(args.requests, args.serial) + args.warmup)]
        body = job_body(training_file)
        ops = [
            Op("GET /healthz (baseline)", "healthz", "GET", lambda i: "/healthz"),
            Op("list jobs", "list", "GET", lambda i: "/v1/fine_tuning/jobs?limit=20"),
            Op(
                f"list jobs after #{deep + 1:,}",
                "listdeep",
                "GET",
                lambda i: f"/v1/fine_tuning/jobs?limit=20&after={cursor}",
            ),
            Op("retrieve job", "retrieve", "GET", lambda i: f"/v1/fine_tuning/jobs/{picks[i % len(picks)]}"),
            Op("create file", "file", "POST", lambda i: "/v1/files", UPLOAD_BODY, UPLOAD_TYPE),
            Op("create job", "job", "POST", lambda i: "/v1/fine_tuning/jobs", body, "application/json"),
        ]

        kinds = ["raw", "httpx"] if args.client == "both" else [args.client]
        for kind in kinds:
            clients = Clients(kind, server.base_url, api_key, args.concurrency)
            name = {"raw": "raw asyncio HTTP/1.1 client", "httpx": "httpx.AsyncClient"}[kind]
            passes = [(args.concurrency, args.requests, "")] + ([(1, args.serial, "1")] if args.serial else [])
            try:
                for concurrency, total, suffix in passes:
                    table = f"{concurrency} concurrent client{'s' if concurrency > 1 else ''}, {name}"
                    run.results[table] = {}
                    for op in ops:
                        if op.tag in ("healthz", "job"):
                            await wait_validated(setup)  # no background writes left over from earlier phases
                        tag = f"{kind}-{op.tag}{suffix}"
                        print(f"Measuring {op.label}: {total:,} requests, {table} ...", flush=True)
                        run.results[table][op.tag + suffix] = await measure(
                            clients,
                            op,
                            tag,
                            total,
                            concurrency,
                            args.warmup if concurrency > 1 else 10,
                            server.proc.pid,
                            args.py_spy if concurrency > 1 else None,
                        )
            finally:
                await clients.close()
    finally:
        await setup_clients.close()
        await setup.close()


def run_and_report(args: argparse.Namespace, data_dir: Path, started: float) -> Path:
    """Runs the server and the measurements, prints the report; returns the server log's path."""
    # No local trainer: every job queued while filling would otherwise start one (hone-tiny trains for
    # minutes), and it would take a core from the server in the middle of the measurements.
    # The background loops poll at the product's defaults, not at the tests' fast ones that tests.support.HoneServer
    # sets (a scheduler tick each 0.3 s, a file expiry sweep each 0.5 s): their CPU is part of what is measured.
    polls = {f"HONE_{name.upper()}": str(FIELDS[name].default) for name in _POLLS}
    env = {"HONE_WORKERS": str(args.workers), "HONE_LOCAL_SLOTS": "0", **polls} | args.server_env
    database = None
    if args.database == "postgres":
        database = PostgresDatabase()
        env["HONE_DATABASE_URL"] = database.url
        print(f"  database: PostgreSQL, fresh database {database.name} on 127.0.0.1:5432 (dropped afterwards)")
    try:
        return measure_server(args, data_dir, started, env)
    finally:
        if database is not None:
            database.drop()


def measure_server(args: argparse.Namespace, data_dir: Path, started: float, env: dict[str, str]) -> Path:
    server = HoneServer(data_dir / "data", env)
    preset = {
        k: v
        for k, v in server.env.items()
        if k.startswith("HONE_") and k not in ("HONE_PORT", "HONE_DATA_DIR", "HONE_ADMIN_API_KEY")
    }
    print(
        "  server env: "
        + ", ".join(f"{k}={v}" for k, v in sorted(preset.items()))
        + " (set by tests.support.HoneServer, --workers"
        + (" and --server-env)" if args.server_env else ")")
    )
    run = Run(calibration_ms=[calibrate()])
    try:
        api_key = server.new_project("benchmark").api_key
        asyncio.run(bench(server, api_key, args, run))
    finally:
        rc = server.stop()
        # uvicorn re-raises the SIGTERM it handled once shutdown is done, hence -15 on a clean stop
        print(
            f"Server stopped (exit status {rc}; "
            f"{'clean shutdown' if clean_shutdown(server.log_path) else 'NO clean shutdown in the log'})"
        )

    # request ids in the access log are "bench-<kind>-<op tag><suffix>-<n>"
    for title, table in run.results.items():
        kind = "httpx" if "httpx" in title else "raw"
        attach_server_times(server.log_path, {f"{kind}-{tag}": r for tag, r in table.items()})

    print(
        f"\nResults: {run.jobs_listed:,} jobs in the project. Latency is client-measured, send to full response; "
        "srv = server access-log duration_ms; p50/hz = p50 over the same table's GET /healthz p50; "
        "cpu = CPU time per request of the server process / of the load generator; other cpu % = share of "
        "the machine's CPU used meanwhile by anything else, or stolen by the hypervisor (should be near 0)."
    )
    print(
        f"Calibration, a fixed pure-Python loop: {run.calibration_ms[0]:.1f} ms at the start, "
        f"{calibrate():.1f} ms at the end (compare machines and runs with it)."
    )
    for title, table in run.results.items():
        baseline = next(iter(table.values())).pct(50)
        print_table(f"{title} (healthz p50 = {baseline:.2f} ms):", table, baseline)
    for title, table in run.results.items():
        if title.startswith(f"{args.concurrency} "):
            print_goals(f"Goals at {title}:", table)
    print(
        f"\nFill: {args.jobs:,} jobs in {run.fill_s:.1f} s ({args.jobs / run.fill_s:.0f} jobs/s, "
        f"{args.fill_concurrency} clients)"
    )
    print(f"Total runtime: {time.perf_counter() - started:.1f} s")
    return server.log_path


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    usable = CORES
    print("Hone API latency benchmark")
    print(
        f"  python {platform.python_version()} on {platform.machine()}, {usable} CPU core(s) usable; "
        f"server: {args.workers} uvicorn worker(s), "
        f"{'SQLite (WAL)' if args.database == 'sqlite' else 'PostgreSQL'} + filesystem blobs in a temp dir, on loopback"
    )
    print(f"  code: {git_revision()}")
    print(
        f"  jobs={args.jobs:,} requests/op={args.requests:,} concurrency={args.concurrency} "
        f"warmup={args.warmup} single-client pass={args.serial} client={args.client}"
    )
    if usable <= 4:
        print(
            f"  NOTE: only {usable} CPU core(s), shared by the server and this load generator: client-side "
            "latencies include waiting for CPU. Compare the p50/hz ratios and the server-side (srv) "
            "columns across machines rather than absolute client-side milliseconds; on a shared VM, expect "
            "run-to-run swings of tens of percent."
        )

    data_dir = Path(tempfile.mkdtemp(prefix="hone-bench-"))
    try:
        log_path = run_and_report(args, data_dir, started)
    except BaseException:
        print(f"Data dir kept for inspection: {data_dir}", file=sys.stderr)
        raise
    if args.keep_data:
        print(f"Data dir kept: {data_dir} (server log: {log_path})")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
