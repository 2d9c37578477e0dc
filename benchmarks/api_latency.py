"""API latency benchmark for the Hone control plane (SQLite + filesystem, the defaults).

Starts `python -m service` on loopback in a temporary data dir (through tests.support.HoneServer),
creates a project, fills it with --jobs fine-tuning jobs through the API, then measures latency
percentiles and throughput of the main endpoints under --concurrency concurrent clients:

    create file, create job, list jobs (newest first, and from a cursor deep in the list),
    retrieve job, and GET /healthz (no auth, no database) as a baseline.

Each operation's p50 is also printed as a multiple of the /healthz p50 measured in the same run,
so that figures can be compared across machines. Server-side time per request is read back from
the server's JSON access log (`duration_ms`, matched through the x-request-id header), and the
server process's CPU time per request from /proc.

Run it as:

    .venv/bin/python benchmarks/api_latency.py            # 10,000 jobs, 2,000 requests per operation
    .venv/bin/python benchmarks/api_latency.py --quick    # a smaller, faster run

A missed goal is reported as MISS; the script never exits non-zero for a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.support import HoneServer, chat_dataset  # noqa: E402

# (operation label, percentile, limit in ms): the goals this benchmark checks.
GOALS = [("list jobs", 99, 25.0), ("create job", 99, 50.0)]

TRAINING_FILE = chat_dataset(12)  # 12 valid chat lines: enough (>= 10) to start a job


# --- measurement --------------------------------------------------------------------------

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

    @property
    def n(self) -> int:
        return len(self.latencies_ms)

    def pct(self, p: float, values: list[float] | None = None) -> float:
        values = sorted(self.latencies_ms if values is None else values)
        if not values:
            return float("nan")
        # nearest-rank percentile
        rank = max(1, min(len(values), int(-(-p * len(values) // 100))))
        return values[rank - 1]

    @property
    def rps(self) -> float:
        return (self.n + self.errors) / self.wall_s if self.wall_s else float("nan")


def server_cpu_seconds(pid: int) -> float:
    """utime + stime of the server process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


RequestFn = Callable[[httpx.AsyncClient, int, dict], Awaitable[httpx.Response]]


async def run_load(client: httpx.AsyncClient, label: str, tag: str, request: RequestFn, total: int,
                   concurrency: int, warmup: int, server_pid: int, expect: int = 200) -> Result:
    """`total` requests from `concurrency` closed-loop workers (each sends its next request as soon
    as the previous one answered); `warmup` unmeasured requests go first."""
    if warmup:
        await _drive(client, request, warmup, min(concurrency, warmup), None, f"warm-{tag}", expect)
    result = Result(label, concurrency)
    cpu0, srv0, t0 = time.process_time(), server_cpu_seconds(server_pid), time.perf_counter()
    await _drive(client, request, total, concurrency, result, f"bench-{tag}", expect)
    result.wall_s = time.perf_counter() - t0
    result.client_cpu_s = time.process_time() - cpu0
    result.server_cpu_s = server_cpu_seconds(server_pid) - srv0
    return result


async def _drive(client: httpx.AsyncClient, request: RequestFn, total: int, concurrency: int,
                 result: Result | None, id_prefix: str, expect: int) -> None:
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            headers = {"x-request-id": f"{id_prefix}-{i}"}
            start = time.perf_counter()
            try:
                response = await request(client, i, headers)
                elapsed = (time.perf_counter() - start) * 1000
                ok = response.status_code == expect
                detail = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.HTTPError as exc:
                elapsed, ok, detail = 0.0, False, f"{type(exc).__name__}: {exc}"
            if result is None:
                if not ok:
                    raise RuntimeError(f"warm-up request failed: {detail}")
            elif ok:
                result.latencies_ms.append(elapsed)
            else:
                result.errors += 1
                result.first_error = result.first_error or detail

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# --- the API calls ------------------------------------------------------------------------

def upload_file(client: httpx.AsyncClient, headers: dict) -> Awaitable[httpx.Response]:
    return client.post("/v1/files", headers=headers, data={"purpose": "fine-tune"},
                       files={"file": ("bench.jsonl", TRAINING_FILE, "application/jsonl")})


def create_job(client: httpx.AsyncClient, training_file: str, headers: dict) -> Awaitable[httpx.Response]:
    return client.post("/v1/fine_tuning/jobs", headers=headers,
                       json={"model": "hone-tiny", "training_file": training_file})


async def fill_jobs(client: httpx.AsyncClient, training_file: str, count: int, concurrency: int) -> list[str]:
    """Creates `count` jobs through the API; returns their ids in completion order."""
    ids: list[str] = []
    counter = iter(range(count))
    progress_every = max(1, count // 10)

    async def worker() -> None:
        for i in counter:
            for attempt in range(3):
                response = await create_job(client, training_file, {"x-request-id": f"fill-{i}"})
                if response.status_code == 200:
                    break
                if attempt == 2:
                    raise RuntimeError(f"filling failed at job {i}: HTTP {response.status_code} {response.text[:300]}")
            ids.append(response.json()["id"])
            if len(ids) % progress_every == 0:
                print(f"  ... {len(ids):>6} jobs", flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


async def wait_validated(client: httpx.AsyncClient, timeout: float = 600) -> float:
    """Waits until the background validation loop has moved every job out of validating_files
    (it works oldest first, so the newest job leaving that state means all have), so that the
    read measurements do not race the loop's write transactions. Returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        page = (await client.get("/v1/fine_tuning/jobs", params={"limit": 1})).json()
        if not page["data"] or page["data"][0]["status"] != "validating_files":
            return time.perf_counter() - start
        await asyncio.sleep(0.5)
    raise TimeoutError("jobs were still validating after the timeout")


async def walk_jobs(client: httpx.AsyncClient) -> list[str]:
    """Every job id, newest first, through the `after` cursor (100 per page)."""
    ids: list[str] = []
    after = None
    while True:
        params = {"limit": 100} | ({"after": after} if after else {})
        response = await client.get("/v1/fine_tuning/jobs", params=params)
        response.raise_for_status()
        page = response.json()
        ids.extend(j["id"] for j in page["data"])
        if not page["has_more"]:
            return ids
        after = ids[-1]


# --- server-side times from the access log --------------------------------------------------

def attach_server_times(log_path: Path, results: dict[str, Result]) -> None:
    by_tag: dict[str, list[float]] = {}
    with open(log_path, errors="replace") as fh:
        for line in fh:
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            rid = entry.get("request_id") or ""
            if entry.get("msg") == "request" and rid.startswith("bench-") and entry.get("status", 0) < 400:
                by_tag.setdefault(rid.rsplit("-", 1)[0][len("bench-"):], []).append(float(entry["duration_ms"]))
    for tag, result in results.items():
        result.server_ms = by_tag.get(tag, [])


# --- report -------------------------------------------------------------------------------

def print_table(title: str, results: dict[str, Result], baseline_p50: float) -> None:
    print(f"\n{title}")
    head = (f"{'operation':<26}{'conc':>5}{'n':>7}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"{'req/s':>8}{'p50/hz':>8}{'srv p50':>9}{'srv p99':>9}{'srv cpu':>9}{'cli cpu':>9}")
    print(head)
    print(f"{'':<26}{'':>5}{'':>7}{'':>5}{'':>9}{'':>9}{'':>9}{'':>9}{'':>8}{'':>8}{'ms':>9}{'ms':>9}"
          f"{'ms/req':>9}{'ms/req':>9}")
    print("-" * len(head))
    for result in results.values():
        done = max(1, result.n + result.errors)
        ratio = result.pct(50) / baseline_p50 if baseline_p50 else float("nan")
        print(f"{result.label:<26}{result.concurrency:>5}{result.n:>7}{result.errors:>5}"
              f"{result.pct(50):>9.2f}{result.pct(90):>9.2f}{result.pct(99):>9.2f}{max(result.latencies_ms or [0]):>9.2f}"
              f"{result.rps:>8.0f}{ratio:>7.1f}x"
              f"{result.pct(50, result.server_ms):>9.2f}{result.pct(99, result.server_ms):>9.2f}"
              f"{result.server_cpu_s * 1000 / done:>9.2f}{result.client_cpu_s * 1000 / done:>9.2f}")
    for result in results.values():
        if result.errors:
            print(f"  ! {result.label}: {result.errors} failed request(s); first: {result.first_error}")


def print_goals(results: dict[str, Result]) -> None:
    print("\nGoals (client-measured, at the concurrency above):")
    for label, p, limit in GOALS:
        result = results.get(label)
        if result is None or not result.n:
            print(f"  {label:<12} p{p} <= {limit:g} ms: not measured")
            continue
        value = result.pct(p)
        verdict = "PASS" if value <= limit and not result.errors else "MISS"
        note = f" ({result.errors} errors)" if result.errors else ""
        print(f"  {label:<12} p{p} <= {limit:g} ms: {value:8.2f} ms  {verdict}{note}"
              f"   [server-side p{p}: {result.pct(p, result.server_ms):.2f} ms]")


# --- main ---------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smaller run: 1,000 jobs, 300 requests per operation (explicit options still win)")
    parser.add_argument("--jobs", type=int, help="jobs to fill before measuring (default 10000; quick 1000)")
    parser.add_argument("--requests", type=int, help="measured requests per operation (default 2000; quick 300)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--fill-concurrency", type=int, default=32, help="concurrent clients while filling")
    parser.add_argument("--warmup", type=int, default=64, help="unmeasured requests before each operation")
    parser.add_argument("--deep", type=float, default=0.9,
                        help="where the `after` cursor sits in the newest-first list, as a fraction (default 0.9)")
    parser.add_argument("--serial", type=int, default=None,
                        help="requests per operation for an extra single-client pass (default requests/10; 0: skip)")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir (and server.log)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    args.jobs = args.jobs if args.jobs is not None else (1000 if args.quick else 10000)
    args.requests = args.requests if args.requests is not None else (300 if args.quick else 2000)
    if args.serial is None:
        args.serial = max(50, args.requests // 10)
    return args


async def bench(server: HoneServer, api_key: str, args: argparse.Namespace) -> tuple[dict, dict, Result]:
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=max(args.concurrency, args.fill_concurrency),
                          max_keepalive_connections=max(args.concurrency, args.fill_concurrency))
    async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=120, limits=limits) as client:
        response = await upload_file(client, {})
        response.raise_for_status()
        training_file = response.json()["id"]

        print(f"Filling {args.jobs:,} jobs through POST /v1/fine_tuning/jobs with {args.fill_concurrency} clients ...",
              flush=True)
        t0 = time.perf_counter()
        await fill_jobs(client, training_file, args.jobs, args.fill_concurrency)
        fill_s = time.perf_counter() - t0
        print(f"Filled {args.jobs:,} jobs in {fill_s:.1f} s ({args.jobs / fill_s:.0f} jobs/s)", flush=True)
        drain_s = await wait_validated(client)
        print(f"Validation loop drained its backlog {drain_s:.1f} s after filling", flush=True)

        all_ids = await walk_jobs(client)
        print(f"Walked the list: {len(all_ids):,} jobs in the project", flush=True)
        deep_index = min(len(all_ids) - 1, int(len(all_ids) * args.deep))
        cursor = all_ids[deep_index]
        probe = (await client.get("/v1/fine_tuning/jobs", params={"limit": 20, "after": cursor})).json()
        assert probe["data"] and probe["data"][0]["id"] == all_ids[deep_index + 1], "cursor page is wrong"

        ops: list[tuple[str, str, RequestFn, int]] = [
            ("GET /healthz (baseline)", "healthz", lambda c, i, h: c.get("/healthz", headers=h), 200),
            ("list jobs", "list", lambda c, i, h: c.get("/v1/fine_tuning/jobs", params={"limit": 20}, headers=h), 200),
            (f"list jobs after #{deep_index + 1}", "listdeep",
             lambda c, i, h: c.get("/v1/fine_tuning/jobs", params={"limit": 20, "after": cursor}, headers=h), 200),
            ("retrieve job", "retrieve",
             lambda c, i, h: c.get(f"/v1/fine_tuning/jobs/{rng.choice(all_ids)}", headers=h), 200),
            ("create file", "file", lambda c, i, h: upload_file(c, h), 200),
            ("create job", "job", lambda c, i, h: create_job(c, training_file, h), 200),
        ]

        results: dict[str, Result] = {}
        for label, tag, fn, expect in ops:
            if tag == "job":
                await wait_validated(client)  # start the write test with an idle validation loop
            print(f"Measuring {label}: {args.requests} requests, {args.concurrency} clients ...", flush=True)
            results[tag] = await run_load(client, label, tag, fn, args.requests, args.concurrency, args.warmup,
                                          server.proc.pid, expect)

        serial: dict[str, Result] = {}
        if args.serial:
            await wait_validated(client)
            for label, tag, fn, expect in ops:
                print(f"Measuring {label}: {args.serial} requests, 1 client ...", flush=True)
                serial[f"{tag}1"] = await run_load(client, label, f"{tag}1", fn, args.serial, 1,
                                                   min(args.warmup, 10), server.proc.pid, expect)
        return results, serial, Result("fill", args.fill_concurrency, wall_s=fill_s)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    cpus = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = cpus
    print("Hone API latency benchmark")
    print(f"  python {platform.python_version()} on {platform.machine()}, {affinity} CPU core(s) usable "
          f"({cpus} online); server: uvicorn, SQLite (WAL) + filesystem blobs, in a temp dir on loopback")
    print(f"  jobs={args.jobs:,} requests/op={args.requests:,} concurrency={args.concurrency} "
          f"warmup={args.warmup} serial-pass={args.serial}")
    if affinity <= 4:
        print(f"  NOTE: only {affinity} core(s); the load generator (this process, asyncio + httpx) shares them "
              "with the server, so client-side latencies include time spent waiting for the client's own CPU "
              "and the server's. Compare the p50/hz ratios and the server-side (srv) columns across machines.")

    data_dir = Path(tempfile.mkdtemp(prefix="hone-bench-"))
    server = HoneServer(data_dir / "data")
    try:
        api_key = server.new_project("benchmark").api_key
        results, serial, fill = asyncio.run(bench(server, api_key, args))
    finally:
        rc = server.stop()
    print(f"Server stopped (exit status {rc})")

    attach_server_times(server.log_path, results | serial)
    baseline = results["healthz"].pct(50)
    print_table(f"Results at {args.concurrency} concurrent clients, {args.jobs:,} jobs in the project "
                f"(client-measured wall time per request; srv = server access-log duration_ms; "
                f"p50/hz = p50 / GET /healthz p50 ({baseline:.2f} ms); cpu = CPU time per request):",
                results, baseline)
    if serial:
        print_table("Single client, same server state (unloaded latency, for reference):", serial,
                    serial["healthz1"].pct(50))
    print_goals(results)
    print(f"\nFill: {args.jobs:,} jobs in {fill.wall_s:.1f} s ({args.jobs / fill.wall_s:.0f} jobs/s, "
          f"{args.fill_concurrency} clients)")
    print(f"Total runtime: {time.perf_counter() - started:.1f} s")
    if args.keep_data:
        print(f"Data dir kept: {data_dir} (server log: {server.log_path})")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
