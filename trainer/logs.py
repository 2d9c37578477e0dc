"""The trainer's logs: JSON lines on stderr, in the control plane's shape (`ts`, `level`, `logger`, `msg`, then
fields), every one carrying the job it trains: `job_id` and `attempt`.

One trainer process runs one job, so the fields are the process's, on every thread (the reporter's too).
Until the spec is read they come from `$HONE_JOB_ID` and `$HONE_JOB_ATTEMPT`, which the local executor sets.
Records of transformers and `warnings.warn` go through the same handler; an uncaught exception is logged as a
line too."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from hone_kernel.jsonlog import JsonFormatter


class JobFields(logging.Filter):
    """Adds the job's fields to each record, unless the call passed them with `extra=`."""

    def __init__(self, **fields: Any):
        super().__init__()
        self.fields = {k: v for k, v in fields.items() if v is not None}

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


_fields = JobFields()


def configure_logging(level: int = logging.INFO) -> None:
    _fields.fields = {}
    if os.environ.get("HONE_JOB_ID"):  # set by the local executor; the spec says the same once it is read
        _fields.fields["job_id"] = os.environ["HONE_JOB_ID"]
    if os.environ.get("HONE_JOB_ATTEMPT", "").isdigit():
        _fields.fields["attempt"] = int(os.environ["HONE_JOB_ATTEMPT"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_fields)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    # httpx logs every report at INFO (several a second); the reporter logs what goes wrong itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log = logging.getLogger("hone.trainer")

    def log_uncaught(kind, value, tb):
        log.critical("trainer crashed: %s: %s", kind.__name__, value, exc_info=(kind, value, tb))

    def log_uncaught_in_thread(args):
        if args.exc_type is not SystemExit:
            log.critical(
                "thread %s crashed: %s: %s",
                getattr(args.thread, "name", "?"),
                args.exc_type.__name__,
                args.exc_value,
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            )

    sys.excepthook = log_uncaught
    threading.excepthook = log_uncaught_in_thread


def bind(**fields: Any) -> None:
    """Adds fields to every line logged from now on, on every thread."""
    _fields.fields = {**_fields.fields, **{k: v for k, v in fields.items() if v is not None}}
