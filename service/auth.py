"""API keys: hashed at rest, each bound to one project; the admin key manages projects."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import select

from service.context import AppContext
from service.db.tables import ApiKey, Project
from service.errors import AuthenticationFailed, PermissionDenied


@dataclass(frozen=True)
class ProjectPrincipal:
    project_id: str
    project_slug: str


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so an unsalted SHA-256 is not guessable and stays indexable.
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code="missing_api_key")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("The Authorization header must be 'Bearer YOUR_KEY'.", code="invalid_api_key")
    return token.strip()


def _redact(key: str) -> str:
    return f"{key[:10]}***{key[-4:]}" if len(key) > 16 else "***"


def _is_admin(ctx: AppContext, token: str) -> bool:
    return hmac.compare_digest(token.encode(), ctx.admin_key.encode())


def authenticate_project(ctx: AppContext, authorization: str | None) -> ProjectPrincipal:
    token = bearer_token(authorization)
    with ctx.db.read() as session:
        row = session.execute(
            select(Project.id, Project.slug)
            .join(ApiKey, ApiKey.project_id == Project.id)
            .where(ApiKey.key_hash == hash_key(token), Project.archived_at.is_(None))
        ).first()
    if row is None:
        if _is_admin(ctx, token):
            raise PermissionDenied("The admin key manages projects and keys only; use a project's API key "
                                   "for files, jobs and models.", code="admin_key_not_allowed")
        raise AuthenticationFailed(f"Incorrect API key provided: {_redact(token)}.", code="invalid_api_key")
    return ProjectPrincipal(row.id, row.slug)


def authenticate_admin(ctx: AppContext, authorization: str | None) -> None:
    token = bearer_token(authorization)
    if not _is_admin(ctx, token):
        raise AuthenticationFailed(f"Incorrect admin API key provided: {_redact(token)}.", code="invalid_api_key")
