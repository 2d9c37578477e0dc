"""`python -m trainer --spec URL`: run one training job from its spec in blob storage."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from trainer.blobs import open_blobs, split_url
from trainer.loop import EXIT_SUPERSEDED, Run, install_stop_handler
from trainer.reporting import Reporter
from trainer.spec import TrainSpec


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": round(time.time(), 3), "level": record.levelname, "logger": record.name,
                           "message": record.getMessage()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("--spec", required=True, help="URL of jobs/{id}/spec.json (file:// or s3://)")
    parser.add_argument("--s3-endpoint-url", default=None, help="S3 endpoint, when not set through AWS_ENDPOINT_URL")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    root, key = split_url(args.spec)
    spec = TrainSpec.from_json(open_blobs(root, args.s3_endpoint_url).read_bytes(key))
    blobs = open_blobs(spec.storage_url, spec.s3_endpoint_url or args.s3_endpoint_url)
    reporter = Reporter(spec.callback_url, spec.token, spec.job_id)
    with tempfile.TemporaryDirectory(prefix=f"hone-{spec.job_id}-", dir=args.workdir) as workdir:
        run = Run(spec, blobs, reporter, Path(workdir))
        install_stop_handler(run)
        logging.getLogger("hone.trainer").info("starting %s attempt %s", spec.job_id, spec.attempt)
        code = run.execute()
    if code != EXIT_SUPERSEDED:
        reporter.flush(timeout=30)
    reporter.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
