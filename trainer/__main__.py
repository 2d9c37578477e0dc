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
from hone_kernel.trainer_contract import ContractError, ExitCode, TrainSpec
from trainer.blobs import StorageError, open_blobs, split_url
from trainer.logs import bind, configure_logging
from trainer.reporting import Reporter, main_thread


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
    bind(job_id=spec.job_id, attempt=spec.attempt)
    blobs = open_blobs(
        spec.storage_url,
        spec.s3_endpoint_url or args.s3_endpoint_url,
        s3_max_attempts=spec.s3_max_attempts,
        s3_timeout_s=spec.s3_timeout_s,
    )
    reporter = Reporter(
        spec.callback_url, spec.token, spec.job_id, spec.control_plane_timeout_s
    )  # its first heartbeat goes out at once
    with main_thread.busy():  # transformers and torch take seconds to import: heartbeats go on meanwhile
        route_transformers_logs()
        from trainer.loop import Run, install_stop_handler
    with tempfile.TemporaryDirectory(prefix=f"hone-{spec.job_id}-", dir=args.workdir) as workdir:
        run = Run(spec, blobs, reporter, Path(workdir))
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
    return code


if __name__ == "__main__":
    sys.exit(main())
