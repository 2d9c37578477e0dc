"""`python -m trainer.ranks --nproc-per-node G [--nnodes N --node-rank R --master-addr A --master-port P] --spec URL`:
one machine's share of a data-parallel run: G `python -m trainer` processes with torchrun's variables (RANK,
LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), read by trainer/distributed.py.

Why not torchrun's own agent: it reports a rank's ending only as "failed" (exit 1), and the scheduler acts on the
trainer's exit codes (hone_kernel.trainer_contract.ExitCode): 75 checkpointed for a pause, 2 failed for good, 3
superseded, a crash to retry from the checkpoint. This launcher passes them through, with what torchrun
--standalone with no restarts does otherwise: SIGTERM and SIGINT go to every rank (each checkpoints or stops at the
step the ranks agree on), and when one rank crashes the others are killed at once (they would wait on it in the
next collective until the timeout); Hone retries the whole attempt from its last checkpoint.

Multi-node runs start one launcher per node; unset flags come from the PET_* variables Kubeflow Trainer's torch
runtime sets (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT). Light on purpose:
no torch import, so the launcher starts at once and the ranks pay their imports in parallel. Except when it was
itself forked from a warm interpreter (the local executor's, service/warm_start.py) that imported the trainer's
modules already: then it forks its ranks too (`ForkedRank`), and none pays the ~5 s of CPU those imports cost.
Forking after `import torch` is safe: nothing here has started a thread, an OpenMP pool or a CUDA context yet."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from hone_kernel.trainer_contract import ExitCode
from hone_kernel.warm_start import run_as_main

# Endings after which the other ranks are let finish: they reached (or are reaching) the same decision.
ORDERLY = {ExitCode.OK, ExitCode.FATAL, ExitCode.SUPERSEDED, ExitCode.STOPPED}
ORDERLY_GRACE_S = 120.0  # how long the others get after local rank 0 ended in order before they are killed


def launched_rank() -> int:
    """This trainer process's global rank as its launcher set it (0 when it runs alone)."""
    return int(os.environ.get("RANK", "0"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m trainer.ranks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", type=int, default=_env_int("PET_NPROC_PER_NODE", 1))
    parser.add_argument("--nnodes", type=int, default=_env_int("PET_NNODES", 1))
    parser.add_argument("--node-rank", type=int, default=_env_int("PET_NODE_RANK", 0))
    parser.add_argument("--master-addr", default=os.environ.get("PET_MASTER_ADDR") or "127.0.0.1")
    parser.add_argument("--master-port", type=int, default=_env_int("PET_MASTER_PORT", 0))
    args, trainer_args = parser.parse_known_args(argv)
    if args.nproc_per_node < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        parser.error("need --nproc-per-node >= 1, --nnodes >= 1 and 0 <= --node-rank < --nnodes")
    if args.nnodes > 1 and not args.master_port:
        parser.error("a multi-node run needs --master-port (or PET_MASTER_PORT): every node must use the same")
    return args, trainer_args


def rank_env(args: argparse.Namespace, local_rank: int, port: int) -> dict[str, str]:
    size = args.nnodes * args.nproc_per_node
    return {
        "RANK": str(args.node_rank * args.nproc_per_node + local_rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(size),
        "LOCAL_WORLD_SIZE": str(args.nproc_per_node),
        "GROUP_RANK": str(args.node_rank),
        "MASTER_ADDR": args.master_addr,
        "MASTER_PORT": str(port),
    }


def outcome(codes: dict[int, int], killed: set[int]) -> int:
    """The run's exit code from its ranks' (local rank -> code): the first crash if any rank crashed by itself
    (one a signal ended first),
    else local rank 0's (the one that reports), else the first one's."""
    # Popen gives -N for a process a signal N ended; its exit status as a shell or Kubernetes reads it is 128 + N
    own = {r: (c if c >= 0 else 128 - c) for r, c in codes.items() if r not in killed}
    crashes = [c for r, c in sorted(own.items()) if c not in ORDERLY]
    # A rank a signal ended (the OOM killer, a lost node) is the cause when there is one: the others' errors (a
    # peer closed the connection) follow from it, however the launcher's polls ordered them.
    signalled = [c for c in crashes if c > 128]
    if crashes:
        return (signalled or crashes)[0]
    if 0 in own:
        return own[0]
    return next(iter(sorted(own.values())), int(ExitCode.KILLED))


class ForkedRank:
    """A rank forked from this launcher, with subprocess.Popen's poll, send_signal and kill (over os.waitpid)."""

    def __init__(self, trainer_args: list[str], env: dict[str, str]):
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.environ.update(env)
                code = run_as_main("trainer", trainer_args, sys.modules.get("setproctitle"))
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os._exit(code & 0xFF)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:  # Popen's convention: -N for the signal N that ended it
                self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_rank(trainer_args: list[str], env: dict[str, str]) -> subprocess.Popen | ForkedRank:
    """`python -m trainer` with the rank's variables: forked when this process imported the trainer already."""
    if "trainer.loop" in sys.modules:
        return ForkedRank(trainer_args, env)
    return subprocess.Popen([sys.executable, "-m", "trainer", *trainer_args], env={**os.environ, **env})


def main(argv: list[str] | None = None) -> int:
    args, trainer_args = parse(argv)
    port = args.master_port or _free_port()
    ranks = {local: start_rank(trainer_args, rank_env(args, local, port)) for local in range(args.nproc_per_node)}

    def forward(signum, _frame):  # each rank checkpoints (or stops) at the step they agree on
        for proc in ranks.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes: dict[int, int] = {}
    killed: set[int] = set()
    deadline: float | None = None
    while len(codes) < len(ranks):
        for local, proc in ranks.items():
            if local in codes or (code := proc.poll()) is None:
                continue
            codes[local] = code
            if code not in ORDERLY:  # the others cannot go on without it: end them now
                for other, rest in ranks.items():
                    if rest.poll() is None:
                        rest.kill()
                        killed.add(other)
            elif local == 0 and deadline is None:
                # Not before: the others end first as a rule (rank 0 alone validates and publishes at the end),
                # and a rank 0 that hangs is the scheduler's to kill (its heartbeats stop).
                deadline = time.monotonic() + ORDERLY_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            for other, rest in ranks.items():
                if rest.poll() is None:
                    rest.kill()
                    killed.add(other)
        time.sleep(0.1)
    return outcome(codes, killed)


if __name__ == "__main__":
    sys.exit(main())
