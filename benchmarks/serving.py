"""Serving benchmark: what the gateway adds per request, how soon a finished job answers, one shared engine
serving many adapters, and what structured decoding costs the built-in engine.

    .venv/bin/python benchmarks/serving.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/serving.py --quick    # fewer rounds, pairs and jobs, no prewarm baseline (~2 min)
    .venv/bin/python benchmarks/serving.py --parts a,d
    .venv/bin/python benchmarks/serving.py --parts a --against /tmp/hone-before   # (a) for two checkouts at once

Four parts, each against a baseline measured in the same run:

(a) Gateway overhead. Starts the real server (`python -m service` through tests.support.HoneServer) with
    auto-deploy on, creates an endpoint for the base model hone-tiny, and finds its engine's URL and API key
    (the local backend's state file `engines/<endpoint id>.json`). Then, in `--rounds` rounds, sends the same chat
    request, interleaved pair by pair (the order alternates), straight to the engine (the baseline) and through
    the gateway (`/v1/chat/completions`, project key), one keep-alive httpx.Client per path: non-stream with
    max_tokens 1 (latency), then stream with max_tokens 8 (time to the first content event). The request bodies
    are byte-identical. The added latency is the gateway's p50 minus the direct engine's p50 over all rounds'
    pairs (with p95, and the median of the per-pair differences); each round's own figure, the direct engine's
    spread and the load average say how noisy the run was. The gateway process's CPU time per request is read from
    /proc, with its idle background loops subtracted. With `--against DIR` a second server runs `python -m service`
    from another checkout (an earlier commit exported there, say) beside this one, each with its own hone-tiny
    engine, and every iteration calls all four paths in a shuffled order: before and after under the same load.

(b) Job succeeded -> first token through the gateway. Trains `--jobs` small jobs in turn (120 synthetic support
    tickets, 4 epochs) on the same server, polls each every 0.05 s, and from the moment it reads `succeeded`
    streams chat completions for the tuned model through the gateway (retrying 503/404 every 0.05 s) until the
    first content token arrives; then deletes its endpoint. With the built-in engine the server prewarms a spare
    engine for the job's base model while the job trains (HONE_PREWARM_ENGINES, on by default); the baseline is
    the same on a fresh server with HONE_PREWARM_ENGINES=false (skipped by --quick unless --baseline is given).

(c) One shared engine, 50 adapters in rotation. Starts the built-in engine (`python -m inference`, the command
    line of inference.launcher.engine_command) with max_loras 8, max_cpu_loras 16, creates 50 distinct rank-8
    LoRA adapters of hone-tiny (q_proj, v_proj, random lora_B), times each load_adapter, then sends
    round-robin non-stream requests over all 50 (max_tokens 8, ignore_eos so every answer is 8 tokens) against
    the same number of requests on the same engine to the base model (the baseline) and to one adapter (LoRA
    compute without switching). 16 resident adapters < 50 in rotation: every request reloads its adapter from
    disk (the engine's LRU evictions are counted from its log). A second engine with max_cpu_loras 64 (all
    resident) is the no-reload row.

(d) Structured decoding. A built-in engine on hone-tiny answers, interleaved pair by pair in rounds, the same chat
    request as free text (ignore_eos, the baseline) and with a json_schema response_format whose one string field
    is longer than the answer (benchmarks/structured_outputs.py's), both to max_tokens: tokens per second of each.

Goals (printed PASS/MISS; a miss never makes the script exit non-zero): the gateway adds <= 1 ms at p50
(non-stream) and <= 2 ms to the p50 time to first token; a succeeded job answers its first token through the
gateway within 1 s at p95; json_schema costs at most 10% of free text's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx

from benchmarks.revision import git_revision  # noqa: E402
from service.engines.local import state_file, stop_process_group  # noqa: E402
from tests.support import MODEL_CACHE, HoneServer, free_port, jsonl, wait_endpoint

GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_TTFT_MS = 2.0
GOAL_FIRST_TOKEN_S = 1.0  # at p95 over the jobs of (b)
GOAL_STRUCTURED_COST = 0.10
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PROMPT = [{"role": "user", "content": "Where can I find my invoice for last month?"}]


# --- small helpers ---------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, from /proc."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def engine_access(data_dir: Path, key: str) -> tuple[str, str | None, int]:
    """URL, API key and pid of a running engine of the local backend: its state file (the key there, or in the
    engine's environment for state files that do not hold it)."""
    state = json.loads(state_file(data_dir, key).read_text())
    if state.get("api_key"):
        return state["url"], state["api_key"], state["pid"]
    environ = dict(
        item.split(b"=", 1)
        for item in (Path("/proc") / str(state["pid"]) / "environ").read_bytes().split(b"\0")
        if b"=" in item
    )
    api_key = environ[b"VLLM_API_KEY"].decode() if b"VLLM_API_KEY" in environ else None
    return state["url"], api_key, state["pid"]


def http_client(base_url: str, api_key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=120,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def post_ms(client: httpx.Client, path: str, body: bytes) -> float:
    """One non-stream request, send to full body; milliseconds."""
    start = time.perf_counter()
    reply = client.post(path, content=body, headers={"content-type": "application/json"})
    reply.read()
    elapsed = (time.perf_counter() - start) * 1000
    if reply.status_code != 200:
        raise RuntimeError(f"{client.base_url}{path} answered {reply.status_code}: {reply.text[:300]}")
    return elapsed


def first_content(reply: httpx.Response, start: float) -> tuple[float | None, float]:
    """Reads an SSE chat stream to its end; (ms to the first event with content, ms to the end)."""
    first = None
    for line in reply.iter_lines():
        if first is None and line.startswith("data: {"):
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                first = (time.perf_counter() - start) * 1000
    return first, (time.perf_counter() - start) * 1000


def stream_ms(client: httpx.Client, path: str, body: bytes) -> tuple[float, float]:
    start = time.perf_counter()
    with client.stream("POST", path, content=body, headers={"content-type": "application/json"}) as reply:
        if reply.status_code != 200:
            reply.read()
            raise RuntimeError(f"{client.base_url}{path} answered {reply.status_code}: {reply.text[:300]}")
        ttft, total = first_content(reply, start)
    if ttft is None:
        raise RuntimeError(f"{client.base_url}{path}: the stream carried no content")
    return ttft, total


def log_entries(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def stop_process(proc: subprocess.Popen) -> None:
    stop_process_group(proc, grace=10)


# --- (a) gateway overhead ------------------------------------------------------------------------------


@dataclass
class Paired:
    direct: list[float] = field(default_factory=list)
    gateway: list[float] = field(default_factory=list)
    gateway_cpu_ms: float = float("nan")  # gateway process CPU per request, idle background subtracted

    @property
    def diffs(self) -> list[float]:
        return [g - d for d, g in zip(self.direct, self.gateway)]

    @property
    def added_p50(self) -> float:
        """Gateway p50 minus direct p50: the goal's figure."""
        return pct(self.gateway, 50) - pct(self.direct, 50)

    def extend(self, other: Paired) -> None:
        self.direct += other.direct
        self.gateway += other.gateway


def interleave(n: int, direct_call, gateway_call, gateway_pid: int, idle_cpu_per_s: float) -> Paired:
    """n pairs, the order alternating each pair; returns the latencies and the gateway's CPU per request."""
    out = Paired()
    cpu0, wall0 = cpu_seconds(gateway_pid), time.perf_counter()
    for i in range(n):
        if i % 2 == 0:
            out.direct.append(direct_call())
            out.gateway.append(gateway_call())
        else:
            out.gateway.append(gateway_call())
            out.direct.append(direct_call())
    cpu, wall = cpu_seconds(gateway_pid) - cpu0, time.perf_counter() - wall0
    out.gateway_cpu_ms = max(0.0, cpu - idle_cpu_per_s * wall) * 1000 / n
    return out


def part_a(server: HoneServer, http: httpx.Client, project_key: str, args) -> dict:
    print("\n(a) gateway overhead: creating an endpoint for hone-tiny ...", flush=True)
    started = time.perf_counter()
    created = http.post("/v1/endpoints", json={"model": "hone-tiny"})
    created.raise_for_status()
    ep = wait_endpoint(http, "hone-tiny", timeout=300)
    if ep["state"] != "ready":
        raise RuntimeError(f"the hone-tiny endpoint failed: {ep['error']}")
    print(f"    endpoint {ep['id']} ready in {time.perf_counter() - started:.1f} s (client-measured)", flush=True)
    url, engine_key, _ = engine_access(server.data_dir, ep["id"])
    body = json.dumps({"model": "hone-tiny", "messages": PROMPT, "max_tokens": 1, "temperature": 0}).encode()
    stream_body = json.dumps(
        {"model": "hone-tiny", "messages": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True}
    ).encode()
    result: dict = {"endpoint": ep["id"], "engine_url": url, "rounds": [], "load": [os.getloadavg()[0]]}
    with http_client(url, engine_key) as direct, http_client(server.base_url, project_key) as gateway:
        for _ in range(args.warmup):
            post_ms(direct, "/v1/chat/completions", body)
            post_ms(gateway, "/v1/chat/completions", body)
            stream_ms(direct, "/v1/chat/completions", stream_body)
            stream_ms(gateway, "/v1/chat/completions", stream_body)
        # What the server's background loops (scheduler, deployer, validation ...) burn while idle.
        cpu0, wall0 = cpu_seconds(server.proc.pid), time.perf_counter()
        time.sleep(2.0)
        idle = (cpu_seconds(server.proc.pid) - cpu0) / (time.perf_counter() - wall0)
        result["idle_cpu_pct"] = idle * 100
        totals: dict[str, list[float]] = {"direct": [], "gateway": []}

        def timed(client, name):
            ttft, total = stream_ms(client, "/v1/chat/completions", stream_body)
            totals[name].append(total)
            return ttft

        print(
            f"    {args.rounds} rounds of {args.requests} non-stream pairs (max_tokens 1), then {args.stream_requests} "
            "stream pairs (max_tokens 8, time to first content), direct engine vs gateway ...",
            flush=True,
        )
        for _ in range(args.rounds):
            plain = interleave(
                args.requests,
                lambda: post_ms(direct, "/v1/chat/completions", body),
                lambda: post_ms(gateway, "/v1/chat/completions", body),
                server.proc.pid,
                idle,
            )
            stream = interleave(
                args.stream_requests,
                lambda: timed(direct, "direct"),
                lambda: timed(gateway, "gateway"),
                server.proc.pid,
                idle,
            )
            result["rounds"].append((plain, stream))
            result["load"].append(os.getloadavg()[0])
            print(
                f"      round {len(result['rounds'])}: added p50 non-stream {plain.added_p50:+.2f} ms, "
                f"TTFT {stream.added_p50:+.2f} ms",
                flush=True,
            )
        result["stream_totals"] = totals
    http.delete(f"/v1/endpoints/{ep['id']}")  # part (b) starts with no engine of its own
    deadline = time.monotonic() + 30
    while (server.data_dir / "engines" / f"{ep['id']}.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def print_a(result: dict) -> list[tuple[str, bool, str]]:
    rounds: list[tuple[Paired, Paired]] = result["rounds"]
    plain, stream = Paired(), Paired()
    for p, st in rounds:
        plain.extend(p)
        stream.extend(st)
    print(
        f"\n(a) Gateway overhead, hone-tiny base endpoint; engine {result['engine_url']}; one keep-alive "
        f"httpx.Client per path, pairs interleaved; {len(rounds)} rounds, all pairs pooled"
    )
    head = f"{'request':<38}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
    print(head)
    print("-" * len(head))

    def row(label, values):
        print(
            f"{label:<38}{len(values):>5}{pct(values, 50):>9.2f}{pct(values, 95):>9.2f}{pct(values, 99):>9.2f}"
            f"{sum(values) / max(1, len(values)):>9.2f}"
        )

    row("non-stream, direct to engine", plain.direct)
    row("non-stream, through gateway", plain.gateway)
    row("  per-pair difference (gw - direct)", plain.diffs)
    row("stream TTFT, direct to engine", stream.direct)
    row("stream TTFT, through gateway", stream.gateway)
    row("  per-pair difference (gw - direct)", stream.diffs)
    row("stream, full 8 tokens, direct", result["stream_totals"]["direct"])
    row("stream, full 8 tokens, gateway", result["stream_totals"]["gateway"])
    added, added_ttft = plain.added_p50, stream.added_p50
    added95 = pct(plain.gateway, 95) - pct(plain.direct, 95)
    added_ttft95 = pct(stream.gateway, 95) - pct(stream.direct, 95)
    print(
        f"added by the gateway, non-stream: p50 {added:+.2f} ms, p95 {added95:+.2f} ms (difference of percentiles);"
        f" median of per-pair differences {pct(plain.diffs, 50):+.2f} ms"
    )
    print(
        f"added by the gateway, stream TTFT: p50 {added_ttft:+.2f} ms, p95 {added_ttft95:+.2f} ms; "
        f"median of per-pair differences {pct(stream.diffs, 50):+.2f} ms"
    )
    by_round = [(p.added_p50, st.added_p50, pct(p.direct, 50), pct(st.direct, 50)) for p, st in rounds]

    def spread(i: int) -> str:
        values = [r[i] for r in by_round]
        return f"{min(values):+.2f} to {max(values):+.2f} (median {pct(values, 50):+.2f})"

    print(
        f"noise over the {len(rounds)} rounds: added p50 non-stream {spread(0)} ms, TTFT {spread(1)} ms; the direct "
        f"engine's own p50 {min(r[2] for r in by_round):.2f}-{max(r[2] for r in by_round):.2f} ms non-stream, "
        f"{min(r[3] for r in by_round):.2f}-{max(r[3] for r in by_round):.2f} ms TTFT; load average "
        f"{min(result['load']):.1f}-{max(result['load']):.1f} on {CORES} cores"
    )
    cpu_plain = pct([p.gateway_cpu_ms for p, _ in rounds], 50)
    cpu_stream = pct([st.gateway_cpu_ms for _, st in rounds], 50)
    print(
        f"gateway process CPU per request (median of rounds): {cpu_plain:.2f} ms non-stream, {cpu_stream:.2f} ms "
        f"stream (its idle background loops, {result['idle_cpu_pct']:.1f}% of a core, subtracted)"
    )
    return [
        (
            f"gateway adds <= {GOAL_ADDED_P50_MS:g} ms at p50, non-stream",
            added <= GOAL_ADDED_P50_MS,
            f"{added:+.2f} ms (rounds {spread(0).split(' (')[0]})",
        ),
        (
            f"gateway adds <= {GOAL_ADDED_TTFT_MS:g} ms to p50 TTFT",
            added_ttft <= GOAL_ADDED_TTFT_MS,
            f"{added_ttft:+.2f} ms (rounds {spread(1).split(' (')[0]})",
        ),
    ]


def engine_endpoint(server: HoneServer, http: httpx.Client) -> tuple[str, str | None, str]:
    """An endpoint for hone-tiny on `server`: its engine's URL and API key, and the endpoint's id."""
    http.post("/v1/endpoints", json={"model": "hone-tiny"}).raise_for_status()
    ep = wait_endpoint(http, "hone-tiny", timeout=300)
    if ep["state"] != "ready":
        raise RuntimeError(f"the hone-tiny endpoint failed: {ep['error']}")
    url, engine_key, _ = engine_access(server.data_dir, ep["id"])
    return url, engine_key, ep["id"]


def part_a_against(root: Path, server: HoneServer, project_key: str, args) -> dict:
    """(a) for this checkout and another one side by side: a second server runs `python -m service` from
    `--against` (its engines, like this server's, fork from this process's warm interpreter: the same engine code),
    each with its own hone-tiny engine, and every iteration calls all four paths in a shuffled order."""
    import random
    import shlex

    other = HoneServer(
        root / "against",
        {"HONE_LOCAL_SLOTS": "1", "HONE_AUTO_DEPLOY": "true", **args.server_env},
        command=["bash", "-c", f"cd {shlex.quote(args.against)} && exec {shlex.quote(sys.executable)} -m service"],
    )
    print(f"\n(a') this checkout and {args.against}, side by side ...", flush=True)
    out: dict = {"against": args.against, "load": [os.getloadavg()[0]], "kinds": {}}
    try:
        other_key = other.new_project("against").api_key
        with http_client(server.base_url, project_key) as http, http_client(other.base_url, other_key) as other_http:
            clients: dict[str, httpx.Client] = {"this gateway": http, "against gateway": other_http}
            for side, srv, client in (("this", server, http), ("against", other, other_http)):
                url, engine_key, _ = engine_endpoint(srv, client)
                clients[f"{side} direct"] = http_client(url, engine_key)
            body = json.dumps({"model": "hone-tiny", "messages": PROMPT, "max_tokens": 1, "temperature": 0}).encode()
            stream_body = json.dumps(
                {"model": "hone-tiny", "messages": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True}
            ).encode()
            calls = {
                "non-stream": lambda c: post_ms(c, "/v1/chat/completions", body),
                "stream TTFT": lambda c: stream_ms(c, "/v1/chat/completions", stream_body)[0],
            }
            for kind, call in calls.items():
                for client in clients.values():
                    for _ in range(args.warmup):
                        call(client)
                times: dict[str, list[float]] = {name: [] for name in clients}
                shuffle = random.Random(0)
                for _ in range(args.rounds * args.requests):
                    order = list(clients)
                    shuffle.shuffle(order)
                    for name in order:
                        times[name].append(call(clients[name]))
                out["kinds"][kind] = times
                out["load"].append(os.getloadavg()[0])
            for name in ("this direct", "against direct"):
                clients[name].close()
    finally:
        other.stop()
    return out


def print_a_against(result: dict) -> None:
    print(
        f"\n(a') This checkout and {result['against']} side by side (two servers, each with its own hone-tiny "
        f"engine; all four paths called in a shuffled order each iteration; load average "
        f"{min(result['load']):.1f}-{max(result['load']):.1f})"
    )
    head = f"{'request':<14}{'server':<10}{'n':>5}{'direct p50':>12}{'gateway p50':>13}{'added p50':>11}{'pair median':>13}"
    print(head)
    print("-" * len(head))
    for kind, times in result["kinds"].items():
        for side in ("this", "against"):
            paired = Paired(times[f"{side} direct"], times[f"{side} gateway"])
            print(
                f"{kind:<14}{side:<10}{len(paired.direct):>5}{pct(paired.direct, 50):>12.2f}"
                f"{pct(paired.gateway, 50):>13.2f}{paired.added_p50:>+11.2f}{pct(paired.diffs, 50):>+13.2f}"
            )


# --- (b) job succeeded -> first token ---------------------------------------------------------------------


def first_token_after_success(server: HoneServer, http: httpx.Client, project_key: str, label: str) -> dict:
    """One job trained, then streamed to from the moment it reads `succeeded`; its endpoint deleted afterwards, so
    that the next job starts as this one did (no engine but the spare prewarmed for it)."""
    from examples.support_tickets import make

    train, held_out = make(count=120, seed=3)
    engines_dir = server.data_dir / "engines"
    print(f"    {label}: training a job (96 tickets, 4 epochs) ...", flush=True)
    uploaded = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("tickets.jsonl", jsonl(train), "application/jsonl")}
    )
    uploaded.raise_for_status()
    job = http.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "hone-tiny",
            "training_file": uploaded.json()["id"],
            "seed": 1,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 0.5}},
            },
        },
    )
    job.raise_for_status()
    job_id = job.json()["id"]
    submitted = time.perf_counter()
    running_at = spare_at = None
    while True:
        status = http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        now = time.perf_counter()
        if status["status"] == "running" and running_at is None:
            running_at = now
        if (
            spare_at is None
            and engines_dir.is_dir()
            and any(p.name.startswith("spare_") for p in engines_dir.iterdir())
        ):
            spare_at = now
        if status["status"] == "succeeded":
            t0 = now
            break
        if status["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"the job ended {status['status']}: {status.get('error')}")
        if now - submitted > 600:
            raise RuntimeError(f"the job was still {status['status']} after 600 s")
        time.sleep(0.05)
    model = status["fine_tuned_model"]
    body = json.dumps(
        {"model": model, "messages": held_out[0]["messages"][:-1], "max_tokens": 8, "temperature": 0, "stream": True}
    ).encode()
    refusals: dict[int, int] = {}
    t1 = None
    with http_client(server.base_url, project_key) as gateway:
        while t1 is None:
            with gateway.stream(
                "POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            ) as reply:
                if reply.status_code == 200:
                    first, _ = first_content(reply, t0)
                    t1 = t0 + (first or float("nan")) / 1000
                    break
                reply.read()
            if reply.status_code not in (503, 404, 502):
                raise RuntimeError(f"the gateway answered {reply.status_code}: {reply.text[:300]}")
            refusals[reply.status_code] = refusals.get(reply.status_code, 0) + 1
            if time.perf_counter() - t0 > 300:
                raise RuntimeError("no answer through the gateway within 300 s of success")
            time.sleep(0.05)
    ep = wait_endpoint(http, model, timeout=30)
    entries = log_entries(server.log_path)
    deploy_s = next(
        (e.get("seconds") for e in entries if e.get("msg") == "endpoint ready" and e.get("endpoint_id") == ep["id"]),
        None,
    )
    claimed = any(e.get("msg") == "spare engine claimed" and e.get("endpoint_id") == ep["id"] for e in entries)
    print(f"      succeeded -> first token {t1 - t0:.2f} s (deploy {deploy_s} s, spare claimed: {claimed})", flush=True)
    http.delete(f"/v1/endpoints/{ep['id']}")
    deadline = time.monotonic() + 30
    while state_file(server.data_dir, ep["id"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return {
        "label": label,
        "first_token_s": t1 - t0,
        "train_s": t0 - (running_at or submitted),
        "submitted_to_success_s": t0 - submitted,
        "spare_after_running_s": (spare_at - running_at) if spare_at and running_at else None,
        "created_to_ready_s": (ep["ready_at"] - ep["created_at"]) if ep.get("ready_at") else None,
        "deploy_s": deploy_s,
        "claimed_spare": claimed,
        "refusals": refusals,
        "endpoint": ep["id"],
    }


def part_b(server: HoneServer, http: httpx.Client, project_key: str, label: str, jobs: int) -> dict:
    print(f"\n(b) {label}: {jobs} job(s) in turn, each measured from succeeded to its first token ...", flush=True)
    return {"label": label, "jobs": [first_token_after_success(server, http, project_key, label) for _ in range(jobs)]}


def print_b(groups: list[dict]) -> list[tuple[str, bool, str]]:
    print(
        "\n(b) Job succeeded -> first token through the gateway (t0: first poll, every 0.05 s, that reads "
        "`succeeded`; t1: first content event of a streamed chat completion for the tuned model, retried every "
        "0.05 s while it answers 503)"
    )
    head = (
        f"{'server':<28}{'job':>4}{'first token s':>14}{'deploy s':>10}{'created->ready':>16}{'spare?':>8}"
        f"{'retries':>9}{'running s':>11}{'submit->ok s':>14}{'submit->token s':>17}"
    )
    print(head)
    print("-" * len(head))
    for group in groups:
        for number, r in enumerate(group["jobs"], start=1):
            retries = ", ".join(f"{n}x{code}" for code, n in sorted(r["refusals"].items())) or "0"
            ctr = f"{r['created_to_ready_s']} s" if r["created_to_ready_s"] is not None else "-"
            print(
                f"{group['label']:<28}{number:>4}{r['first_token_s']:>14.2f}{(r['deploy_s'] or float('nan')):>10.2f}"
                f"{ctr:>16}{('yes' if r['claimed_spare'] else 'no'):>8}{retries:>9}{r['train_s']:>11.1f}"
                f"{r['submitted_to_success_s']:>14.1f}{r['submitted_to_success_s'] + r['first_token_s']:>17.1f}"
            )
    for group in groups:
        firsts = [r["first_token_s"] for r in group["jobs"]]
        print(
            f"  {group['label']}: succeeded -> first token over {len(firsts)} job(s): p50 {pct(firsts, 50):.2f} s, "
            f"p95 {pct(firsts, 95):.2f} s (nearest rank), min {min(firsts):.2f} s, max {max(firsts):.2f} s"
        )
        spares = [r["spare_after_running_s"] for r in group["jobs"] if r["spare_after_running_s"] is not None]
        if spares:
            print(
                f"  {group['label']}: the spare engine's state file appeared {min(spares):.1f}-{max(spares):.1f} s "
                "after the job was first seen running"
            )
    print(
        "  deploy s: the deployer's own 'endpoint ready' time (fetch weights, engine, load adapter, parity gate); "
        "created->ready: the endpoint's created_at -> ready_at (whole seconds); running s: first seen running -> "
        "first seen succeeded (trainer start-up included)"
    )
    firsts = [r["first_token_s"] for r in groups[0]["jobs"]]
    return [
        (
            f"job succeeded -> first token <= {GOAL_FIRST_TOKEN_S:g} s at p95 ({groups[0]['label']})",
            pct(firsts, 95) <= GOAL_FIRST_TOKEN_S,
            f"p95 {pct(firsts, 95):.2f} s, p50 {pct(firsts, 50):.2f} s over {len(firsts)} jobs",
        )
    ]


def part_b_baseline(root: Path, server_env: dict[str, str], jobs: int) -> dict:
    server = HoneServer(
        root / "no-prewarm",
        {"HONE_LOCAL_SLOTS": "1", "HONE_AUTO_DEPLOY": "true", **server_env, "HONE_PREWARM_ENGINES": "false"},
    )
    try:
        key = server.new_project("no prewarm").api_key
        with http_client(server.base_url, key) as http:
            return part_b(server, http, key, "HONE_PREWARM_ENGINES=false", jobs)
    finally:
        server.stop()


# --- (c) one shared engine, many adapters -----------------------------------------------------------------


def make_adapters(model_dir: Path, out: Path, count: int) -> list[Path]:
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    generator = torch.Generator().manual_seed(0)
    folders = []
    with torch.no_grad():
        for i in range(count):
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            folder = out / f"adapter-{i:02d}"
            peft.save_pretrained(folder)
            folders.append(folder)
    return folders


@dataclass
class SharedRow:
    max_cpu_loras: int
    loads_ms: list[float] = field(default_factory=list)
    base_ms: list[float] = field(default_factory=list)
    base_s: float = 0.0
    single_ms: list[float] = field(default_factory=list)
    single_s: float = 0.0
    rotation_ms: list[float] = field(default_factory=list)
    rotation_s: float = 0.0
    evictions: int = 0
    tokens: set = field(default_factory=set)


def shared_engine(model_dir: Path, adapters: list[Path], max_cpu_loras: int, requests: int, log_dir: Path) -> SharedRow:
    from inference.client import EngineClient
    from inference.launcher import engine_command

    port = free_port()
    launch = engine_command(
        "builtin",
        str(model_dir),
        "hone-tiny",
        host="127.0.0.1",
        port=port,
        max_loras=8,
        max_cpu_loras=max_cpu_loras,
        max_lora_rank=16,
    )
    env = {**os.environ, **launch.env, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    log_path = log_dir / f"engine-cpu{max_cpu_loras}.log"
    row = SharedRow(max_cpu_loras)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            launch.argv,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        with EngineClient(url, timeout=120) as client:
            client.wait_healthy(180, alive=lambda: proc.poll() is None)
            for i, folder in enumerate(adapters):
                start = time.perf_counter()
                client.load_adapter(f"tenant-{i:02d}", str(folder))
                row.loads_ms.append((time.perf_counter() - start) * 1000)
        names = [f"tenant-{i:02d}" for i in range(len(adapters))]

        def body(model: str) -> bytes:
            return json.dumps(
                {"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
            ).encode()

        with http_client(url, None) as http:
            for _ in range(5):
                post_ms(http, "/v1/chat/completions", body("hone-tiny"))
            start = time.perf_counter()
            for _ in range(requests):
                row.base_ms.append(post_ms(http, "/v1/chat/completions", body("hone-tiny")))
            row.base_s = time.perf_counter() - start
            post_ms(http, "/v1/chat/completions", body(names[-1]))  # the last loaded: resident in either engine
            start = time.perf_counter()
            for _ in range(requests):
                row.single_ms.append(post_ms(http, "/v1/chat/completions", body(names[-1])))
            row.single_s = time.perf_counter() - start
            evicted_before = log_path.read_text(errors="replace").count("evicting LoRA weights")
            start = time.perf_counter()
            for i in range(requests):
                t = time.perf_counter()
                reply = http.post(
                    "/v1/chat/completions",
                    content=body(names[i % len(names)]),
                    headers={"content-type": "application/json"},
                )
                row.rotation_ms.append((time.perf_counter() - t) * 1000)
                if reply.status_code != 200:
                    raise RuntimeError(f"{names[i % len(names)]}: {reply.status_code} {reply.text[:300]}")
                row.tokens.add(reply.json()["usage"]["completion_tokens"])
            row.rotation_s = time.perf_counter() - start
        row.evictions = log_path.read_text(errors="replace").count("evicting LoRA weights") - evicted_before
    finally:
        stop_process(proc)
    return row


def part_c(root: Path, args) -> list[SharedRow]:
    from hone_kernel.tiny_model import build

    model_dir = MODEL_CACHE / "hone-tiny"
    if not (model_dir / "config.json").exists():
        print("    building hone-tiny ...", flush=True)
        build(model_dir)
    print(f"\n(c) shared engine: creating {args.adapters} rank-8 adapters ...", flush=True)
    adapters = make_adapters(model_dir, root / "adapters", args.adapters)
    rows = []
    for cpu_loras in args.cpu_loras:
        print(
            f"    engine with max_loras 8, max_cpu_loras {cpu_loras}: {args.adapters} loads, "
            f"{args.rotation} requests each to the base model, to one adapter and in rotation ...",
            flush=True,
        )
        rows.append(shared_engine(model_dir, adapters, cpu_loras, args.rotation, root))
    return rows


def print_c(rows: list[SharedRow], adapters: int) -> None:
    print(
        f"\n(c) One built-in engine (1 thread), {adapters} rank-8 LoRA adapters of hone-tiny in round-robin "
        "rotation; one client, non-stream chat, max_tokens 8 (ignore_eos)"
    )
    head = (
        f"{'engine':<20}{'1st load':>9}{'load p50':>9}{'load p99':>9}{'base r/s':>9}{'base p50':>9}"
        f"{'one r/s':>8}{'one p50':>8}{'rot. r/s':>9}{'rot. p50':>9}{'rot. p99':>9}{'rot/base':>9}"
        f"{'evictions':>10}"
    )
    print(head)
    print(
        f"{'':<20}{'ms':>9}{'ms':>9}{'ms':>9}{'':>9}{'ms':>9}{'':>8}{'ms':>8}{'':>9}{'ms':>9}{'ms':>9}{'r/s':>9}"
        f"{'in rot.':>10}"
    )
    print("-" * len(head))
    for r in rows:
        base_rps = len(r.base_ms) / r.base_s
        rot_rps = len(r.rotation_ms) / r.rotation_s
        later = r.loads_ms[1:]
        print(
            f"{'max_cpu_loras ' + str(r.max_cpu_loras):<20}{r.loads_ms[0]:>9.1f}{pct(later, 50):>9.1f}"
            f"{pct(later, 99):>9.1f}{base_rps:>9.1f}{pct(r.base_ms, 50):>9.1f}{len(r.single_ms) / r.single_s:>8.1f}"
            f"{pct(r.single_ms, 50):>8.1f}{rot_rps:>9.1f}{pct(r.rotation_ms, 50):>9.1f}"
            f"{pct(r.rotation_ms, 99):>9.1f}{rot_rps / base_rps:>8.2f}x{r.evictions:>10}"
        )
    for r in rows:
        resident = max(8, r.max_cpu_loras)
        if resident < adapters:
            print(
                f"  max_cpu_loras {r.max_cpu_loras}: {resident} resident < {adapters} in rotation, so LRU evicts "
                f"every adapter before its turn comes again: {r.evictions} evictions in {len(r.rotation_ms)} "
                "requests (each request reloads its adapter from disk)"
            )
        else:
            print(f"  max_cpu_loras {r.max_cpu_loras}: all {adapters} adapters resident, {r.evictions} evictions")
        if r.tokens != {8}:
            print(f"  ! completion tokens per request: {sorted(r.tokens)}")
    print(
        "  1st load: the first POST /v1/load_lora_adapter (wraps the model in peft); load p50/p99: the other loads "
        "(validate + load weights; past capacity each also evicts the least recently used adapter). base: the base "
        "model only; one: the same adapter every time (LoRA compute, no switching); rot.: round robin over all. "
        "The built-in engine keeps max(max_loras, max_cpu_loras) adapters resident."
    )


# --- (d) structured decoding on the built-in engine ---------------------------------------------------------


def part_d(args) -> dict:
    """Free text against a json_schema answer of the same length (benchmarks/structured_outputs.py's requests:
    the schema's one string field is longer than max_tokens allows, free text has ignore_eos), interleaved pair by
    pair, in rounds; tokens/s = completion tokens over the request's wall time."""
    from benchmarks.structured_outputs import LONG, MESSAGES, timed
    from hone_kernel.tiny_model import build
    from inference.launcher import engine_command
    from tests.support import start_python, wait_http

    model = build(MODEL_CACHE / "hone-tiny")
    port = free_port()
    launch = engine_command(
        "builtin",
        str(model),
        "hone-tiny",
        host="127.0.0.1",
        port=port,
        max_loras=1,
        max_cpu_loras=1,
        max_lora_rank=16,
        max_model_len=512,
    )
    log = Path(tempfile.mkdtemp(prefix="hone-serving-bench-structured-")) / "engine.log"
    print(
        f"\n(d) structured decoding: {args.structured_rounds} rounds of {args.structured_pairs} pairs of "
        f"{args.structured_tokens}-token answers, free text vs json_schema ...",
        flush=True,
    )
    engine = start_python(launch.argv, {**os.environ, **launch.env, "OMP_NUM_THREADS": "1"}, log)
    out: dict = {"rounds": [], "tokens": set(), "load": [os.getloadavg()[0]]}
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=engine)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            base = {"model": "hone-tiny", "messages": MESSAGES, "max_tokens": args.structured_tokens, "temperature": 0}
            bodies = {"free": {**base, "ignore_eos": True}, "schema": {**base, "response_format": LONG}}
            out["first_s"], _ = timed(client, bodies["schema"])  # the xgrammar import and the grammar's compilation
            for _ in range(3):
                timed(client, bodies["free"])
                timed(client, bodies["schema"])
            for _ in range(args.structured_rounds):
                rates: dict[str, list[float]] = {"free": [], "schema": []}
                for i in range(args.structured_pairs):
                    for name in ("free", "schema") if i % 2 == 0 else ("schema", "free"):
                        seconds, tokens = timed(client, bodies[name])
                        rates[name].append(tokens / seconds)
                        out["tokens"].add(tokens)
                out["rounds"].append(rates)
                out["load"].append(os.getloadavg()[0])
    finally:
        engine.terminate()
        engine.wait(30)
    return out


def print_d(result: dict, args) -> list[tuple[str, bool, str]]:
    free = [r for rates in result["rounds"] for r in rates["free"]]
    schema = [r for rates in result["rounds"] for r in rates["schema"]]
    ratios = [s / f for rates in result["rounds"] for f, s in zip(rates["free"], rates["schema"])]
    cost = 1 - pct(ratios, 50)
    per_round = [1 - pct([s / f for f, s in zip(r["free"], r["schema"])], 50) for r in result["rounds"]]
    print(
        f"\n(d) Structured decoding on the built-in engine (1 thread), hone-tiny, {len(free)} interleaved pairs of "
        f"{args.structured_tokens}-token answers in {len(result['rounds'])} rounds (response_format json_schema, one "
        "string field longer than the answer, against free text with ignore_eos)"
    )
    print(f"  free text        {pct(free, 50):8.1f} tokens/s p50 ({pct(free, 5):.1f} at p5)")
    print(f"  json_schema      {pct(schema, 50):8.1f} tokens/s p50 ({pct(schema, 5):.1f} at p5)")
    print(
        f"  cost of the grammar: {cost:.1%} of tokens/s (median of per-pair ratios); per round "
        f"{min(per_round):.1%} to {max(per_round):.1%}; load average {min(result['load']):.1f}-"
        f"{max(result['load']):.1f}; completion tokens per answer {sorted(result['tokens'])}"
    )
    print(f"  the first schema request (xgrammar's import and the compilation): {result['first_s'] * 1000:.0f} ms")
    return [
        (
            f"json_schema costs <= {GOAL_STRUCTURED_COST:.0%} of tokens/s",
            cost <= GOAL_STRUCTURED_COST,
            f"{cost:.1%} (rounds {min(per_round):.1%} to {max(per_round):.1%})",
        )
    ]


# --- main ----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds of 20 request pairs in (a), 2 jobs and no prewarm baseline in (b), one engine and 50 "
        "requests per kind in (c), 2 rounds in (d) (explicit options win)",
    )
    parser.add_argument("--parts", default="a,b,c,d", help="which parts to run, e.g. a,c (default a,b,c,d)")
    parser.add_argument("--rounds", type=int, help="rounds in (a) (default 5; quick 3)")
    parser.add_argument("--requests", type=int, help="non-stream request pairs per round in (a) (default 60; quick 20)")
    parser.add_argument(
        "--stream-requests", type=int, help="stream request pairs per round in (a) (default: --requests)"
    )
    parser.add_argument(
        "--against",
        metavar="DIR",
        help="also run (a) against another checkout's server (e.g. an earlier commit exported to DIR) side by side",
    )
    parser.add_argument("--jobs", type=int, help="jobs in (b), one after another (default 5; quick 2)")
    parser.add_argument("--baseline-jobs", type=int, default=1, help="jobs of the no-prewarm baseline in (b)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests per path and kind in (a)")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run (b) again with HONE_PREWARM_ENGINES=false (default: yes; quick: no)",
    )
    parser.add_argument("--adapters", type=int, default=50, help="adapters in (c) (default 50)")
    parser.add_argument(
        "--rotation",
        type=int,
        help="requests in rotation, to the base model and to one adapter, in (c) (default 200; quick 50)",
    )
    parser.add_argument(
        "--cpu-loras",
        default=None,
        help="max_cpu_loras of each engine in (c), comma-separated (default 16,64; quick 16)",
    )
    parser.add_argument("--structured-rounds", type=int, help="rounds in (d) (default 5; quick 2)")
    parser.add_argument("--structured-pairs", type=int, default=8, help="request pairs per round in (d)")
    parser.add_argument("--structured-tokens", type=int, default=64, help="answer length in (d)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the servers in (a) and (b) (repeatable), e.g. HONE_LOG_LEVEL=WARNING",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary folder (server and engine logs)")
    args = parser.parse_args()
    try:
        args.server_env = dict(item.split("=", 1) for item in args.server_env)
    except ValueError:
        parser.error("--server-env takes NAME=VALUE")
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts <= {"a", "b", "c", "d"}:
        parser.error("--parts takes a comma-separated subset of a,b,c,d")
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.requests = args.requests or (20 if args.quick else 60)
    args.stream_requests = args.stream_requests or args.requests
    args.jobs = args.jobs or (2 if args.quick else 5)
    args.structured_rounds = args.structured_rounds or (2 if args.quick else 5)
    args.baseline = (not args.quick) if args.baseline is None else args.baseline
    args.rotation = args.rotation or (50 if args.quick else 200)
    args.cpu_loras = [int(x) for x in (args.cpu_loras or ("16" if args.quick else "16,64")).split(",")]
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    print("Hone serving benchmark")
    print(
        f"  python {platform.python_version()} on {platform.machine()}, {CORES} CPU core(s); built-in engine "
        "(1 thread), server and engines on loopback; code: " + git_revision("service", "inference")
    )
    if CORES <= 4:
        print(
            f"  NOTE: {CORES} core(s) shared by the server, its engines and this client: latencies include "
            "waiting for CPU."
        )
    root = Path(tempfile.mkdtemp(prefix="hone-serving-bench-"))
    goals: list[tuple[str, bool, str]] = []
    a = b_rows = c_rows = d = against = None
    try:
        if args.parts & {"a", "b"}:
            server = HoneServer(
                root / "server", {"HONE_LOCAL_SLOTS": "1", "HONE_AUTO_DEPLOY": "true", **args.server_env}
            )
            try:
                key = server.new_project("serving benchmark").api_key
                with http_client(server.base_url, key) as http:
                    if "a" in args.parts:
                        a = part_a(server, http, key, args)
                        if args.against:
                            against = part_a_against(root, server, key, args)
                    if "b" in args.parts:
                        b_rows = [part_b(server, http, key, "default (prewarm on)", args.jobs)]
            finally:
                rc = server.stop()
                print(f"    server stopped (exit status {rc})", flush=True)
            if "b" in args.parts and args.baseline:
                b_rows.append(part_b_baseline(root, args.server_env, args.baseline_jobs))
        if "c" in args.parts:
            c_rows = part_c(root, args)
        if "d" in args.parts:
            d = part_d(args)
    except BaseException:
        args.keep_data = True
        raise
    finally:
        if args.keep_data:
            print(f"Data kept in {root} (server.log and engine logs)")
        else:
            shutil.rmtree(root, ignore_errors=True)

    if a is not None:
        goals += print_a(a)
    if against is not None:
        print_a_against(against)
    if b_rows:
        goals += print_b(b_rows)
    if c_rows:
        print_c(c_rows, args.adapters)
    if d is not None:
        goals += print_d(d, args)
    print("\nGoals:")
    for label, ok, value in goals:
        print(f"  {label:<58} {value:<52} {'PASS' if ok else 'MISS'}")
    print(f"\nTotal runtime: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
