"""`Idempotency-Key` on create requests: a retried request gets what the first one made.

Keys are per project and kept for 24 hours. Reusing a key with a different body is a 400.
"""

from __future__ import annotations

import hashlib
import json
import time

from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.db.tables import IdempotencyKey
from service.errors import ErrorCode, InvalidRequest

KEEP_S = 24 * 3600
MAX_KEY_LENGTH = 255


def check_key(key: str | None) -> str | None:
    if key is not None and (not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable()):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            param="Idempotency-Key",
            code=ErrorCode.INVALID_VALUE,
        )
    return key


def fingerprint(body: BaseModel) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def replayed_object(session: Session, project_id: str, key: str, request_sha256: str) -> str | None:
    """The id made by an earlier request with this key, or None if there was none (or it expired)."""
    row = session.get(IdempotencyKey, (project_id, key))
    if row is None:
        return None
    if row.created_at < time.time() - KEEP_S:
        session.delete(row)
        session.flush()
        return None
    if row.request_sha256 != request_sha256:
        raise InvalidRequest(
            "This Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key",
            code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
        )
    return row.object_id


def remember(session: Session, project_id: str, key: str, request_sha256: str, object_id: str) -> None:
    session.add(
        IdempotencyKey(
            project_id=project_id,
            key=key,
            request_sha256=request_sha256,
            object_id=object_id,
            created_at=int(time.time()),
        )
    )
