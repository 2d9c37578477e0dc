"""External models: OpenAI-compatible endpoints outside Hone that a project registers, to measure its Hone models
against the model it runs today (eval runs and model graders name one as `ext:<name>`).

Only URLs under HONE_EXTERNAL_MODEL_URLS (the admin's allow-list) may be registered; the key is sealed at rest
(service/secret_box.py) and only its last four characters are ever answered. Another project's external model does
not exist for a project."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import ExternalModel
from service.endpoints import resolve_model
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt
from service.eval_schemas import CreateExternalModel
from service.ids import new_id
from service.pagination import list_envelope
from service.secret_box import SecretBox, open_box

PREFIX = "ext:"


@dataclass(frozen=True)
class Target:
    base_url: str
    model: str
    api_key: str | None


def box(ctx: AppContext) -> SecretBox:
    return _box(ctx.settings.server.secret_key, ctx.settings.server.data_dir)


@functools.cache
def _box(secret_key: str | None, data_dir: Path) -> SecretBox:
    """Opened once per key and data dir (the key file is read, or made, once)."""
    return open_box(secret_key, data_dir)


def allowed(url: str, allow_list: list[str]) -> bool:
    """Whether `url` lies under one of the allow-list's URL prefixes, at a path boundary."""
    url = url.rstrip("/")
    for prefix in allow_list:
        prefix = prefix.rstrip("/")
        if url == prefix or url.startswith(prefix + "/"):
            return True
    return False


def api(row: ExternalModel) -> dict[str, Any]:
    return {
        "object": "external_model",
        "id": row.id,
        "name": PREFIX + row.name,
        "base_url": row.base_url,
        "model": row.model,
        "api_key": f"...{row.api_key_hint}" if row.api_key_hint else None,
        "created_at": row.created_at,
    }


def create(ctx: AppContext, principal: ProjectPrincipal, body: CreateExternalModel) -> dict[str, Any]:
    if not body.base_url.startswith(("http://", "https://")) or not allowed(
        body.base_url, ctx.settings.graders.external_model_urls
    ):
        raise InvalidRequest(
            f"'{excerpt(body.base_url, 200)}' is not under a URL an admin allows for external models "
            "(HONE_EXTERNAL_MODEL_URLS).",
            param="base_url",
            code=ErrorCode.INVALID_VALUE,
        )
    row = ExternalModel(
        id=new_id("extmodel_"),
        project_id=principal.project_id,
        name=body.name,
        base_url=body.base_url.rstrip("/"),
        model=body.model,
        api_key_sealed=box(ctx).seal(body.api_key) if body.api_key else None,
        api_key_hint=body.api_key[-4:] if body.api_key else None,
        created_at=int(time.time()),
    )
    try:
        with ctx.db.write() as session:
            session.add(row)
            session.flush()
            return api(row)
    except IntegrityError:
        raise InvalidRequest(
            f"This project already has an external model named '{body.name}'.",
            param="name",
            code=ErrorCode.INVALID_VALUE,
        ) from None


def _row(session: Session, project_id: str, model_id: str) -> ExternalModel:
    row = session.execute(
        select(ExternalModel).where(ExternalModel.id == model_id, ExternalModel.project_id == project_id)
    ).scalar()
    if row is None:
        raise NotFound(f"No such external model: {excerpt(model_id)}", param="model_id", code=ErrorCode.NOT_FOUND)
    return row


def get(ctx: AppContext, principal: ProjectPrincipal, model_id: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        return api(_row(session, principal.project_id, model_id))


def list_models(ctx: AppContext, principal: ProjectPrincipal) -> dict[str, Any]:
    with ctx.db.read() as session:
        rows = session.execute(
            select(ExternalModel).where(ExternalModel.project_id == principal.project_id).order_by(ExternalModel.seq)
        ).scalars()
        return list_envelope([api(r) for r in rows], False, with_ids=True)


def delete(ctx: AppContext, principal: ProjectPrincipal, model_id: str) -> dict[str, Any]:
    with ctx.db.write() as session:
        session.delete(_row(session, principal.project_id, model_id))
    return {"object": "external_model.deleted", "id": model_id, "deleted": True}


def exists(session: Session, project_id: str, name: str) -> bool:
    return _by_name(session, project_id, name) is not None


def callable_model(ctx: AppContext, session: Session, project_id: str, model: str) -> bool:
    """Whether the project can call `model`: one of its external models (`ext:<name>`), or a model Hone serves it
    (a base model, or a tuned model or checkpoint of its own or shared with it)."""
    if model.startswith(PREFIX):
        return exists(session, project_id, model)
    try:
        resolve_model(ctx, session, project_id, model)
    except NotFound:
        return False
    return True


def require_callable(
    ctx: AppContext, session: Session, project_id: str, model: str, *, param: str, role: str = "model"
) -> None:
    """400 `model_not_found` naming `param` unless the project can call `model` (another project's model does not
    exist for this one). `role` names it in the message: "model", "grader's model", "teacher"."""
    if callable_model(ctx, session, project_id, model):
        return
    what = (
        "is not an external model of this project"
        if model.startswith(PREFIX)
        else "does not exist or you do not have access to it"
    )
    raise InvalidRequest(f"The {role} '{excerpt(model)}' {what}.", param=param, code=ErrorCode.MODEL_NOT_FOUND)


def _by_name(session: Session, project_id: str, name: str) -> ExternalModel | None:
    if not name.startswith(PREFIX):
        return None
    return session.execute(
        select(ExternalModel).where(
            ExternalModel.project_id == project_id, ExternalModel.name == name.removeprefix(PREFIX)
        )
    ).scalar()


def target(ctx: AppContext, project_id: str, name: str) -> Target | None:
    """Where an `ext:` model is called, with its key opened; None when the project has no such model (or the
    allow-list no longer holds its URL)."""
    with ctx.db.read() as session:
        row = _by_name(session, project_id, name)
    if row is None or not allowed(row.base_url, ctx.settings.graders.external_model_urls):
        return None
    key = box(ctx).open(row.api_key_sealed) if row.api_key_sealed else None
    return Target(row.base_url, row.model, key)
