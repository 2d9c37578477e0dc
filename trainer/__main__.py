"""`python -m trainer --spec URL`: run one training job from its spec in blob storage."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from hone.jsonlog import route_transformers_logs
from trainer.blobs import open_blobs, split_url
from trainer.logs import bind, configure_logging
from trainer.loop import EXIT_SUPERSEDED, Run, install_stop_handler
from trainer.reporting import Reporter
from trainer.spec import TrainSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("--spec", required=True, help="URL of jobs/{id}/spec.json (file:// or s3://)")
    parser.add_argument("--s3-endpoint-url", default=None, help="S3 endpoint, when not set through AWS_ENDPOINT_URL")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    configure_logging(logging.INFO)  # JSON lines, each with the job's id (from $HONE_JOB_ID until the spec is read)

    root, key = split_url(args.spec)
    spec = TrainSpec.from_json(open_blobs(root, args.s3_endpoint_url).read_bytes(key))
    bind(job_id=spec.job_id, attempt=spec.attempt)
    route_transformers_logs()
    blobs = open_blobs(spec.storage_url, spec.s3_endpoint_url or args.s3_endpoint_url)
    reporter = Reporter(spec.callback_url, spec.token, spec.job_id)
    with tempfile.TemporaryDirectory(prefix=f"hone-{spec.job_id}-", dir=args.workdir) as workdir:
        run = Run(spec, blobs, reporter, Path(workdir))
        install_stop_handler(run)
        logging.getLogger("hone.trainer").info("starting %s attempt %s", spec.job_id, spec.attempt,
                                               extra={"model": spec.model_name, "method": spec.method})
        code = run.execute()
    if code != EXIT_SUPERSEDED:
        reporter.flush(timeout=30)
    reporter.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
