"""Projects and their service accounts (whose API keys are shown once, then stored hashed)."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

from sqlalchemy import delete, select

from service.auth import hash_key
from service.context import AppContext
from service.db.tables import ApiKey, Job, Project, ProjectWandb, ServiceAccount
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt
from service.ids import new_api_key, new_id
from service.pagination import list_envelope, paginate


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:48] or "project"


def project_api(p: Project) -> dict:
    return {
        "object": "organization.project",
        "id": p.id,
        "name": p.name,
        "created_at": p.created_at,
        "archived_at": p.archived_at,
        "status": "archived" if p.archived_at else "active",
    }


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 256:
        raise InvalidRequest("'name' must be 1 to 256 characters.", param="name", code=ErrorCode.INVALID_VALUE)
    return name


def create_project(ctx: AppContext, name: str) -> dict:
    name = _check_name(name)
    project = Project(id=new_id("proj_"), name=name, slug=slugify(name), created_at=int(time.time()))
    with ctx.db.write() as session:
        session.add(project)
    return project_api(project)


def project_row(session, project_id: str) -> Project:
    """The project (archived or not), or the admin API's 404."""
    project = session.execute(select(Project).where(Project.id == project_id)).scalar()
    if project is None:
        raise NotFound(f"No such project: {excerpt(project_id)}", param="project_id", code=ErrorCode.NOT_FOUND)
    return project


def active_project(session, project_id: str) -> Project:
    """The project, which must exist and not be archived: what anything added to a project checks first."""
    project = project_row(session, project_id)
    if project.archived_at is not None:
        raise InvalidRequest(f"Project {project_id} is archived.", param="project_id", code=ErrorCode.PROJECT_ARCHIVED)
    return project


def get_project(ctx: AppContext, project_id: str) -> dict:
    with ctx.db.read() as session:
        return project_api(project_row(session, project_id))


def list_projects(ctx: AppContext, *, after: str | None, limit: int, include_archived: bool) -> dict:
    with ctx.db.read() as session:
        stmt = select(Project)
        if not include_archived:
            stmt = stmt.where(Project.archived_at.is_(None))
        rows, has_more = paginate(session, stmt, Project, after=after, limit=limit, newest_first=False)
        return list_envelope([project_api(p) for p in rows], has_more, with_ids=True)


def archive_project(ctx: AppContext, project_id: str) -> dict:
    """Archiving revokes every key of the project (and forgets its W&B key); its files, jobs and models are kept."""
    with ctx.db.write() as session:
        project = project_row(session, project_id)
        if project.archived_at is None:
            project.archived_at = int(time.time())
        session.execute(delete(ApiKey).where(ApiKey.project_id == project_id))
        session.execute(delete(ProjectWandb).where(ProjectWandb.project_id == project_id))
    ctx.key_cache.clear()
    return {"object": "organization.project.deleted", "id": project_id, "deleted": True}


def _account_api(account: ServiceAccount, key: ApiKey | None = None, secret: str | None = None) -> dict:
    body = {
        "object": "organization.project.service_account",
        "id": account.id,
        "name": account.name,
        "role": account.role,
        "created_at": account.created_at,
    }
    if key is not None:
        body["api_key"] = {
            "object": "organization.project.service_account.api_key",
            "id": key.id,
            "name": "Secret Key",
            "created_at": key.created_at,
            **({"value": secret} if secret else {"redacted_value": key.redacted_value}),
        }
    return body


def create_service_account(ctx: AppContext, project_id: str, name: str) -> dict:
    name = _check_name(name)
    now = int(time.time())
    secret = new_api_key()
    with ctx.db.write() as session:
        active_project(session, project_id)
        account = ServiceAccount(
            id=new_id("svc_acct_"), project_id=project_id, name=name, role="member", created_at=now
        )
        key = ApiKey(
            id=new_id("key_"),
            project_id=project_id,
            service_account_id=account.id,
            key_hash=hash_key(secret),
            redacted_value=f"{secret[:10]}***{secret[-4:]}",
            created_at=now,
        )
        session.add(account)
        session.flush()
        session.add(key)
    return _account_api(account, key, secret)


def _get_account(session, project_id: str, account_id: str) -> ServiceAccount:
    project_row(session, project_id)
    account = session.execute(
        select(ServiceAccount).where(ServiceAccount.id == account_id, ServiceAccount.project_id == project_id)
    ).scalar()
    if account is None:
        raise NotFound(
            f"No such service account: {excerpt(account_id)}", param="service_account_id", code=ErrorCode.NOT_FOUND
        )
    return account


def get_service_account(ctx: AppContext, project_id: str, account_id: str) -> dict:
    with ctx.db.read() as session:
        account = _get_account(session, project_id, account_id)
        key = session.execute(select(ApiKey).where(ApiKey.service_account_id == account.id)).scalar()
        return _account_api(account, key)


def list_service_accounts(ctx: AppContext, project_id: str, *, after: str | None, limit: int) -> dict:
    with ctx.db.read() as session:
        project_row(session, project_id)
        stmt = select(ServiceAccount).where(ServiceAccount.project_id == project_id)
        rows, has_more = paginate(session, stmt, ServiceAccount, after=after, limit=limit, newest_first=False)
        return list_envelope([_account_api(a) for a in rows], has_more, with_ids=True)


def delete_service_account(ctx: AppContext, project_id: str, account_id: str) -> dict:
    with ctx.db.write() as session:
        account = _get_account(session, project_id, account_id)
        session.execute(delete(ApiKey).where(ApiKey.service_account_id == account.id))
        session.delete(account)
    ctx.key_cache.clear()
    return {"object": "organization.project.service_account.deleted", "id": account_id, "deleted": True}


# --- the project's Weights & Biases key (Hone's extension of the Administration API) --------------------


def _redact(key: str) -> str:
    return f"{key[:4]}***{key[-4:]}" if len(key) >= 16 else "***"


def _wandb_api(row: ProjectWandb) -> dict:
    return {
        "object": "organization.project.integration.wandb",
        "project_id": row.project_id,
        "type": "wandb",
        "redacted_api_key": _redact(row.api_key),
        "base_url": row.base_url,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def set_wandb_key(ctx: AppContext, project_id: str, api_key: str, base_url: str | None) -> dict:
    """Sets (or replaces) the key the project's jobs with a `wandb` integration log online with."""
    if not api_key or not api_key.isascii() or not api_key.isprintable() or any(c.isspace() for c in api_key):
        raise InvalidRequest(
            "'api_key' must be a W&B API key: printable characters without spaces.",
            param="api_key",
            code=ErrorCode.INVALID_VALUE,
        )
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise InvalidRequest(
                "'base_url' must be the http(s) URL of a W&B server, e.g. https://api.wandb.ai.",
                param="base_url",
                code=ErrorCode.INVALID_VALUE,
            )
        base_url = base_url.rstrip("/")
    now = int(time.time())
    with ctx.db.write() as session:
        active_project(session, project_id)
        row = session.get(ProjectWandb, project_id)
        if row is None:
            row = ProjectWandb(project_id=project_id, created_at=now)
            session.add(row)
        row.api_key, row.base_url, row.updated_at = api_key, base_url, now
        session.flush()
        return _wandb_api(row)


def _get_wandb(session, project_id: str) -> ProjectWandb:
    project_row(session, project_id)
    row = session.get(ProjectWandb, project_id)
    if row is None:
        raise NotFound(f"Project {project_id} has no W&B key configured.", param="project_id", code=ErrorCode.NOT_FOUND)
    return row


def get_wandb_key(ctx: AppContext, project_id: str) -> dict:
    with ctx.db.read() as session:
        return _wandb_api(_get_wandb(session, project_id))


def delete_wandb_key(ctx: AppContext, project_id: str) -> dict:
    """Without a key, the project's jobs with a `wandb` integration log offline (a result file of the job)."""
    with ctx.db.write() as session:
        session.delete(_get_wandb(session, project_id))
    return {"object": "organization.project.integration.wandb.deleted", "project_id": project_id, "deleted": True}


def trainer_integrations(session, job: Job) -> dict:
    """The trainer spec's integration fields: the job's integrations and, for a `wandb` one, the project's key
    (the spec is the job's private storage; the key goes nowhere else)."""
    integrations = list(job.integrations or [])
    row = session.get(ProjectWandb, job.project_id) if any(i.get("type") == "wandb" for i in integrations) else None
    return {
        "integrations": integrations,
        "wandb_api_key": row.api_key if row else None,
        "wandb_base_url": row.base_url if row else None,
    }
