"""The one JSON log line shape every Hone process writes (control plane, trainer, engine): `ts`, `level`,
`logger`, `msg`, then the record's own fields, and `exc` with a traceback; and transformers' records routed
through it."""

from __future__ import annotations

import json
import logging

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def route_transformers_logs() -> None:
    """transformers prints through a handler of its own, and progress bars: send its records through ours and
    keep bars (carriage-return noise in a log file) out."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()
