"""`python -m trainer --spec URL`: run one training job from its spec in blob storage."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

from hone_kernel.jsonlog import route_transformers_logs
from hone_kernel.trainer_contract import FAIL, ContractError, ExitCode, Failure, TrainSpec
from hone_kernel.trainer_contract import message as message_of
from trainer import startup
from trainer.blobs import StorageError, open_blobs, split_url
from trainer.failures import FatalError
from trainer.logs import bind, configure_logging
from trainer.ranks import launched_rank
from trainer.reporting import QuietReporter, Reporter, main_thread


def exit_on_thread_crash() -> None:
    """Any thread's uncaught exception ends the process. A dead reporter thread used to leave the main thread
    training (or waiting on a flush) forever with nothing reported; an exit is what the scheduler handles."""
    log_it = threading.excepthook  # configure_logging's: one JSON line with the traceback

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:  # a thread that chose to end is no crash
            return
        try:
            log_it(args)
            sys.stderr.flush()
        finally:
            os._exit(ExitCode.THREAD_CRASHED)  # sys.exit would only end the crashed thread

    threading.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    startup.begin()  # the phases up to the first step: trainer/startup.py
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("--spec", required=True, help="URL of jobs/{id}/spec.json (file:// or s3://)")
    parser.add_argument("--s3-endpoint-url", default=None, help="S3 endpoint, when not set through AWS_ENDPOINT_URL")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    configure_logging(logging.INFO)  # JSON lines, each with the job's id (from $HONE_JOB_ID until the spec is read)
    exit_on_thread_crash()

    root, key = split_url(args.spec)
    try:
        spec = TrainSpec.from_json(open_blobs(root, args.s3_endpoint_url).read_bytes(key))
    except ContractError as exc:
        logging.getLogger("hone.trainer").error("cannot read the spec: %s", exc)
        return ExitCode.FATAL
    startup.mark("spec")
    rank = launched_rank()
    bind(job_id=spec.job_id, attempt=spec.attempt, **({"rank": rank} if spec.resources.world_size > 1 else {}))
    blobs = open_blobs(
        spec.storage_url,
        spec.s3_endpoint_url or args.s3_endpoint_url,
        s3_max_attempts=spec.s3_max_attempts,
        s3_timeout_s=spec.s3_timeout_s,
    )
    # Rank 0 alone talks to the control plane (a data-parallel run's others: trainer/distributed.py)
    reporter: Reporter | QuietReporter = (
        Reporter(spec.callback_url, spec.token, spec.job_id, spec.control_plane_timeout_s)  # beats at once
        if rank == 0
        else QuietReporter()
    )
    with main_thread.busy():  # transformers and torch take seconds to import: heartbeats go on meanwhile
        route_transformers_logs()
        from trainer import world as ranks_world
        from trainer.loop import Run, install_stop_handler
    startup.mark("imports")  # next to nothing when warm: the warm interpreter imported them before the fork
    try:
        with main_thread.busy():
            world = ranks_world.join(spec)
    except FatalError as exc:
        reporter.call(FAIL, message_of(Failure(exc.code, exc.message)))
        reporter.close()
        return ExitCode.FATAL
    with tempfile.TemporaryDirectory(prefix=f"hone-{spec.job_id}-", dir=args.workdir) as workdir:
        run = Run(spec, blobs, reporter, Path(workdir), world)  # type: ignore[arg-type]
        install_stop_handler(run)
        logging.getLogger("hone.trainer").info(
            "starting %s attempt %s", spec.job_id, spec.attempt, extra={"model": spec.model_name, "method": spec.method}
        )
        try:
            code = run.execute()
        except StorageError as exc:  # a clear line and event instead of a traceback; the scheduler retries
            logging.getLogger("hone.trainer").error("%s; this attempt ends", exc)
            reporter.event(f"Trainer attempt {spec.attempt} ended: {str(exc)[:1000]}", level="warn")
            code = ExitCode.STORAGE
    if code != ExitCode.SUPERSEDED:
        reporter.flush(timeout=30)
    reporter.close()
    ranks_world.leave(world)
    return code


if __name__ == "__main__":
    sys.exit(main())
