"""API keys: hashed at rest, each bound to one project; the admin key manages projects."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from sqlalchemy import select

from service.context import AppContext
from service.db.tables import ApiKey, Project
from service.errors import AuthenticationFailed, ErrorCode, PermissionDenied


@dataclass(frozen=True)
class ProjectPrincipal:
    project_id: str
    project_slug: str


class KeyCache:
    """Keys seen recently, so most requests skip the database lookup. Revocations made through
    this process clear it at once; other replicas notice within `ttl_s`."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[str, tuple[ProjectPrincipal, float]] = {}

    def get(self, key_hash: str) -> ProjectPrincipal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, principal: ProjectPrincipal) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = (principal, time.monotonic() + self.ttl_s)

    def clear(self) -> None:
        self._entries.clear()


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so an unsalted SHA-256 is not guessable and stays indexable.
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code=ErrorCode.MISSING_API_KEY,
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(
            "The Authorization header must be 'Bearer YOUR_KEY'.", code=ErrorCode.INVALID_API_KEY
        )
    return token.strip()


def _redact(key: str) -> str:
    return f"{key[:10]}***{key[-4:]}" if len(key) > 16 else "***"


def _is_admin(ctx: AppContext, token: str) -> bool:
    return hmac.compare_digest(token.encode(), ctx.admin_key.encode())


def cached_principal(ctx: AppContext, authorization: str | None) -> ProjectPrincipal | None:
    """The caller's project if its key was checked recently; never touches the database."""
    try:
        token = bearer_token(authorization)
    except AuthenticationFailed:
        return None  # authenticate_project gives the error
    return ctx.key_cache.get(hash_key(token))


def authenticate_project(ctx: AppContext, authorization: str | None) -> ProjectPrincipal:
    token = bearer_token(authorization)
    key_hash = hash_key(token)
    with ctx.db.read() as session:
        row = session.execute(
            select(Project.id, Project.slug)
            .join(ApiKey, ApiKey.project_id == Project.id)
            .where(ApiKey.key_hash == key_hash, Project.archived_at.is_(None))
        ).first()
    if row is None:
        if _is_admin(ctx, token):
            raise PermissionDenied(
                "The admin key manages projects and keys only; use a project's API key for files, jobs and models.",
                code=ErrorCode.ADMIN_KEY_NOT_ALLOWED,
            )
        raise AuthenticationFailed(f"Incorrect API key provided: {_redact(token)}.", code=ErrorCode.INVALID_API_KEY)
    principal = ProjectPrincipal(row.id, row.slug)
    ctx.key_cache.put(key_hash, principal)
    return principal


def authenticate_admin(ctx: AppContext, authorization: str | None) -> None:
    token = bearer_token(authorization)
    if not _is_admin(ctx, token):
        raise AuthenticationFailed(
            f"Incorrect admin API key provided: {_redact(token)}.", code=ErrorCode.INVALID_API_KEY
        )


def authenticate_metrics_scraper(ctx: AppContext, authorization: str | None) -> None:
    """GET /metrics: open unless HONE_METRICS_TOKEN is set, then only for `Bearer <that token>`."""
    expected = ctx.settings.server.metrics_token
    if not expected:
        return
    token = bearer_token(authorization)
    if not hmac.compare_digest(token.encode(), expected.encode()):
        # Nothing of the token sent is echoed: it may be a real key sent to the wrong place.
        raise AuthenticationFailed("Incorrect metrics token provided.", code=ErrorCode.INVALID_API_KEY)
