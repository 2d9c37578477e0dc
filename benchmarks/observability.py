"""Observability benchmark: what the HTTP metrics middleware adds to every request, what a Prometheus scrape of
the control plane costs as jobs pile up, whether made-up names make series, and a scrape with several workers.

    .venv/bin/python benchmarks/observability.py            # ~1 min on 2 cores
    .venv/bin/python benchmarks/observability.py --quick    # 10 block pairs in (a), 60 rounds in (b) and (c) (~45 s)
    .venv/bin/python benchmarks/observability.py --parts a,b

Three parts, each against a baseline measured in the same run:

(a) HTTP metrics middleware, in process. Two minimal Starlette apps with the same single route (`/v1/ping`, and
    in a second pair `/v1/items/{item_id}` with a different id each request), one plain (the baseline) and one
    with service.http_metrics.HttpMetricsMiddleware in its middleware list (where Hone's app has it), are
    driven through the raw ASGI interface: app(scope, receive, send) called directly in one asyncio loop, no
    sockets. Blocks of --block requests alternate between the two apps (the order alternating each pair);
    "added" is the median over pairs of the difference of the blocks' mean times per request, and the
    difference of the per-request p50s. The cost of the middleware's two instrument updates (labels() + inc(),
    labels() + observe()) is timed alone with timeit for the breakdown.

(b) Scrapes of the real server. Two servers (`python -m service` through tests.support.HoneServer,
    HONE_LOCAL_SLOTS=0 so nothing trains), each with a project: one stays fresh (the baseline), the other goes
    through three states: fresh; then 1,000 finished jobs (succeeded/failed/cancelled) and 50 running jobs with
    live_metrics (every figure a GPU trainer reports) inserted straight into its SQLite database (hone.db); then, after
    one request of each kind below (they make their route's series), 200 gateway requests
    (`POST /v1/chat/completions`) for 200 distinct made-up model names (404s), 200 `GET /v1/models/<made-up>`
    and 200 requests to paths no route matches. In each state --rounds rounds, the order rotating each
    round: a scrape (`GET /metrics`) of each server, `GET /v1/models` (project key) and `GET /healthz` on the
    second, one keep-alive httpx.Client per server. Printed per state: p50/p99 of each, the scrape's size in
    bytes and number of series (sample lines), the median of per-round differences from the fresh server's
    scrape, and the server's CPU per scrape (a burst of scrapes alone, from /proc). Finally the exporter is
    built in this process over the filled database to split a scrape's time between the database reads and
    the text exposition.

(c) Several workers. A server with HONE_WORKERS=2 (prometheus-client's multiprocess mode: a scrape reads every
    worker's files) and one with HONE_WORKERS=1 (the baseline), both fresh and given the same requests, scraped
    in interleaved pairs.

Goals (printed PASS/MISS; a miss never makes the script exit non-zero): the middleware adds <= 50 us a request;
a scrape with 1,000 jobs and 50 running takes <= 100 ms at p50; 200 made-up names add no more than a handful
(5) of series.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx

from benchmarks.revision import git_revision  # noqa: E402
from tests.support import HoneServer

GOAL_MIDDLEWARE_US = 50.0
GOAL_SCRAPE_P50_MS = 100.0
GOAL_SERIES_GROWTH = 5
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# --- small helpers ---------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def median(values: list[float]) -> float:
    return pct(values, 50)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, from /proc."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def series_count(text: str) -> int:
    """Sample lines of a text exposition (each is one series)."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def http_client(base_url: str, api_key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=60,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def get_ms(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    """One GET, send to full body; (milliseconds, response)."""
    start = time.perf_counter()
    reply = client.get(path)
    reply.read()
    elapsed = (time.perf_counter() - start) * 1000
    if reply.status_code != 200:
        raise RuntimeError(f"{client.base_url}{path} answered {reply.status_code}: {reply.text[:300]}")
    return elapsed, reply


# --- (a) HTTP metrics middleware, in process -----------------------------------------------------------


def asgi_apps(path: str):
    """The same one-route Starlette app twice: plain, and with HttpMetricsMiddleware."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from service.http_metrics import HttpMetricsMiddleware

    async def ok(request):
        return PlainTextResponse("ok")

    return (
        Starlette(routes=[Route(path, ok)]),
        Starlette(routes=[Route(path, ok)], middleware=[Middleware(HttpMetricsMiddleware)]),
    )


@dataclass
class AsgiResult:
    label: str
    bare_ns: list[int] = field(default_factory=list)  # per request
    wrapped_ns: list[int] = field(default_factory=list)
    block_diffs_us: list[float] = field(default_factory=list)  # wrapped mean - bare mean, per block pair


def drive(label: str, template: str, paths: list[str], blocks: int, block: int, warmup: int) -> AsgiResult:
    bare, wrapped = asgi_apps(template)
    base_scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    scopes = [{"path": p, "raw_path": p.encode()} for p in paths]
    request = {"type": "http.request", "body": b"", "more_body": False}
    statuses = []

    async def receive():
        return request

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run_block(app, n: int, out: list[int] | None) -> float:
        clock = time.perf_counter_ns
        k = len(scopes)
        began = clock()
        for i in range(n):
            scope = {**base_scope, **scopes[i % k]}
            t = clock()
            await app(scope, receive, send)
            if out is not None:
                out.append(clock() - t)
        return (clock() - began) / n / 1000  # mean microseconds a request, loop included

    async def main() -> AsgiResult:
        result = AsgiResult(label)
        await run_block(bare, warmup, None)
        await run_block(wrapped, warmup, None)
        for b in range(blocks):
            if b % 2 == 0:
                t_bare = await run_block(bare, block, result.bare_ns)
                t_wrapped = await run_block(wrapped, block, result.wrapped_ns)
            else:
                t_wrapped = await run_block(wrapped, block, result.wrapped_ns)
                t_bare = await run_block(bare, block, result.bare_ns)
            result.block_diffs_us.append(t_wrapped - t_bare)
        return result

    result = asyncio.run(main())
    if set(statuses) != {200}:
        raise RuntimeError(f"{label}: the app answered {sorted(set(statuses))}")
    return result


def instrument_costs(number: int) -> dict[str, float]:
    """Microseconds per call of what the middleware does per request, timed alone."""
    from service.metrics import HTTP_DURATION, HTTP_REQUESTS

    def count():
        HTTP_REQUESTS.labels(method="GET", route="/v1/ping", status="200").inc()

    def observe():
        HTTP_DURATION.labels(method="GET", route="/v1/ping").observe(0.0123)

    out = {}
    for name, fn in (("labels(...).inc()", count), ("labels(...).observe()", observe)):
        out[name] = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
    return out


def part_a(args) -> dict:
    print(
        f"\n(a) HTTP metrics middleware: {args.blocks} block pairs of {args.block} requests per app, in process ...",
        flush=True,
    )
    ids = [f"item-{random.Random(i).getrandbits(40):010x}" for i in range(1000)]
    gc.collect()
    gc.freeze()  # as the server does after start-up: a full collection then skips the imported modules
    results = [
        drive("one route `/v1/ping`", "/v1/ping", ["/v1/ping"], args.blocks, args.block, args.block),
        drive(
            "path parameter `/v1/items/{item_id}`",
            "/v1/items/{item_id}",
            [f"/v1/items/{i}" for i in ids],
            args.blocks,
            args.block,
            args.block,
        ),
    ]
    return {"results": results, "instruments": instrument_costs(20000)}


def print_a(a: dict) -> list[tuple[str, bool, str]]:
    print("\n(a) HTTP metrics middleware, raw ASGI calls in one asyncio loop (no sockets); per-request times in us")
    head = (
        f"{'route':<38}{'n/app':>7}{'plain p50':>11}{'plain p99':>11}{'mw p50':>9}{'mw p99':>9}"
        f"{'added p50':>11}{'added (blocks)':>16}"
    )
    print(head)
    print("-" * len(head))
    worst = 0.0
    for r in a["results"]:
        bare = [x / 1000 for x in r.bare_ns]
        wrapped = [x / 1000 for x in r.wrapped_ns]
        added = pct(wrapped, 50) - pct(bare, 50)
        blocks = median(r.block_diffs_us)
        worst = max(worst, blocks, added)
        print(
            f"{r.label:<38}{len(bare):>7}{pct(bare, 50):>11.1f}{pct(bare, 99):>11.1f}{pct(wrapped, 50):>9.1f}"
            f"{pct(wrapped, 99):>9.1f}{added:>+11.1f}{blocks:>+16.1f}"
        )
        print(f"{'':<38}  block differences: min {min(r.block_diffs_us):+.1f}, max {max(r.block_diffs_us):+.1f} us")
    parts = ", ".join(f"{name} {us:.2f} us" for name, us in a["instruments"].items())
    print(f"  the middleware's instrument updates alone (timeit, best of 5): {parts}")
    print(
        "  added p50: difference of the per-request p50s; added (blocks): median over block pairs of the "
        "difference of the blocks' mean times (includes the driving loop, equal on both sides)"
    )
    return [
        (
            f"HTTP metrics middleware adds <= {GOAL_MIDDLEWARE_US:g} us a request",
            worst <= GOAL_MIDDLEWARE_US,
            f"{worst:+.1f} us (worst of the two routes, both measures)",
        )
    ]


# --- (b) scrapes of the real server ----------------------------------------------------------------------


def fill_jobs(server: HoneServer, project_id: str, finished: int, running: int) -> float:
    """Inserts finished and running jobs straight into the server's SQLite database; seconds taken."""
    from sqlalchemy import create_engine, insert

    from service.db.tables import Job

    now = int(time.time())
    rng = random.Random(7)
    rows = []
    for i in range(finished + running):
        is_running = i >= finished
        status = "running" if is_running else rng.choices(["succeeded", "failed", "cancelled"], [7, 2, 1])[0]
        created = now - (finished + running - i) * 60
        row = {
            "id": f"ftjob-bench{i:08d}",
            "project_id": project_id,
            "model": "hone-tiny",
            "base_model": "hone-tiny",
            "status": status,
            "created_at": created,
            "started_at": created + 5,
            "training_file": f"file-bench{i:08d}",
            "seed": i,
            "result_files": [],
            "attempts": 1,
            "queued_at": created,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}},
            },
        }
        if is_running:
            step = rng.randint(1, 900)
            row.update(
                trained_tokens=step * 2048,
                estimated_finish=now + rng.randint(60, 3600),
                last_report_at=now,
                executor_ref=f"local:bench:{100000 + i}",
                live_metrics={
                    "step": step,
                    "total_steps": 1000,
                    "train_loss": rng.uniform(0.3, 2.5),
                    "valid_loss": rng.uniform(0.3, 2.5),
                    "tokens_per_second": rng.uniform(500, 5000),
                    "step_seconds": rng.uniform(0.2, 3.0),
                    "mfu": rng.uniform(0.2, 0.5),
                    "step_at": now - rng.randint(0, 5),
                    "counted_tokens": step * 2048,
                },
            )
        else:
            row.update(
                finished_at=created + rng.randint(60, 3600),
                trained_tokens=rng.randint(10_000, 2_000_000),
                fine_tuned_model=f"ft:hone-tiny:bench::{i:08d}" if status == "succeeded" else None,
            )
        rows.append(row)
    keys = {k for row in rows for k in row}  # one executemany: every row names the same columns
    rows = [{k: row.get(k) for k in keys} for row in rows]
    started = time.perf_counter()
    engine = create_engine(f"sqlite:///{server.data_dir / 'hone.db'}", connect_args={"timeout": 60})
    try:
        with engine.begin() as conn:
            conn.execute(insert(Job), rows)
    finally:
        engine.dispose()
    return time.perf_counter() - started


@dataclass
class StateRow:
    label: str
    scrape_ms: list[float] = field(default_factory=list)
    fresh_scrape_ms: list[float] = field(default_factory=list)
    models_ms: list[float] = field(default_factory=list)
    healthz_ms: list[float] = field(default_factory=list)
    scrape_bytes: int = 0
    series: int = 0
    fresh_bytes: int = 0
    fresh_series: int = 0
    cpu_ms_per_scrape: float = float("nan")
    fresh_cpu_ms_per_scrape: float = float("nan")

    @property
    def diffs(self) -> list[float]:
        return [b - a for a, b in zip(self.fresh_scrape_ms, self.scrape_ms)]


def cpu_per_scrape(server: HoneServer, client: httpx.Client, n: int, idle_per_s: float) -> float:
    cpu0, wall0 = cpu_seconds(server.proc.pid), time.perf_counter()
    for _ in range(n):
        get_ms(client, "/metrics")
    cpu, wall = cpu_seconds(server.proc.pid) - cpu0, time.perf_counter() - wall0
    return max(0.0, cpu - idle_per_s * wall) * 1000 / n


def idle_cpu(server: HoneServer, seconds: float = 1.5) -> float:
    cpu0, wall0 = cpu_seconds(server.proc.pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(server.proc.pid) - cpu0) / (time.perf_counter() - wall0)


def measure_state(
    label: str,
    fresh: HoneServer,
    target: HoneServer,
    fresh_http: httpx.Client,
    http: httpx.Client,
    rounds: int,
    cpu_scrapes: int,
    idle: tuple[float, float],
) -> StateRow:
    print(f"    {label}: {rounds} rounds ...", flush=True)
    row = StateRow(label)
    ops = [
        ("fresh", lambda: get_ms(fresh_http, "/metrics")),
        ("scrape", lambda: get_ms(http, "/metrics")),
        ("models", lambda: get_ms(http, "/v1/models")),
        ("healthz", lambda: get_ms(http, "/healthz")),
    ]
    for _ in range(3):  # warm-up: the scrape's own route series exist before the counts
        for _, op in ops:
            op()
    out = {"fresh": row.fresh_scrape_ms, "scrape": row.scrape_ms, "models": row.models_ms, "healthz": row.healthz_ms}
    last: dict[str, httpx.Response] = {}
    for i in range(rounds):
        k = i % len(ops)
        for name, op in ops[k:] + ops[:k]:
            ms, reply = op()
            out[name].append(ms)
            last[name] = reply
    row.scrape_bytes, row.series = len(last["scrape"].content), series_count(last["scrape"].text)
    row.fresh_bytes, row.fresh_series = len(last["fresh"].content), series_count(last["fresh"].text)
    if cpu_scrapes:
        row.fresh_cpu_ms_per_scrape = cpu_per_scrape(fresh, fresh_http, cpu_scrapes, idle[0])
        row.cpu_ms_per_scrape = cpu_per_scrape(target, http, cpu_scrapes, idle[1])
    return row


def made_up_names(server: HoneServer, key: str, count: int, start: int) -> dict:
    """count gateway requests, GET /v1/models/<name> and unmatched paths, each with a distinct made-up name."""
    statuses: dict[str, dict[int, int]] = {"gateway": {}, "retrieve": {}, "unmatched": {}}
    with http_client(server.base_url, key) as http:
        for i in range(start, start + count):
            name = f"made-up-model-{i:05d}-{random.Random(i).getrandbits(32):08x}"
            for kind, reply in (
                (
                    "gateway",
                    http.post(
                        "/v1/chat/completions",
                        json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                    ),
                ),
                ("retrieve", http.get(f"/v1/models/{name}")),
                ("unmatched", http.get(f"/v1/no-such-route/{name}")),
            ):
                statuses[kind][reply.status_code] = statuses[kind].get(reply.status_code, 0) + 1
    return statuses


def scrape_text(http: httpx.Client) -> str:
    return get_ms(http, "/metrics")[1].text


def exporter_breakdown(data_dir: Path, n: int) -> dict:
    """A scrape's parts, timed in this process over the filled database (the server stopped)."""
    from prometheus_client import generate_latest

    from service.context import AppContext
    from service.metrics_export import MetricsExporter, _Families
    from service.settings import Settings

    ctx = AppContext.build(Settings(data_dir=data_dir, admin_api_key="sk-bench", auto_migrate=False))
    try:
        exporter = MetricsExporter(ctx)
        exporter.render()
        state_ms, text_ms, render_ms = [], [], []
        for _ in range(n):
            t = time.perf_counter()
            families, _ = exporter._state()
            state_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            generate_latest(_Families(families))
            text_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            exporter.render()
            render_ms.append((time.perf_counter() - t) * 1000)
    finally:
        ctx.db.dispose()
    return {"state": state_ms, "text": text_ms, "render": render_ms}


def part_b(root: Path, args) -> dict:
    env = {"HONE_LOCAL_SLOTS": "0", **args.server_env}
    print("\n(b) scrapes: starting two servers (one stays fresh, the baseline) ...", flush=True)
    fresh = HoneServer(root / "fresh", env)
    target = None
    result: dict = {"rows": []}
    try:
        target = HoneServer(root / "filled", env)
        fresh_key = fresh.new_project("observability benchmark").api_key
        key = target.new_project("observability benchmark")
        with http_client(fresh.base_url, fresh_key) as fresh_http, http_client(target.base_url, key.api_key) as http:
            idle = (idle_cpu(fresh), idle_cpu(target))
            result["idle_cpu_pct"] = (idle[0] * 100, idle[1] * 100)
            args_m = (fresh, target, fresh_http, http, args.rounds, args.cpu_scrapes, idle)
            result["rows"].append(measure_state("fresh", *args_m))
            took = fill_jobs(target, key.project_id, args.jobs, args.running)
            print(f"    inserted {args.jobs} finished and {args.running} running jobs in {took:.2f} s", flush=True)
            result["rows"].append(measure_state(f"{args.jobs:,} finished + {args.running} running jobs", *args_m))
            before = scrape_text(http)
            made_up_names(target, key.api_key, 1, 0)  # each kind's route and `_unknown` series appear here
            after_one = scrape_text(http)
            statuses = made_up_names(target, key.api_key, args.names, 1)
            after_all = scrape_text(http)
            result["names"] = {
                "statuses": statuses,
                "before": series_count(before),
                "after_one": series_count(after_one),
                "after_all": series_count(after_all),
                "leaked": sum("made-up-model" in line for line in after_all.splitlines()),
                "gateway_routes": sorted(
                    {
                        line.split('route="', 1)[1].split('"', 1)[0]
                        for line in set(_series_names(after_one)) - set(_series_names(before))
                        if line.startswith('hone_http_requests_total{method="POST"')
                    }
                ),
                "new_lines": sorted(set(_series_names(after_all)) - set(_series_names(before))),
            }
            result["rows"].append(measure_state(f"+ {args.names} made-up names x3", *args_m))
    finally:
        fresh.stop()
        if target is not None:
            target.stop()
    print("    timing the exporter in this process over the filled database ...", flush=True)
    result["breakdown"] = exporter_breakdown(target.data_dir, max(20, args.rounds // 4))
    return result


def _series_names(text: str) -> list[str]:
    """Each sample line without its value (the series' identity)."""
    return [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]


def print_b(b: dict, args) -> list[tuple[str, bool, str]]:
    print(
        f"\n(b) GET /metrics of a real server (SQLite, one process), one keep-alive httpx.Client per server; "
        f"{args.rounds} rounds per state, the order rotating; times in ms"
    )
    head = (
        f"{'state':<36}{'scrape p50':>11}{'p99':>8}{'fresh p50':>10}{'p99':>8}{'added':>8}{'bytes':>9}"
        f"{'series':>8}{'cpu/scrape':>11}{'models p50':>11}{'p99':>7}{'healthz p50':>12}{'p99':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in b["rows"]:
        print(
            f"{r.label:<36}{pct(r.scrape_ms, 50):>11.2f}{pct(r.scrape_ms, 99):>8.2f}"
            f"{pct(r.fresh_scrape_ms, 50):>10.2f}{pct(r.fresh_scrape_ms, 99):>8.2f}{median(r.diffs):>+8.2f}"
            f"{r.scrape_bytes:>9,}{r.series:>8}{r.cpu_ms_per_scrape:>11.2f}{pct(r.models_ms, 50):>11.2f}"
            f"{pct(r.models_ms, 99):>7.2f}{pct(r.healthz_ms, 50):>12.2f}{pct(r.healthz_ms, 99):>7.2f}"
        )
    for r in b["rows"]:
        print(
            f"  {r.label}: the fresh server's scrape (baseline) {r.fresh_bytes:,} bytes, {r.fresh_series} series, "
            f"{r.fresh_cpu_ms_per_scrape:.2f} ms CPU a scrape"
        )
    print(
        f"  added: median of per-round differences from the fresh server's scrape; cpu/scrape: the server "
        f"process's CPU per scrape over {args.cpu_scrapes} scrapes alone (idle loops, "
        f"{b['idle_cpu_pct'][1]:.1f}% of a core, subtracted); models: GET /v1/models with a project key"
    )
    n = b["names"]
    print(
        f"  made-up names: series {n['before']} before, {n['after_one']} after one request of each kind "
        f"(+{n['after_one'] - n['before']}: those routes' and `_unknown`'s series), {n['after_all']} after "
        f"{args.names} more of each (+{n['after_all'] - n['after_one']}); lines naming a made-up model: "
        f"{n['leaked']}; statuses {n['statuses']}"
    )
    grown = [s for s in n["new_lines"] if "_bucket" not in s]
    print(f"  series new since before the made-up names ({len(n['new_lines'])}, buckets left out below):")
    for s in grown:
        print(f"    {s}")
    if n["gateway_routes"] != ["/v1/chat/completions"]:
        print(
            f"  ! the gateway requests (POST /v1/chat/completions) were counted in hone_http_requests_total under "
            f"route={n['gateway_routes']}, not their template"
        )
    fresh_row, filled_row = b["rows"][0], b["rows"][1]
    added_series = filled_row.series - fresh_row.series
    print(
        f"  {args.jobs:,} finished + {args.running} running jobs added {added_series} series "
        f"({added_series / max(1, args.running):g} per running job), "
        f"{filled_row.scrape_bytes - fresh_row.scrape_bytes:,} bytes and "
        f"{filled_row.cpu_ms_per_scrape - fresh_row.cpu_ms_per_scrape:.2f} ms of server CPU to a scrape"
    )
    bd = b["breakdown"]
    print(
        f"  in process, over the filled database ({len(bd['render'])} each): render() p50 "
        f"{pct(bd['render'], 50):.2f} ms = database reads + state families {pct(bd['state'], 50):.2f} ms, "
        f"text exposition of the state families {pct(bd['text'], 50):.2f} ms, and the (small) instruments"
    )
    filled = b["rows"][1]
    growth = n["after_all"] - n["after_one"]
    return [
        (
            f"scrape with {args.jobs:,} jobs + {args.running} running <= {GOAL_SCRAPE_P50_MS:g} ms at p50",
            pct(filled.scrape_ms, 50) <= GOAL_SCRAPE_P50_MS,
            f"{pct(filled.scrape_ms, 50):.2f} ms (fresh {pct(filled.fresh_scrape_ms, 50):.2f} ms)",
        ),
        (
            f"{args.names} made-up names add <= {GOAL_SERIES_GROWTH} series",
            growth <= GOAL_SERIES_GROWTH and n["leaked"] == 0,
            f"+{growth} (+{n['after_all'] - n['before']} with the first of each kind)",
        ),
    ]


# --- (c) several workers -----------------------------------------------------------------------------------


def part_c(root: Path, args) -> dict:
    print("\n(c) workers: starting a server with HONE_WORKERS=1 and one with HONE_WORKERS=2 ...", flush=True)
    env = {"HONE_LOCAL_SLOTS": "0", **args.server_env}
    one = HoneServer(root / "workers-1", {**env, "HONE_WORKERS": "1"})
    two = None
    result: dict = {"one": [], "two": []}
    try:
        two = HoneServer(root / "workers-2", {**env, "HONE_WORKERS": "2"})
        keys = [s.new_project("workers benchmark").api_key for s in (one, two)]
        clients = [http_client(s.base_url, k) for s, k in zip((one, two), keys)]
        # Two connections to the two-worker server, so both workers are likely to serve and write files.
        extra = http_client(two.base_url, keys[1])
        try:
            for c in (*clients, extra):
                for _ in range(20):
                    get_ms(c, "/v1/models")
                    get_ms(c, "/healthz")
                    get_ms(c, "/metrics")
            print(f"    {args.rounds} interleaved scrape pairs ...", flush=True)
            for i in range(args.rounds):
                order = ((0, clients[0]), (1, clients[1])) if i % 2 == 0 else ((1, clients[1]), (0, clients[0]))
                for which, c in order:
                    ms, reply = get_ms(c, "/metrics")
                    result["one" if which == 0 else "two"].append(ms)
                    result[f"last_{which}"] = reply.text
        finally:
            for c in (*clients, extra):
                c.close()
        result["files"] = sorted(p.name for p in (two.data_dir / "metrics").glob("*.db"))
    finally:
        one.stop()
        if two is not None:
            two.stop()
    return result


def print_c(c: dict) -> None:
    print(
        "\n(c) GET /metrics, HONE_WORKERS=2 (multiprocess mode) against HONE_WORKERS=1, fresh servers, pairs "
        "interleaved; times in ms"
    )
    head = f"{'server':<28}{'n':>5}{'p50':>8}{'p90':>8}{'p99':>8}{'bytes':>9}{'series':>8}"
    print(head)
    print("-" * len(head))
    for label, key, last in (("HONE_WORKERS=1 (baseline)", "one", "last_0"), ("HONE_WORKERS=2", "two", "last_1")):
        v = c[key]
        print(
            f"{label:<28}{len(v):>5}{pct(v, 50):>8.2f}{pct(v, 90):>8.2f}{pct(v, 99):>8.2f}"
            f"{len(c[last].encode()):>9,}{series_count(c[last]):>8}"
        )
    diffs = [b - a for a, b in zip(c["one"], c["two"])]
    print(
        f"  added by multiprocess mode: p50 {pct(c['two'], 50) - pct(c['one'], 50):+.2f} ms (per-pair median "
        f"{median(diffs):+.2f} ms); its metrics files: {len(c['files'])} ({', '.join(c['files'])}); "
        "with one worker the scrape also carries process_* series, with two it does not"
    )
    counts = [{}, {}]
    for which, last in ((0, "last_0"), (1, "last_1")):
        for name in _series_names(c[last]):
            family = name.split("{", 1)[0]
            counts[which][family] = counts[which].get(family, 0) + 1
    differ = [
        f"{f} {counts[0].get(f, 0)}/{counts[1].get(f, 0)}"
        for f in sorted(set(counts[0]) | set(counts[1]))
        if counts[0].get(f, 0) != counts[1].get(f, 0)
    ]
    print(f"  series that differ (1 worker / 2 workers): {', '.join(differ) or 'none'}")


# --- main ----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="10 block pairs in (a), 60 rounds in (b) and (c) (explicit options win)"
    )
    parser.add_argument("--parts", default="a,b,c", help="which parts to run, e.g. a,b (default a,b,c)")
    parser.add_argument("--blocks", type=int, help="block pairs per route in (a) (default 40; quick 10)")
    parser.add_argument("--block", type=int, default=500, help="requests per block in (a) (default 500)")
    parser.add_argument(
        "--rounds", type=int, help="rounds per state in (b), scrape pairs in (c) (default 200; quick 60)"
    )
    parser.add_argument(
        "--cpu-scrapes",
        type=int,
        help="scrapes alone per server and state in (b), for the CPU per scrape (default 50; quick 20; 0 skips)",
    )
    parser.add_argument("--jobs", type=int, default=1000, help="finished jobs inserted in (b) (default 1000)")
    parser.add_argument("--running", type=int, default=50, help="running jobs inserted in (b) (default 50)")
    parser.add_argument("--names", type=int, default=200, help="made-up model names in (b) (default 200)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the servers (repeatable), e.g. HONE_LOG_LEVEL=WARNING",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary folder (server logs, databases)")
    args = parser.parse_args()
    try:
        args.server_env = dict(item.split("=", 1) for item in args.server_env)
    except ValueError:
        parser.error("--server-env takes NAME=VALUE")
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts <= {"a", "b", "c"}:
        parser.error("--parts takes a comma-separated subset of a,b,c")
    args.blocks = args.blocks or (10 if args.quick else 40)
    args.rounds = args.rounds or (60 if args.quick else 200)
    args.cpu_scrapes = args.cpu_scrapes if args.cpu_scrapes is not None else (20 if args.quick else 50)
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    from importlib.metadata import version

    import starlette

    print("Hone observability benchmark")
    print(
        f"  python {platform.python_version()} on {platform.machine()}, {CORES} CPU core(s); starlette "
        f"{starlette.__version__}, prometheus-client {version('prometheus-client')}; "
        "servers on loopback; code: " + git_revision()
    )
    if CORES <= 4:
        print(f"  NOTE: {CORES} core(s) shared by the servers and this client: latencies include waiting for CPU.")
    root = Path(tempfile.mkdtemp(prefix="hone-observability-bench-"))
    goals: list[tuple[str, bool, str]] = []
    a = b = c = None
    try:
        if "a" in args.parts:
            a = part_a(args)
            gc.collect()
        if "b" in args.parts:
            b = part_b(root, args)
        if "c" in args.parts:
            c = part_c(root, args)
    except BaseException:
        args.keep_data = True
        raise
    finally:
        if args.keep_data:
            print(f"Data kept in {root} (server logs and databases)")
        else:
            shutil.rmtree(root, ignore_errors=True)

    if a is not None:
        goals += print_a(a)
    if b is not None:
        goals += print_b(b, args)
    if c is not None:
        print_c(c)
    print("\nGoals:")
    for label, ok, value in goals:
        print(f"  {label:<58} {value:<50} {'PASS' if ok else 'MISS'}")
    print(f"\nTotal runtime: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
