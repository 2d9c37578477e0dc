"""Cold against warm start of the built-in engine on hone-tiny: seconds until it answers /health, and the CPU its
process spent getting there, each way, several times, in the same run (service/warm_start.py).

    .venv/bin/python benchmarks/warm_start.py [--runs 3]

Cold is `python -m inference ...` as a new process; warm is the same run forked from the warm interpreter, whose
own one-off preload is printed apart (a control plane pays it once, on its first trainer or engine)."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.revision import git_revision  # noqa: E402
from inference.launcher import engine_command  # noqa: E402
from service.warm_start import WarmStarts, start_cold  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(starts: WarmStarts | None, model: Path, log: Path) -> tuple[float, float]:
    port = _port()
    launch = engine_command(
        "builtin", str(model), "hone-tiny", host="127.0.0.1", port=port, max_loras=1, max_cpu_loras=1, max_lora_rank=8
    )
    env = {**os.environ, **launch.env, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    began = time.monotonic()
    proc = (
        start_cold(launch.argv, env, log)
        if starts is None
        else starts.launch(None, "inference", launch.argv[3:], env, log)
    )
    while True:
        try:
            with httpx.Client(timeout=1) as http:
                if http.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the engine exited; see {log}")
        time.sleep(0.02)
    seconds, cpu = time.monotonic() - began, _cpu_s(proc.pid)
    os.killpg(proc.pid, 9)
    proc.wait(10)
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hone-warm-bench-"))
    model = Path(tempfile.gettempdir()) / f"hone-test-models-{os.getuid()}" / "hone-tiny"
    subprocess.run([sys.executable, "-m", "hone_kernel.tiny_model", str(model)], check=True, capture_output=True)
    starts = WarmStarts(True, work / "logs")
    began = time.monotonic()
    starts._interpreter(sys.executable)  # the one-off preload, measured apart
    preload = time.monotonic() - began
    cold, warm = [], []
    for i in range(args.runs):  # interleaved, so that a swing in the machine's speed hits both alike
        cold.append(_start(None, model, work / f"cold-{i}.log"))
        warm.append(_start(starts, model, work / f"warm-{i}.log"))
    starts.close()
    print(f"built-in engine on hone-tiny, {args.runs} starts each way, {git_revision('service', 'hone_kernel')}")
    print(f"{'':6} {'to /health s (median, max)':>28} {'process CPU s (median)':>24}")
    for name, runs in (("cold", cold), ("warm", warm)):
        secs, cpus = [r[0] for r in runs], [r[1] for r in runs]
        print(f"{name:6} {statistics.median(secs):>19.2f}, {max(secs):5.2f} {statistics.median(cpus):>24.2f}")
    print(f"the warm interpreter's one-off preload: {preload:.2f} s")


if __name__ == "__main__":
    main()
