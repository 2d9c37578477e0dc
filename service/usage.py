"""Per-model gateway accounting: requests, errors, tokens and latency, kept in memory and flushed to the
database every few seconds so the gateway never waits on a write."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from sqlalchemy import select

from service.db import Database
from service.db.tables import ModelUsage

FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_ms_total")


def _empty_book() -> defaultdict[tuple[str, str], dict[str, int]]:
    return defaultdict(lambda: dict.fromkeys(FIELDS, 0))


class UsageBook:
    def __init__(self):
        self._pending = _empty_book()
        self._lock = threading.Lock()

    def record(
        self,
        project_id: str,
        model: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        latency_ms: float = 0.0,
        error: bool = False,
    ) -> None:
        with self._lock:
            row = self._pending[(project_id, model)]
            row["requests"] += 1
            row["errors"] += int(error)
            row["prompt_tokens"] += prompt_tokens
            row["completion_tokens"] += completion_tokens
            row["latency_ms_total"] += int(round(latency_ms))

    def pending(self, project_id: str, model: str) -> dict[str, int] | None:
        with self._lock:
            row = self._pending.get((project_id, model))
            return dict(row) if row else None

    def flush(self, db: Database) -> None:
        with self._lock:
            batch, self._pending = dict(self._pending), _empty_book()
        if not batch:
            return
        now = int(time.time())
        try:
            with db.write() as session:
                for (project_id, model), counts in batch.items():
                    row = session.execute(
                        select(ModelUsage)
                        .where(ModelUsage.project_id == project_id, ModelUsage.model == model)
                        .with_for_update()
                    ).scalar()
                    if row is None:
                        session.add(ModelUsage(project_id=project_id, model=model, updated_at=now, **counts))
                    else:
                        for key, value in counts.items():
                            setattr(row, key, getattr(row, key) + value)
                        row.updated_at = now
        except Exception:
            with self._lock:  # keep the counts for the next flush
                for key, counts in batch.items():
                    for field, value in counts.items():
                        self._pending[key][field] += value
            raise
